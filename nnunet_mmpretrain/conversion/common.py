"""Shared machinery of the dataset converters (one import point for the converter modules).

Every converter does the same three things: it *discovers* the cases of a public release (pure
path work, no image is read), describes each case as a :class:`CaseSpec` (which source file goes
to which output file, how), and hands the list to :func:`convert_segmentation` (nnU-Net raw
dataset) or :func:`convert_corpus` (pretraining corpus with a ``manifest.json``). A release module
only declares the first two -- a plan function and a :class:`Release` entry -- and
:func:`run_release` does the rest the same way for all (:mod:`~nnunet_mmpretrain.conversion.release`,
run options in :class:`ConvertOptions`, the entries listed in
:mod:`~nnunet_mmpretrain.conversion.registry`). The work after discovery lives in small modules,
re-exported here:

* :mod:`~nnunet_mmpretrain.conversion.summary` -- :class:`ConversionSummary`, the errors.
* :mod:`~nnunet_mmpretrain.conversion.paths` -- naming and safety: case ids are checked with
  :func:`~nnunet_mmpretrain.corpus.manifest.check_case_id` (letters, digits, ``_ . -``; no
  separators, no ``..``) and every output path is verified to lie inside the dataset folder.
* :mod:`~nnunet_mmpretrain.conversion.spec` -- :class:`CaseSpec`, :class:`ImageSpec`, :class:`LabelSpec`.
* :mod:`~nnunet_mmpretrain.conversion.imageio` -- grids, SimpleITK reading / resampling, label
  mapping, atomic writes (under ``<dataset>/.partial/``, then renamed: a killed run never leaves
  a half-written file under its final name), hard links and copies.
* :mod:`~nnunet_mmpretrain.conversion.registration` -- rigid mutual-information registration of
  one image onto the reference image with a sanity check (ISLES 2022 FLAIR -> DWI).
* :mod:`~nnunet_mmpretrain.conversion.execute` -- one case checked completely then written;
  many cases with resuming (a case is finished when all its output files exist) and a pool.
* :mod:`~nnunet_mmpretrain.conversion.raw_dataset` / :mod:`~nnunet_mmpretrain.conversion.corpus_writer`
  -- the two kinds of output.

Label conventions (values per release and year, mappings, regions) live in
:mod:`nnunet_mmpretrain.labels`.
"""
from __future__ import annotations

from nnunet_mmpretrain.conversion.corpus_writer import convert_corpus
from nnunet_mmpretrain.conversion.execute import CaseResult, execute_case, run_cases
from nnunet_mmpretrain.conversion.imageio import (
    GRID_TOL_MM, Grid, clear_partial, foreground_mask, image_grid, load_image, map_labels, place_file,
    read_header, resample_onto, write_image)
from nnunet_mmpretrain.conversion.paths import (
    FILE_ENDING, PARTIAL_DIR, check_dataset_name, dataset_folder, dataset_folder_name, display, find_dirs,
    find_dirs_containing, image_file, nifti_file, nifti_pair, nifti_stem, require_root, resolve_raw_dir, safe_join,
    suffixed_files, visible)
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.raw_dataset import (
    DatasetInfo, convert_segmentation, prepare_dataset_folder, verify_nnunet_dataset, write_csv,
    write_dataset_json)
from nnunet_mmpretrain.conversion.release import (
    CLASSIFICATION, CORPUS, SEGMENTATION, Plan, Release, Setting, run_release)
from nnunet_mmpretrain.conversion.spec import (
    BRATS_CHANNELS, CaseSpec, ImageSpec, LabelSpec, corpus_case_spec, corpus_image_dst,
    missing_files_problem, multimodal_seg_case, seg_image_dst, seg_label_dst)
from nnunet_mmpretrain.conversion.summary import (
    ALREADY_DONE, CaseSkip, ConversionError, ConversionSummary, report_summary)
from nnunet_mmpretrain.labels import BRATS_421_MAP, BRATS_LABELS, BRATS_REGIONS_CLASS_ORDER

__all__ = [
    "ALREADY_DONE", "BRATS_421_MAP", "BRATS_CHANNELS", "BRATS_LABELS", "BRATS_REGIONS_CLASS_ORDER",
    "CLASSIFICATION", "CORPUS", "CaseResult", "CaseSkip", "CaseSpec", "ConversionError",
    "ConversionSummary", "ConvertOptions", "DatasetInfo", "FILE_ENDING", "GRID_TOL_MM", "Grid",
    "ImageSpec", "LabelSpec", "PARTIAL_DIR", "Plan", "Release", "SEGMENTATION", "Setting",
    "check_dataset_name", "clear_partial", "convert_corpus", "convert_segmentation", "corpus_case_spec",
    "corpus_image_dst", "dataset_folder", "dataset_folder_name", "display", "execute_case", "find_dirs",
    "find_dirs_containing", "foreground_mask", "image_file", "image_grid", "load_image", "map_labels",
    "missing_files_problem", "multimodal_seg_case", "nifti_file", "nifti_pair", "nifti_stem",
    "place_file", "prepare_dataset_folder", "read_header", "report_summary", "require_root",
    "resample_onto", "resolve_raw_dir", "run_cases", "run_release", "safe_join", "seg_image_dst",
    "seg_label_dst", "suffixed_files", "verify_nnunet_dataset", "visible", "write_csv",
    "write_dataset_json", "write_image",
]
