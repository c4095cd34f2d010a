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
    BRATS_CHANNELS, CaseSpec, ConversionError, ConversionSummary, DatasetInfo, convert_segmentation,
    dataset_folder, display, find_dirs, multimodal_seg_case, nifti_file, require_root)

KIND = "BraTS 2021"
DEFAULT_ID, DEFAULT_NAME = 521, "BraTS2021"
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
    return nifti_file(folder, f"{case_id}_{suffix}"), os.path.join(folder, f"{case_id}_{suffix}.nii.gz")


def build_specs(root: str) -> List[CaseSpec]:
    specs = []
    for cid, d in find_cases(root):
        chans = [(m, *case_files(d, cid, SUFFIX[m])) for m in BRATS_CHANNELS]
        specs.append(multimodal_seg_case(cid, chans, case_files(d, cid, "seg"), LABELS))
    return specs


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, link: bool = True, dry_run: bool = False,
            overwrite: bool = False, num_processes: int = 1, progress: bool = True,
            print_summary: bool = True) -> ConversionSummary:
    root = require_root(release_root, KIND)
    folder = dataset_folder(out_dir, dataset_id, name)
    specs = build_specs(root)
    if not specs:
        raise ConversionError(f"no {KIND} cases under {root}: expected folders BraTS2021_XXXXX holding "
                              f"BraTS2021_XXXXX_{{t1,t1ce,t2,flair,seg}}.nii.gz.")
    info = DatasetInfo(
        channel_names=[display(m) for m in BRATS_CHANNELS], **LABELS.dataset_json(),
        description="BraTS 2021 adult glioma (RSNA-ASNR-MICCAI). Labels in BraTS-2023 convention: "
                    "1 necrotic/non-enhancing core, 2 edema, 3 enhancing tumour (release label 4).",
        reference="https://www.synapse.org/brats2021 ; Baid et al., arXiv:2107.02314",
        licence="see the BraTS 2021 data use agreement",
        extra={"conversion": {"kind": "brats2021", "source": root,
                              "label_mapping_from_release": LABELS.mapping_json()}})
    return convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                num_processes=num_processes, progress=progress, print_summary=print_summary)
