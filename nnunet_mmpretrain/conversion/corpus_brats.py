"""BraTS 2021 / 2023 / 2024 releases -> pretraining corpus (images only, no labels).

Finds every BraTS 2021 (``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair}.nii.gz``) and BraTS
2023 / 2024 (``BraTS-SUB-XXXXX-YYY/BraTS-SUB-XXXXX-YYY-{t1n,t1c,t2w,t2f}.nii.gz``) case folder up
to four levels below ``RELEASE_ROOT`` -- training and validation folders alike, segmentations are
not needed -- and links the images into ``images/<case>_<modality>.nii.gz`` with a
``manifest.json`` (:mod:`nnunet_mmpretrain.corpus.manifest`).

* **Subject and session.** One patient is one subject across timepoints and releases: the
  subject of ``BraTS-GLI-00005-101`` is ``BraTS-GLI-00005`` with session ``101``; a BraTS 2021
  case ``BraTS2021_00005`` is subject ``BraTS-GLI-00005`` (BraTS 2023 GLI renamed the 2021 cases
  keeping their number), session ``2021``. Subject-level splits and the ``positives="subject"``
  objective then never treat two scans of one patient as two people.
* **Sources** name the release: ``brats2021``, ``brats2023_gli``, ``brats2024_gli``,
  ``brats2023_men``, ... The 2023 / 2024 release of a case folder is recognised by the folder
  names above it and the timepoints of its id
  (:func:`~nnunet_mmpretrain.conversion.brats2023.release_year`; 2023 when neither tells).
* **The same scan twice** (BraTS 2023 GLI training is BraTS 2021 renamed): the corpus writer
  keeps one copy of a scan whose voxels equal an earlier one (see
  :mod:`~nnunet_mmpretrain.conversion.corpus_writer`).

A case missing one modality is kept with the modalities it has (the corpus allows varying
modality sets); a case with none is skipped.
"""
from __future__ import annotations

import os
from typing import List

from nnunet_mmpretrain.conversion import brats2021, brats2023
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, CORPUS, CaseSpec, Plan, Release, corpus_case_spec, find_dirs)

DESCRIPTIONS = {"gli": "adult glioma", "men": "meningioma", "met": "metastases", "ped": "paediatric",
                "ssa": "Sub-Saharan Africa glioma"}
SOURCE_INFO = {
    "brats2021": "BraTS 2021 adult glioma: T1, T1ce, T2, FLAIR (SRI24, 240x240x155, skull-stripped)",
    **{f"brats{y}_{k}": f"BraTS {y} {v}" for y in (2023, 2024) for k, v in DESCRIPTIONS.items()},
}
SOURCE_INFO["brats2024_gli"] = "BraTS 2024 adult glioma, post-treatment (timepoints from 100)"


def build_specs(root: str, case_prefix: str = "") -> List[CaseSpec]:
    """One corpus case per BraTS 2021 / 2023 / 2024 case folder (the images it has)."""
    specs = []
    for d in find_dirs(root, lambda n: bool(brats2021.CASE_RE.fullmatch(n) or brats2023.CASE_RE.fullmatch(n))):
        cid = os.path.basename(d)
        if brats2021.CASE_RE.fullmatch(cid):
            source, subject, session = "brats2021", "BraTS-GLI-" + cid.split("_")[1], "2021"
            files = {m: brats2021.case_files(d, cid, brats2021.SUFFIX[m])[0] for m in BRATS_CHANNELS}
        else:
            year = brats2023.release_year(root, [(cid, d)])[0] or 2023
            source = f"brats{year}_" + brats2023.CASE_RE.fullmatch(cid).group(1).lower()
            subject, session = brats2023.patient_timepoint(cid)
            files = {m: brats2023.case_files(d, cid, brats2023.SUFFIX[m])[0] for m in BRATS_CHANNELS}
        images = [(m, p) for m, p in files.items() if p]
        problem = None if images else f"no image files in {d}"
        specs.append(corpus_case_spec(case_prefix + cid, images, source, subject=subject, session=session,
                                      problem=problem))
    return specs


def plan(root: str, case_prefix: str = "") -> Plan:
    """Discovery and manifest sources (one per release and sub-challenge found) of BraTS folders."""
    specs = build_specs(root, case_prefix)
    used = sorted({s.info["source"] for s in specs})
    return Plan(specs, sources={s: {"description": SOURCE_INFO.get(s, s), "release": root} for s in used},
                empty=f"no BraTS case folders under {root}: expected BraTS2021_XXXXX/ or BraTS-GLI-XXXXX-YYY/ "
                      f"(MEN, MET, PED, SSA) folders.")


RELEASE = Release(
    kind="corpus-brats", title="BraTS corpus", output=CORPUS, plan=plan, default_id=550, default_name="BraTSCorpus",
    help="pretraining corpus from BraTS 2021 / 2023 / 2024 images (no labels needed; one subject per patient)", root_word="BraTS")
convert = RELEASE.convert
