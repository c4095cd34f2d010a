"""UPENN-GBM (TCIA) -> nnU-Net raw dataset.

Release layout (NIfTI package; ``RELEASE_ROOT`` is any folder above ``images_structural``)::

    .../images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_{T1,T1GD,T2,FLAIR}.nii.gz
    .../images_segm/UPENN-GBM-00001_11_segm.nii.gz                       (manual, ~147 cases)
    .../automated_segm/UPENN-GBM-00001_11_automated_approx_segm.nii.gz   (automatic, all cases)

Only cases with a manual segmentation are converted unless ``use_automated`` is set, which
falls back to the automated one. Follow-up exams (``UPENN-GBM-00001_21``: ``_11`` is the first
exam, ``_21`` the follow-up) come without any segmentation, manual or automated, and are skipped
with that reason; every exam's patient goes into ``patients.json`` (:mod:`nnunet_mmpretrain.subjects`).
Images are in SRI24 space (240x240x155), skull-stripped.
Labels in the release: 1 necrosis, 2 edema, 4 enhancing tumour -> our BraTS-2023 convention
1, 2, 3 (4 -> 3). Channels: 0 T1, 1 T1ce (T1GD), 2 T2, 3 FLAIR.
"""
from __future__ import annotations

import os
from typing import List, Optional

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, SEGMENTATION, CaseSpec, ConversionError, Plan, Release, Setting, display, find_dirs,
    multimodal_seg_case, nifti_file, suffixed_files, visible)

KIND = "UPENN-GBM"
SUFFIX = {"t1": "T1", "t1c": "T1GD", "t2": "T2", "flair": "FLAIR"}
LABELS = labels.convention("upenn-gbm")
LABEL_MAP = dict(LABELS.mapping)
AUTO_SUFFIX = "_automated_approx_segm"


def _sibling(structural: str, name: str, root: str) -> Optional[str]:
    cand = os.path.join(os.path.dirname(structural), name)
    if os.path.isdir(cand):
        return cand
    hits = find_dirs(root, lambda d: d == name, max_depth=5)
    return hits[0] if hits else None


def build_specs(root: str, use_automated: bool = False) -> List[CaseSpec]:
    """One case per exam folder in ``images_structural``; the manual segmentation, or with
    ``use_automated`` the automated one where no manual one exists."""
    hits = find_dirs(root, lambda d: d == "images_structural", max_depth=5)
    if not hits:
        raise ConversionError(f"no images_structural/ folder under {root} (UPENN-GBM NIfTI release).")
    structural = hits[0]
    segm = _sibling(structural, "images_segm", root)
    auto = _sibling(structural, "automated_segm", root)
    specs = []
    for cid in sorted(d for d in os.listdir(structural) if visible(d) and os.path.isdir(os.path.join(structural, d))):
        d = os.path.join(structural, cid)
        chans = suffixed_files(d, cid, SUFFIX)
        expected = os.path.join(segm or os.path.join(os.path.dirname(structural), "images_segm"),
                                f"{cid}_segm.nii.gz")
        seg = nifti_file(segm, f"{cid}_segm") if segm else None
        automated = nifti_file(auto, f"{cid}{AUTO_SUFFIX}") if auto else None
        if seg is None and use_automated:
            seg = automated
        spec = multimodal_seg_case(cid, chans, (seg, expected), LABELS)
        patient, _, exam = cid.rpartition("_")
        spec.info.update(patient=patient or cid, timepoint=exam if patient else "")
        if seg is None and spec.problem and spec.problem.startswith("missing segmentation"):
            spec.problem = _no_segmentation(cid, expected, automated, use_automated, auto or structural)
        specs.append(spec)
    return specs


def _no_segmentation(cid: str, expected: str, automated: Optional[str], use_automated: bool,
                     auto_dir: str) -> str:
    if automated is not None and not use_automated:
        return f"no manual segmentation {expected} (--automated-segm falls back to {automated})"
    auto = os.path.join(auto_dir if os.path.basename(auto_dir) == "automated_segm" else
                        os.path.join(os.path.dirname(auto_dir), "automated_segm"), f"{cid}{AUTO_SUFFIX}.nii.gz")
    why = (" (a follow-up exam, _21: the release segments the first exams, _11, only)"
           if cid.endswith("_21") else "")
    return f"the release has no segmentation for this exam{why}: neither {expected} nor {auto}"


def plan(root: str, use_automated: bool = False) -> Plan:
    """Discovery and dataset.json content of the UPENN-GBM NIfTI release."""
    return Plan(build_specs(root, use_automated), channels=[display(m) for m in BRATS_CHANNELS],
                empty=f"no {KIND} case folders in images_structural/ under {root}.",
                description="UPENN-GBM glioblastoma, structural MRI in SRI24 space; labels remapped to "
                            "BraTS-2023 convention (release 4 enhancing -> 3)"
                            + ("; automated segmentations where no manual one exists" if use_automated else
                               "; cases with manual segmentations only") + ".",
                conversion={"automated_segm": bool(use_automated)})


RELEASE = Release(
    kind="upenn-gbm", title=KIND, output=SEGMENTATION, plan=plan, default_id=529, default_name="UPENNGBM",
    help="UPENN-GBM: images_structural/ID/ID_{T1,T1GD,T2,FLAIR}.nii.gz + images_segm (labels 1,2,4 -> 1,2,3)",
    settings=(Setting("use_automated", False, ("--automated-segm",),
                      "use automated_segm/ where no manual segmentation exists", cli={"action": "store_true"}),),
    labels=LABELS, reference="https://doi.org/10.7937/TCIA.709X-DN49 ; Bakas et al., Sci Data 2022",
    licence="CC-BY 4.0 (TCIA)")
convert = RELEASE.convert
