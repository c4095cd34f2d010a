"""MRBrainS13 -> nnU-Net raw dataset.

Release layout: one folder per subject, ``TrainingData/1`` ... ``TrainingData/5`` and
``TestData/1`` ... ``TestData/15`` (both numbered from 1; the test subjects come without labels and
are reported as skipped), anywhere below ``RELEASE_ROOT``::

    <subject>/T1.nii  T1_IR.nii  T2_FLAIR.nii  LabelsForTraining.nii   (MRBrainS13DataNii)
    <subject>/T1.mhd  T1_IR.mhd  T2_FLAIR.mhd  LabelsForTraining.mhd   (the original release:
                                                                      MetaImage, .mhd + .raw)

(``.nii.gz`` and ``.mha`` are read too.) All scans are aligned on one 0.958 x 0.958 x 3.0 mm grid.
Images are rewritten as ``.nii.gz``. Channels: 0 T1, 1 T1-IR (unknown to the modality vocabulary,
written as "T1-IR"), 2 FLAIR. Case ids: ``MRBrainS13_<NN>`` for ``TrainingData/<N>`` and
``MRBrainS13_Test<NN>`` for ``TestData/<N>`` (no id collision between the splits).

Labels (``label_set='full'``, the default) are kept exactly as released in LabelsForTraining:
0 background, 1 cortical gray matter, 2 basal ganglia, 3 white matter, 4 white matter lesions,
5 cerebrospinal fluid in the extracerebral space, 6 ventricles, 7 cerebellum, 8 brainstem.
``label_set='tissue'`` writes the challenge's three evaluated classes instead: 1 CSF (5, 6),
2 gray matter (1, 2), 3 white matter (3, 4), and cerebellum / brainstem (7, 8), which the challenge
did not evaluate, as nnU-Net's ``ignore`` label 4.
"""
from __future__ import annotations

import os
from typing import List

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    SEGMENTATION, CaseSpec, ConversionError, Plan, Release, Setting, find_dirs_containing, image_file,
    multimodal_seg_case)

KIND = "MRBrainS13"
#: (channel name in dataset.json, file stem)
CHANNELS = (("T1", "T1"), ("T1-IR", "T1_IR"), ("FLAIR", "T2_FLAIR"))
LABEL_FILE = "LabelsForTraining"
CONVENTIONS = {"full": labels.convention("mrbrains13-full"), "tissue": labels.convention("mrbrains13-tissue")}
FULL_LABELS = dict(CONVENTIONS["full"].labels)
FULL_MAP = dict(CONVENTIONS["full"].mapping)
TISSUE_LABELS = dict(CONVENTIONS["tissue"].labels)
TISSUE_MAP = dict(CONVENTIONS["tissue"].mapping)


def case_id_for(folder: str, root: str = "") -> str:
    """``MRBrainS13_01`` for ``TrainingData/1``, ``MRBrainS13_Test01`` for ``TestData/1``."""
    b = os.path.basename(folder)
    parts = os.path.relpath(os.path.dirname(folder), root).lower().split(os.sep) if root else []
    split = "Test" if any(p.startswith("test") for p in parts) else ""
    return f"MRBrainS13_{split}{int(b):02d}" if b.isdigit() else f"MRBrainS13_{split}{b}"


def build_specs(root: str, label_set: str = "full") -> List[CaseSpec]:
    """One case per subject folder holding T1 and T2_FLAIR (the label file may be missing)."""
    conv = CONVENTIONS[label_set]
    subjects = find_dirs_containing(root, lambda p: image_file(p, "T1") is not None and
                                    image_file(p, "T2_FLAIR") is not None, max_depth=4)
    specs = []
    for d in subjects:
        cid = case_id_for(d, root)
        ext = os.path.splitext(image_file(d, "T1"))[1].replace(".gz", "") or ".nii"
        chans = [(ch, image_file(d, stem), os.path.join(d, stem + ext)) for ch, stem in CHANNELS]
        lab = (image_file(d, LABEL_FILE), os.path.join(d, LABEL_FILE + ext))
        spec = multimodal_seg_case(cid, chans, lab, conv)
        if lab[0] is None and all(c[1] for c in chans):
            spec.problem = f"no {LABEL_FILE}{ext} in {d} (test subjects come without labels)"
        specs.append(spec)
    return specs


def plan(root: str, label_set: str = "full") -> Plan:
    """Discovery and dataset.json content of MRBrainS13 with the ``label_set`` convention."""
    if label_set not in CONVENTIONS:
        raise ConversionError(f"label set must be 'full' or 'tissue', got {label_set!r}.")
    return Plan(
        build_specs(root, label_set), channels=[ch for ch, _ in CHANNELS], labels=CONVENTIONS[label_set],
        empty=f"no {KIND} subject folders under {root}: expected folders holding T1, T1_IR, T2_FLAIR and "
              f"{LABEL_FILE} as .nii (MRBrainS13DataNii) or .mhd (the original release).",
        description=("MRBrainS13 brain structures, labels as released (LabelsForTraining, 1-8)."
                     if label_set == "full" else
                     "MRBrainS13 tissue classes: 1 CSF (release 5, 6), 2 gray matter (1, 2), 3 white "
                     "matter (3, 4); cerebellum and brainstem (7, 8) -> ignore (4)."),
        conversion={"label_set": label_set})


RELEASE = Release(
    kind="mrbrains13", title=KIND, output=SEGMENTATION, plan=plan, default_id=530, default_name="MRBrainS13",
    help="MRBrainS13: <subject>/{T1,T1_IR,T2_FLAIR,LabelsForTraining}.nii (or .mhd)",
    settings=(Setting("label_set", "full", ("--label-set",), "full: labels 0-8 as released; tissue: 1 CSF, 2 GM, "
                      "3 WM, cerebellum/brainstem -> ignore", cli={"choices": tuple(CONVENTIONS)}),),
    reference="https://mrbrains13.isi.uu.nl ; Mendrik et al., Comput Intell Neurosci 2015",
    licence="see the MRBrainS13 data terms (DataverseNL doi:10.34894/645ZIN)")
convert = RELEASE.convert
