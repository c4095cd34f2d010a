"""BraTS 2021 (RSNA-ASNR-MICCAI) -> nnU-Net raw dataset.

Release layout (training data; the validation data lacks the ``seg`` files)::

    RELEASE_ROOT/.../BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz

Case folders are found anywhere up to four levels below ``RELEASE_ROOT``.
Labels in the release: 0 background, 1 necrotic / non-enhancing core, 2 edema, 4 enhancing tumour.
Written in our BraTS-2023 convention: 4 -> 3 (1 and 2 unchanged), so every brain-tumour dataset
shares one dataset.json form: regions whole (1,2,3), core (1,3), enhancing (3), regions_class_order
[2, 1, 3]. Channels: 0 T1, 1 T1ce, 2 T2, 3 FLAIR.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, SEGMENTATION, CaseSpec, Plan, Release, display, find_dirs, multimodal_seg_case, nifti_pair,
    suffixed_files)

CASE_RE = re.compile(r"BraTS2021_\d{5}")
#: canonical modality -> file suffix in the release
SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
LABELS = labels.convention("brats2021")
LABEL_MAP = dict(LABELS.mapping)


def find_cases(root: str) -> List[Tuple[str, str]]:
    """(case id, folder) of every ``BraTS2021_XXXXX`` folder under ``root``."""
    return [(os.path.basename(d), d) for d in find_dirs(root, CASE_RE)]


def case_files(folder: str, case_id: str, suffix: str) -> Tuple[Optional[str], str]:
    """(existing file or None, expected .nii.gz path) of one modality / the segmentation."""
    return nifti_pair(folder, f"{case_id}_{suffix}")


def build_specs(root: str) -> List[CaseSpec]:
    return [multimodal_seg_case(cid, suffixed_files(d, cid, SUFFIX), case_files(d, cid, "seg"), LABELS)
            for cid, d in find_cases(root)]


def plan(root: str) -> Plan:
    """Discovery and dataset.json content of a BraTS 2021 release."""
    return Plan(build_specs(root), channels=[display(m) for m in BRATS_CHANNELS],
                empty=f"no BraTS 2021 cases under {root}: expected folders BraTS2021_XXXXX holding "
                      f"BraTS2021_XXXXX_{{t1,t1ce,t2,flair,seg}}.nii.gz.",
                description="BraTS 2021 adult glioma (RSNA-ASNR-MICCAI). Labels in BraTS-2023 convention: "
                            "1 necrotic/non-enhancing core, 2 edema, 3 enhancing tumour (release label 4).")


RELEASE = Release(
    kind="brats2021", title="BraTS 2021", output=SEGMENTATION, plan=plan, default_id=521, default_name="BraTS2021",
    help="BraTS 2021: BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz (labels 1,2,4 -> 1,2,3)",
    labels=LABELS, reference="https://www.synapse.org/brats2021 ; Baid et al., arXiv:2107.02314",
    licence="see the BraTS 2021 data use agreement")
convert = RELEASE.convert
