"""Medical Segmentation Decathlon Task01_BrainTumour -> nnU-Net raw dataset.

Release layout (``RELEASE_ROOT`` is ``Task01_BrainTumour`` or a folder holding it)::

    Task01_BrainTumour/dataset.json
    Task01_BrainTumour/imagesTr/BRATS_XXX.nii.gz   one 4D file per case: FLAIR, T1w, T1gd, T2w
    Task01_BrainTumour/labelsTr/BRATS_XXX.nii.gz
    Task01_BrainTumour/imagesTs/...                 (no labels: not converted)

The tarball also carries macOS ``._BRATS_XXX.nii.gz`` files; hidden files are ignored. The order
of the volumes is read from the release's ``dataset.json`` ``modality`` entry (through the
modality vocabulary) when present, else FLAIR, T1w, T1gd, T2w is assumed. Volumes are written as
separate channels in our BraTS order 0 T1, 1 T1ce, 2 T2, 3 FLAIR.

Labels in the release: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour. Mapped to our
BraTS-2023 convention (1 necrosis/non-enhancing core, 2 edema, 3 enhancing): 1 -> 2, 2 -> 1, 3 -> 3.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from nnunet_mmpretrain import labels, modalities as mod
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, SEGMENTATION, CaseSpec, ConversionError, ImageSpec, LabelSpec, Plan, Release, display,
    find_dirs_containing, nifti_stem, seg_image_dst, seg_label_dst, visible)

KIND = "MSD Task01_BrainTumour"
LABELS = labels.convention("msd-brain")
LABEL_MAP = dict(LABELS.mapping)  # 1 edema -> 2, 2 non-enhancing -> 1, 3 -> 3
DEFAULT_ORDER = ("flair", "t1", "t1c", "t2")  # FLAIR, T1w, T1gd, T2w


def find_task_folder(root: str) -> str:
    hits = find_dirs_containing(root, lambda p: os.path.isdir(os.path.join(p, "imagesTr")) and
                                os.path.isdir(os.path.join(p, "labelsTr")), max_depth=2)
    if not hits:
        raise ConversionError(f"no {KIND} release under {root}: expected a folder holding imagesTr/ "
                              f"and labelsTr/ (Task01_BrainTumour).")
    return hits[0]


def volume_order(task: str) -> Dict[str, int]:
    """canonical modality -> volume index in the 4D files."""
    p = os.path.join(task, "dataset.json")
    order = list(DEFAULT_ORDER)
    if os.path.isfile(p):
        try:
            with open(p) as f:
                m = json.load(f).get("modality") or {}
            if m:
                order = [mod.canonical(m[k], where=p) for k in sorted(m, key=int)]
        except (ValueError, OSError, mod.UnknownModalityError) as e:
            raise ConversionError(f"cannot read the modality order from {p}: {e}") from None
    missing = [x for x in BRATS_CHANNELS if x not in order]
    if missing:
        raise ConversionError(f"{p} lists modalities {order}; {', '.join(missing)} missing.")
    return {m: order.index(m) for m in BRATS_CHANNELS}


def build_specs(task: str) -> List[CaseSpec]:
    order = volume_order(task)
    img_dir, lab_dir = os.path.join(task, "imagesTr"), os.path.join(task, "labelsTr")
    specs = []
    for f in sorted(os.listdir(img_dir)):
        stem = nifti_stem(f)
        if not visible(f) or stem is None:
            continue
        src = os.path.join(img_dir, f)
        lab = os.path.join(lab_dir, f)
        spec = CaseSpec(case_id=stem)
        spec.images = [ImageSpec(src=src, dst=seg_image_dst(stem, i), channel=order[m],
                                 what=f"{display(m)} volume") for i, m in enumerate(BRATS_CHANNELS)]
        spec.label = LabelSpec.of(lab, seg_label_dst(stem), LABELS)
        if not os.path.isfile(lab):
            spec.problem = f"missing segmentation: {lab}"
        specs.append(spec)
    return specs


def plan(root: str) -> Plan:
    """Discovery and dataset.json content of the MSD Task01_BrainTumour release."""
    task = find_task_folder(root)
    return Plan(build_specs(task), source=task, channels=[display(m) for m in BRATS_CHANNELS],
                empty=f"no {KIND} cases in {os.path.join(task, 'imagesTr')}: expected BRATS_XXX.nii.gz files.",
                description="MSD Task01_BrainTumour (BraTS 2016/2017 subset). 4D volumes split into T1, "
                            "T1ce, T2, FLAIR; labels remapped to BraTS-2023 convention (MSD 1 edema -> 2, "
                            "2 non-enhancing -> 1, 3 enhancing -> 3).")


RELEASE = Release(
    kind="msd-brain", title=KIND, output=SEGMENTATION, plan=plan, default_id=527, default_name="MSDBrainTumour",
    help="MSD Task01_BrainTumour: 4D imagesTr/BRATS_XXX.nii.gz (labels 1->2, 2->1, 3->3)", labels=LABELS,
    reference="http://medicaldecathlon.com ; Antonelli et al., Nat Commun 2022", licence="CC-BY-SA 4.0")
convert = RELEASE.convert
