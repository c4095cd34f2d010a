"""Converters from public dataset releases to nnU-Net raw datasets and pretraining corpora.

One module per release, all built on :mod:`nnunet_mmpretrain.conversion.common` (naming, safe
paths, hard links / copies, label mapping, resampling, dataset.json, resumable runs). Command
line: ``nnUNetv2_mmpretrain_convert KIND RELEASE_ROOT ...`` (:mod:`nnunet_mmpretrain.cli.convert`);
``docs/CONVERSION.md`` lists the kinds, their default dataset ids and the label conventions.

Every ``convert(...)`` returns a :class:`~nnunet_mmpretrain.conversion.common.ConversionSummary`.
"""
from __future__ import annotations

from nnunet_mmpretrain.conversion.common import (ALREADY_DONE, CaseSkip, ConversionError,
                                                 ConversionSummary)

#: command-line kind -> (module, what it writes, default dataset id, default name)
KINDS = {
    "brats2021": ("brats2021", "segmentation", 521, "BraTS2021"),
    "brats2023": ("brats2023", "segmentation", None, "BraTS2023_<SUBSET>"),
    "brats2024": ("brats2024", "segmentation", None, "BraTS2024_<SUBSET>"),
    "msd-brain": ("msd_brain", "segmentation", 527, "MSDBrainTumour"),
    "isles2022": ("isles2022", "segmentation", 528, "ISLES2022"),
    "upenn-gbm": ("upenn_gbm", "segmentation", 529, "UPENNGBM"),
    "mrbrains13": ("mrbrains13", "segmentation", 530, "MRBrainS13"),
    "vsseg": ("vsseg", "segmentation", 531, "VSseg"),
    "brats2018-grade": ("brats2018_grade", "classification", 532, "BraTS2018Grade"),
    "csv-labels": ("csv_labels", "classification", 540, "<csv file name>"),
    "corpus-brats": ("corpus_brats", "corpus", 550, "BraTSCorpus"),
    "corpus-ixi": ("ixi", "corpus", 551, "IXICorpus"),
    "corpus-ucsf-pdgm": ("ucsf_pdgm", "corpus", 552, "UCSFPDGMCorpus"),
    "corpus-folder": ("folder_corpus", "corpus", 553, "FolderCorpus"),
}


def converter(kind: str):
    """The module converting ``kind`` (see :data:`KINDS`)."""
    import importlib
    if kind not in KINDS:
        raise ConversionError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    return importlib.import_module(f"nnunet_mmpretrain.conversion.{KINDS[kind][0]}")


__all__ = ["KINDS", "converter", "ConversionError", "ConversionSummary", "CaseSkip", "ALREADY_DONE"]
