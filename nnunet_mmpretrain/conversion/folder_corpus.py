"""A folder of subject folders -> pretraining corpus (generic importer).

Layout: every sub-folder of ``RELEASE_ROOT`` is one case (its name is the case id); the NIfTI files
directly inside it name their modality by their last ``_``- or ``-``-separated part, or by their
whole name::

    RELEASE_ROOT/sub-01/sub-01_T1w.nii.gz   sub-01_FLAIR.nii.gz   sub-01_dwi.nii
    RELEASE_ROOT/case7/t1.nii.gz  t2.nii.gz  seg.nii.gz

Modality names are normalised through the vocabulary (:mod:`nnunet_mmpretrain.modalities`:
T1w -> t1, t1ce/T1Gd -> t1c, t2f -> flair, ...); files whose modality the vocabulary does not
know (segmentations, masks, SWI, ...) are skipped with a reason, as is a second file of a modality
already found. ``resample_to`` (a modality) resamples the other images of each case onto that
modality's grid by physical coordinates.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.conversion.common import (
    CORPUS, CaseSpec, Plan, Release, Setting, corpus_case_spec, nifti_stem, visible)



def modality_of(stem: str) -> Optional[str]:
    """Canonical modality named by a file stem, or None."""
    cands = [stem, re.split(r"_", stem)[-1], re.split(r"[-_]", stem)[-1]]
    for c in cands:
        if c and mod.is_known(c):
            return mod.canonical(c)
    return None


def build_specs(root: str, source: str, skipped_files: Dict[str, str], resample_to: Optional[str] = None,
                case_prefix: str = "") -> List[CaseSpec]:
    """One corpus case per sub-folder holding NIfTI files; unusable files go to ``skipped_files``."""
    specs = []
    for sub in sorted(d for d in os.listdir(root) if visible(d) and os.path.isdir(os.path.join(root, d))):
        sdir = os.path.join(root, sub)
        images: Dict[str, str] = {}
        for f in sorted(os.listdir(sdir)):
            p = os.path.join(sdir, f)
            stem = nifti_stem(f)
            if stem is None or not visible(f) or not os.path.isfile(p):
                continue
            m = modality_of(stem)
            if m is None:
                skipped_files[p] = f"modality of {f!r} is not in the vocabulary ({', '.join(mod.MODALITIES)})"
            elif m in images:
                skipped_files[p] = f"second {m} image in {sub} (kept {os.path.basename(images[m])})"
            else:
                images[m] = p
        if not images and not any(nifti_stem(f) for f in os.listdir(sdir)):
            continue  # not a subject folder
        problem = None if images else f"no image with a known modality in {sdir}"
        specs.append(corpus_case_spec(case_prefix + sub, [(m, images[m]) for m in mod.sort_modalities(images)],
                                      source, subject=sub, reference=resample_to if images else None,
                                      problem=problem))
    return specs


def plan(root: str, source: Optional[str] = None, resample_to: Optional[str] = None,
         case_prefix: str = "") -> Plan:
    """Discovery and manifest source of a folder of subject folders; ``source`` defaults to the
    folder name, ``resample_to`` is a modality name of the vocabulary."""
    src = source or re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(root.rstrip(os.sep))).lower() or "folder"
    ref = mod.canonical(resample_to) if resample_to else None
    skipped: Dict[str, str] = {}
    specs = build_specs(root, src, skipped, ref, case_prefix)
    return Plan(specs, skipped_files=skipped,
                empty=f"no subject folders with NIfTI files under {root}: expected "
                      f"ROOT/<subject>/<anything>_<modality>.nii.gz.",
                sources={src: {"description": f"subject folders imported from {root}", "release": root}})


RELEASE = Release(
    kind="corpus-folder", title="folder corpus", output=CORPUS, plan=plan, default_id=553,
    default_name="FolderCorpus", root_word="subject",
    help="pretraining corpus from subject folders of <anything>_<modality>.nii.gz",
    settings=(Setting("source", None, ("--source",), "source name in the manifest (default: folder name)"),
              Setting("resample_to", None, ("--resample-to",),
                      "resample every case's other images onto this modality's grid", cli={"metavar": "MODALITY"})))
convert = RELEASE.convert
