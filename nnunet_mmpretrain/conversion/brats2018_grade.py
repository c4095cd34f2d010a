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
from typing import List

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, CLASSIFICATION, CaseSpec, Plan, Release, display, find_dirs, multimodal_seg_case, nifti_pair,
    suffixed_files, visible)

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
            spec = multimodal_seg_case(cid, suffixed_files(d, cid, SUFFIX), nifti_pair(d, f"{cid}_seg"), LABELS)
            spec.info.update(grade=grade, label=GRADES[grade])
            specs.append(spec)
    return specs


def plan(root: str) -> Plan:
    """Discovery, dataset.json content and ``classes.csv`` rows of a BraTS 2018 release."""
    return Plan(
        build_specs(root), channels=[display(m) for m in BRATS_CHANNELS],
        empty=f"no BraTS 2018 cases under {root}: expected HGG/ and LGG/ folders holding "
              f"<case>/<case>_{{t1,t1ce,t2,flair,seg}}.nii.gz.",
        description="BraTS 2018 glioma grading: classes.csv label 1 = HGG, 0 = LGG. Segmentations in "
                    "BraTS-2023 convention (release 4 enhancing -> 3).",
        extra={"classification": {"file": "classes.csv", "classes": {"0": "LGG", "1": "HGG"}}},
        classes=(("case", "label", "grade"), lambda s: (s.case_id, s.info["label"], s.info["grade"])))


RELEASE = Release(
    kind="brats2018-grade", title="BraTS 2018 grading", output=CLASSIFICATION, plan=plan, default_id=532,
    default_name="BraTS2018Grade", help="BraTS 2018 HGG/LGG: images + segmentations + classes.csv (label 1 = HGG)",
    labels=LABELS, reference="https://www.med.upenn.edu/sbia/brats2018.html ; Bakas et al., arXiv:1811.02629",
    licence="see the BraTS 2018 data use agreement")
convert = RELEASE.convert
