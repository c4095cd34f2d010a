"""Vestibular-Schwannoma-SEG (TCIA, Shapey et al. 2021) -> nnU-Net raw dataset.

Layout assumption. TCIA distributes DICOM images with RTSTRUCT contours; we expect the NIfTI
layout produced by the dataset authors' conversion scripts (github.com/KCL-BMEIS/VS_Seg,
``preprocessing/``), one folder per patient anywhere up to four levels below ``RELEASE_ROOT``::

    vs_gk_1/vs_gk_t1_refT1.nii.gz     contrast-enhanced T1 (ceT1), the reference space
    vs_gk_1/vs_gk_seg_refT1.nii.gz    tumour mask in ceT1 space (0 background, 1 VS)
    vs_gk_1/vs_gk_t2_refT1.nii.gz     T2 registered to ceT1 (optional, see ``with_t2``)

Any folder holding a ``*t1_refT1.nii[.gz]`` and a ``*seg_refT1.nii[.gz]`` file is a case; its
name is the case id. Channel 0 is the ceT1 (written "T1ce", BrainMVP's "T1(ce)" VSseg input);
``with_t2`` adds the T2 as channel 1 (resampled onto the ceT1 grid if it is not already on it).
Labels: 0 background, 1 vestibular schwannoma. Masks with other values are skipped with a reason.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional

from nnunet_mmpretrain.conversion.common import (
    CaseSpec, ConversionError, ConversionSummary, DatasetInfo, ImageSpec, LabelSpec,
    convert_segmentation, dataset_folder, find_dirs_containing, missing_files_problem,
    require_root, seg_image_dst, seg_label_dst, visible)

KIND = "VS-seg"
DEFAULT_ID, DEFAULT_NAME = 531, "VSseg"
LABEL_MAP = {0: 0, 1: 1}


def _find(folder: str, suffix: str) -> Optional[str]:
    hits = sorted(p for p in glob.glob(os.path.join(folder, f"*{suffix}.nii*"))
                  if visible(os.path.basename(p)) and (p.endswith(".nii") or p.endswith(".nii.gz")))
    return hits[0] if hits else None


def build_specs(root: str, with_t2: bool = False) -> List[CaseSpec]:
    cases = find_dirs_containing(root, lambda p: _find(p, "t1_refT1") is not None, max_depth=4)
    specs = []
    for d in cases:
        cid = os.path.basename(d)
        t1, seg = _find(d, "t1_refT1"), _find(d, "seg_refT1")
        files = {"ceT1 image": (t1, os.path.join(d, "vs_gk_t1_refT1.nii.gz"))}
        spec = CaseSpec(case_id=cid)
        spec.images.append(ImageSpec(src=t1, dst=seg_image_dst(cid, 0), what="ceT1 image"))
        if with_t2:
            t2 = _find(d, "t2_refT1")
            files["T2 image"] = (t2, os.path.join(d, "vs_gk_t2_refT1.nii.gz"))
            spec.images.append(ImageSpec(src=t2 or files["T2 image"][1], dst=seg_image_dst(cid, 1),
                                         on_mismatch="resample", what="T2 image"))
        files["segmentation"] = (seg, os.path.join(d, "vs_gk_seg_refT1.nii.gz"))
        spec.label = LabelSpec(src=seg or files["segmentation"][1], dst=seg_label_dst(cid),
                               mapping=LABEL_MAP, dataset=KIND)
        spec.problem = missing_files_problem(files)
        specs.append(spec)
    return specs


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, with_t2: bool = False, link: bool = True,
            dry_run: bool = False, overwrite: bool = False, num_processes: int = 1,
            progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    root = require_root(release_root, KIND)
    folder = dataset_folder(out_dir, dataset_id, name)
    specs = build_specs(root, with_t2)
    if not specs:
        raise ConversionError(f"no {KIND} cases under {root}: expected folders (e.g. vs_gk_1/) holding "
                              f"vs_gk_t1_refT1.nii.gz and vs_gk_seg_refT1.nii.gz (NIfTI made with the "
                              f"VS_Seg preprocessing scripts).")
    info = DatasetInfo(
        channel_names=["T1ce"] + (["T2"] if with_t2 else []),
        labels={"background": 0, "vestibular schwannoma": 1},
        description="Vestibular-Schwannoma-SEG (TCIA): contrast-enhanced T1 with the tumour mask in "
                    "ceT1 space" + (", plus T2 registered to ceT1" if with_t2 else "") + ".",
        reference="https://doi.org/10.7937/TCIA.9YTJ-5Q73 ; Shapey et al., Sci Data 2021",
        licence="CC-BY 4.0 (TCIA)",
        extra={"conversion": {"kind": "vsseg", "source": root, "with_t2": bool(with_t2),
                              "label_mapping_from_release": {"0": 0, "1": 1}}})
    return convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                num_processes=num_processes, progress=progress, print_summary=print_summary)
