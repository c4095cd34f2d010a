"""IXI -> pretraining corpus.

Release layout: the per-modality tarballs unpacked into one folder each (``IXI-T1/``, ``IXI-T2/``,
``IXI-PD/``, ``IXI-MRA/``) or everything in one folder; files are found anywhere below
``RELEASE_ROOT``::

    IXI002-Guys-0828-T1.nii.gz   IXI002-Guys-0828-T2.nii.gz   IXI002-Guys-0828-PD.nii.gz
    IXI002-Guys-0828-MRA.nii.gz  (IXI002-Guys-0828-DTI-00.nii.gz ... : not in the vocabulary, skipped)

Files are grouped by subject (``IXI###-SITE-####``, the case id). The IXI modalities are *not*
on one voxel grid (T1 sagittal 256x256x150, T2/PD axial 256x256x130, MRA 512x512x100): by default
each keeps its own grid; ``resample_to_t1`` resamples T2, PD and MRA onto the subject's T1 grid by
physical coordinates (linear; subjects without a T1 are then skipped). No registration is done:
the scans of one session share the scanner coordinate system.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.conversion.common import (
    CaseSpec, ConversionError, ConversionSummary, convert_corpus, corpus_case_spec, dataset_folder,
    require_root, visible, report_summary)

KIND = "IXI corpus"
DEFAULT_ID, DEFAULT_NAME = 551, "IXICorpus"
FILE_RE = re.compile(r"(?P<subject>(?P<num>IXI\d{3})-(?P<site>[A-Za-z]+)-\d{4})-(?P<mod>[A-Za-z0-9]+(?:-\d+)?)\.nii(?:\.gz)?")


def scan(root: str, skipped_files: Dict[str, str]) -> Dict[str, Dict[str, str]]:
    """subject -> {canonical modality: file}."""
    subjects: Dict[str, Dict[str, str]] = {}
    for cur, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        for f in sorted(files):
            m = FILE_RE.fullmatch(f)
            if not m or not visible(f):
                continue
            p = os.path.join(cur, f)
            raw = m.group("mod")
            if not mod.is_known(raw):
                skipped_files[p] = f"modality {raw!r} is not in the vocabulary"
                continue
            cm = mod.canonical(raw)
            s = subjects.setdefault(m.group("subject"), {})
            if cm in s:
                skipped_files[p] = f"second {raw} file of {m.group('subject')} (kept {s[cm]})"
                continue
            s[cm] = p
    return subjects


def build_specs(root: str, resample_to_t1: bool, skipped_files: Dict[str, str],
                case_prefix: str = "") -> List[CaseSpec]:
    specs = []
    for subj, files in sorted(scan(root, skipped_files).items()):
        images = [(m, files[m]) for m in mod.sort_modalities(files)]
        specs.append(corpus_case_spec(case_prefix + subj, images, "ixi", subject=subj.split("-")[0],
                                      reference="t1" if resample_to_t1 else None))
    return specs


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, resample_to_t1: bool = False, case_prefix: str = "",
            atlas_registered="auto", link: bool = True, dry_run: bool = False, overwrite: bool = False,
            num_processes: int = 1, progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    root = require_root(release_root, "IXI")
    folder = dataset_folder(out_dir, dataset_id, name)
    skipped: Dict[str, str] = {}
    specs = build_specs(root, resample_to_t1, skipped, case_prefix)
    if not specs:
        raise ConversionError(f"no IXI scans under {root}: expected files like "
                              f"IXI002-Guys-0828-T1.nii.gz (T1, T2, PD, MRA).")
    sources = {"ixi": {"description": "IXI healthy subjects: T1, T2, PD, MRA (3 London hospitals)"
                       + ("; resampled onto each subject's T1 grid" if resample_to_t1 else
                          "; each scan on its own grid"), "release": root}}
    summary = convert_corpus(KIND, specs, folder, sources, atlas_registered=atlas_registered, link=link,
                             dry_run=dry_run, overwrite=overwrite, num_processes=num_processes,
                             progress=progress, print_summary=False)
    summary.skipped_files.update(skipped)
    if print_summary:
        report_summary(summary)
    return summary
