"""BraTS 2021 / 2023 releases -> pretraining corpus (images only, no labels).

Finds every BraTS 2021 (``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair}.nii.gz``) and BraTS 2023
(``BraTS-SUB-XXXXX-YYY/BraTS-SUB-XXXXX-YYY-{t1n,t1c,t2w,t2f}.nii.gz``) case folder up to four levels
below ``RELEASE_ROOT`` -- training and validation folders alike, segmentations are not needed --
and links the images into ``images/<case>_<modality>.nii.gz`` with a ``manifest.json``
(:mod:`nnunet_mmpretrain.corpus.manifest`). Sources: ``brats2021``, ``brats2023_gli``,
``brats2023_men``, ... A case missing one modality is kept with the modalities it has (the corpus
allows varying modality sets); a case with none is skipped.
"""
from __future__ import annotations

import os
from typing import List

from nnunet_mmpretrain.conversion import brats2021, brats2023
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, CORPUS, CaseSpec, Plan, Release, corpus_case_spec, find_dirs)

SOURCE_INFO = {
    "brats2021": "BraTS 2021 adult glioma: T1, T1ce, T2, FLAIR (SRI24, 240x240x155, skull-stripped)",
    "brats2023_gli": "BraTS 2023 adult glioma", "brats2023_men": "BraTS 2023 meningioma",
    "brats2023_met": "BraTS 2023 metastases", "brats2023_ped": "BraTS 2023 paediatric",
    "brats2023_ssa": "BraTS 2023 Sub-Saharan Africa glioma",
}


def build_specs(root: str, case_prefix: str = "") -> List[CaseSpec]:
    """One corpus case per BraTS 2021 / 2023 case folder (the images it has)."""
    specs = []
    for d in find_dirs(root, lambda n: bool(brats2021.CASE_RE.fullmatch(n) or brats2023.CASE_RE.fullmatch(n))):
        cid = os.path.basename(d)
        if brats2021.CASE_RE.fullmatch(cid):
            source = "brats2021"
            files = {m: brats2021.case_files(d, cid, brats2021.SUFFIX[m])[0] for m in BRATS_CHANNELS}
        else:
            source = "brats2023_" + brats2023.CASE_RE.fullmatch(cid).group(1).lower()
            files = {m: brats2023.case_files(d, cid, brats2023.SUFFIX[m])[0] for m in BRATS_CHANNELS}
        images = [(m, p) for m, p in files.items() if p]
        out_id = case_prefix + cid
        problem = None if images else f"no image files in {d}"
        specs.append(corpus_case_spec(out_id, images, source, subject=cid, problem=problem))
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
    help="pretraining corpus from BraTS 2021 / 2023 images (no labels needed)", root_word="BraTS")
convert = RELEASE.convert
