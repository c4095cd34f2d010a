"""The registry of releases: every :class:`~nnunet_mmpretrain.conversion.release.Release` entry,
in the order the command line lists them.

Adding a release is adding its module (a plan function and a ``RELEASE`` entry, see
:mod:`~nnunet_mmpretrain.conversion.release`) to :data:`MODULES`; the command line's sub-command,
its options and the Python ``convert()`` follow from the entry.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

from nnunet_mmpretrain.conversion.release import Release
from nnunet_mmpretrain.conversion.summary import ConversionError

#: converter modules, each defining ``RELEASE`` (command-line order)
MODULES = ("brats2021", "brats2023", "brats2024", "msd_brain", "isles2022", "upenn_gbm", "mrbrains13", "vsseg",
           "brats2018_grade", "csv_labels", "corpus_brats", "ixi", "ucsf_pdgm", "folder_corpus")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"nnunet_mmpretrain.conversion.{name}")


def releases() -> Dict[str, Release]:
    """Command-line kind -> release entry, for every module of :data:`MODULES`."""
    entries = [_module(m).RELEASE for m in MODULES]
    return {r.kind: r for r in entries}


def release(kind: str) -> Release:
    """The entry of ``kind``; ConversionError (one line) naming the known kinds otherwise."""
    found = releases()
    if kind not in found:
        raise ConversionError(f"unknown dataset kind {kind!r}; known: {', '.join(found)}")
    return found[kind]


def converter(kind: str) -> ModuleType:
    """The module converting ``kind`` (its ``convert()`` runs the entry)."""
    return importlib.import_module(release(kind).plan.__module__)
