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
from typing import Dict, List

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.conversion.common import (
    CORPUS, CaseSpec, Plan, Release, Setting, corpus_case_spec, visible)

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
    """One corpus case per subject (``resample_to_t1``: the other scans onto its T1 grid)."""
    specs = []
    for subj, files in sorted(scan(root, skipped_files).items()):
        images = [(m, files[m]) for m in mod.sort_modalities(files)]
        specs.append(corpus_case_spec(case_prefix + subj, images, "ixi", subject=subj.split("-")[0],
                                      reference="t1" if resample_to_t1 else None))
    return specs


def plan(root: str, resample_to_t1: bool = False, case_prefix: str = "") -> Plan:
    """Discovery and manifest source of IXI; files of modalities outside the vocabulary are listed
    as skipped files."""
    skipped: Dict[str, str] = {}
    specs = build_specs(root, resample_to_t1, skipped, case_prefix)
    return Plan(specs, skipped_files=skipped,
                empty=f"no IXI scans under {root}: expected files like IXI002-Guys-0828-T1.nii.gz (T1, T2, PD, MRA).",
                sources={"ixi": {"description": "IXI healthy subjects: T1, T2, PD, MRA (3 London hospitals)"
                                 + ("; resampled onto each subject's T1 grid" if resample_to_t1 else
                                    "; each scan on its own grid"), "release": root}})


RELEASE = Release(
    kind="corpus-ixi", title="IXI corpus", output=CORPUS, plan=plan, default_id=551, default_name="IXICorpus",
    help="pretraining corpus from IXI (T1, T2, PD, MRA; optional resampling to T1)", root_word="IXI",
    settings=(Setting("resample_to_t1", False, ("--resample-to-t1",),
                      "resample T2, PD and MRA onto each subject's T1 grid", cli={"action": "store_true"}),))
convert = RELEASE.convert
