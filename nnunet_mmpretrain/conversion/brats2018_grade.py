"""BraTS 2018 HGG / LGG grading -> nnU-Net raw dataset + ``classes.csv``.

Release layout (``MICCAI_BraTS_2018_Data_Training``; the grade is the parent folder)::

    RELEASE_ROOT/HGG/Brats18_2013_10_1/Brats18_2013_10_1_{t1,t1ce,t2,flair,seg}.nii.gz
    RELEASE_ROOT/LGG/Brats18_2013_0_1/Brats18_2013_0_1_{t1,t1ce,t2,flair,seg}.nii.gz

(``HGG``/``LGG`` may sit up to two levels below ``RELEASE_ROOT``; BraTS 2019 has the same form.)
Written: an nnU-Net raw dataset in the same form as the phantom classification dataset: images
(channels 0 T1, 1 T1ce, 2 T2, 3 FLAIR), the tumour segmentations in our BraTS-2023 convention
(release labels 1 necrosis/non-enhancing, 2 edema, 4 enhancing -> 1, 2, 3; nnU-Net's planning
needs them and they allow a segmentation auxiliary task), and ``classes.csv`` with the header
``case,label,grade``: label 1 = HGG, 0 = LGG; grade is the folder name.
"""
from __future__ import annotations

import os
from typing import List, Optional

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, CaseSpec, ConversionError, ConversionSummary, DatasetInfo, convert_segmentation,
    dataset_folder, display, find_dirs, multimodal_seg_case, nifti_file, require_root, visible)

KIND = "BraTS 2018 grading"
DEFAULT_ID, DEFAULT_NAME = 532, "BraTS2018Grade"
SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
GRADES = {"HGG": 1, "LGG": 0}
LABELS = labels.convention("brats2018")
LABEL_MAP = dict(LABELS.mapping)


def build_specs(root: str) -> List[CaseSpec]:
    specs = []
    for gdir in find_dirs(root, lambda d: d in GRADES, max_depth=3):
        grade = os.path.basename(gdir)
        for cid in sorted(d for d in os.listdir(gdir) if visible(d) and os.path.isdir(os.path.join(gdir, d))):
            d = os.path.join(gdir, cid)
            chans = [(m, nifti_file(d, f"{cid}_{SUFFIX[m]}"), os.path.join(d, f"{cid}_{SUFFIX[m]}.nii.gz"))
                     for m in BRATS_CHANNELS]
            seg = (nifti_file(d, f"{cid}_seg"), os.path.join(d, f"{cid}_seg.nii.gz"))
            spec = multimodal_seg_case(cid, chans, seg, LABELS)
            spec.info.update(grade=grade, label=GRADES[grade])
            specs.append(spec)
    return specs


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, link: bool = True, dry_run: bool = False,
            overwrite: bool = False, num_processes: int = 1, progress: bool = True,
            print_summary: bool = True) -> ConversionSummary:
    root = require_root(release_root, KIND)
    folder = dataset_folder(out_dir, dataset_id, name)
    specs = build_specs(root)
    if not specs:
        raise ConversionError(f"no BraTS 2018 cases under {root}: expected HGG/ and LGG/ folders holding "
                              f"<case>/<case>_{{t1,t1ce,t2,flair,seg}}.nii.gz.")
    info = DatasetInfo(
        channel_names=[display(m) for m in BRATS_CHANNELS], **LABELS.dataset_json(),
        description="BraTS 2018 glioma grading: classes.csv label 1 = HGG, 0 = LGG. Segmentations in "
                    "BraTS-2023 convention (release 4 enhancing -> 3).",
        reference="https://www.med.upenn.edu/sbia/brats2018.html ; Bakas et al., arXiv:1811.02629",
        licence="see the BraTS 2018 data use agreement",
        extra={"classification": {"file": "classes.csv", "classes": {"0": "LGG", "1": "HGG"}},
               "conversion": {"kind": "brats2018-grade", "source": root,
                              "label_mapping_from_release": LABELS.mapping_json()}})
    return convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                num_processes=num_processes, progress=progress, print_summary=print_summary,
                                classes=(("case", "label", "grade"),
                                         lambda s: (s.case_id, s.info["label"], s.info["grade"])))
