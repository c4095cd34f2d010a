"""Converters from public dataset releases to nnU-Net raw datasets and pretraining corpora.

One module per release; each declares a :class:`~nnunet_mmpretrain.conversion.release.Release`
entry (``RELEASE``: command-line name, defaults, settings, label convention, reference) and a plan
function (discovery), and :mod:`~nnunet_mmpretrain.conversion.release` runs every entry with one
generic converter. :mod:`~nnunet_mmpretrain.conversion.registry` lists the entries; the command
line ``nnUNetv2_mmpretrain_convert KIND RELEASE_ROOT ...`` (:mod:`nnunet_mmpretrain.cli.convert`)
is generated from it. The shared machinery is re-exported by
:mod:`~nnunet_mmpretrain.conversion.common`; ``docs/CONVERSION.md`` lists the kinds, their default
dataset ids and the label conventions.

Every ``convert(...)`` returns a :class:`~nnunet_mmpretrain.conversion.common.ConversionSummary`.
"""
from __future__ import annotations

from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.summary import (ALREADY_DONE, CaseSkip, ConversionError,
                                                  ConversionSummary)


def converter(kind: str):
    """The module converting ``kind`` (:func:`~nnunet_mmpretrain.conversion.registry.converter`)."""
    from nnunet_mmpretrain.conversion.registry import converter as _converter
    return _converter(kind)


def __getattr__(name: str):
    """``KINDS``: command-line kind -> (module, what it writes, default dataset id, default name),
    read from the registry."""
    if name == "KINDS":
        from nnunet_mmpretrain.conversion.registry import releases
        return {k: (r.plan.__module__.rsplit(".", 1)[1], r.output, r.default_id, r.default_name)
                for k, r in releases().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["converter", "ConversionError", "ConversionSummary", "ConvertOptions", "CaseSkip", "ALREADY_DONE"]
