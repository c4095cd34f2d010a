"""BraTS 2023 (GLI, MEN, MET, PED, SSA) -> nnU-Net raw dataset.

Release layout::

    RELEASE_ROOT/.../BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz

(``GLI`` replaced by ``MEN``, ``MET``, ``PED`` or ``SSA`` for the other sub-challenges). Case folders
are found anywhere up to four levels below ``RELEASE_ROOT``; one sub-challenge is converted per run
(``subset``; detected when the release holds only one).

Labels 0 background, 1 non-enhancing core / necrosis, 2 edema, 3 enhancing tumour are kept as
they are: this *is* our convention (regions whole (1,2,3), core (1,3), enhancing (3),
regions_class_order [2, 1, 3]). Enhancing tumour stays 3 -- BrainMVP's released code pushed
these labels through a transform expecting 4 and lost the enhancing region; the tests check the
voxels. BraTS 2024 ships the same file names with other label meanings (GLI: 4 resection cavity;
PED: relabelled classes). The release is recognised without relying on a label being present
(:func:`release_year`): by the folder names between the release root and the case folders
(``ASNR-MICCAI-BraTS2023-...``, ``BraTS2024-...``, 2024 GLI's ``training_data1_v2``), else by the
timepoints of the case ids (2024 GLI numbers them from 100, 2023 from 000); a 2024 tree is refused
with one line pointing to :mod:`brats2024`. Only when neither tells are the first label files read
(up to :data:`SNIFF_CASES`, also in a dry run): a 4 there refuses the tree too; a later file
holding a 4, or any other unknown value, skips its case with a reason. Channels: 0 T1 (t1n), 1 T1ce
(t1c), 2 T2 (t2w), 3 FLAIR (t2f).

Patients: ``BraTS-GLI-00005-000`` and ``-001`` are two timepoints of patient ``BraTS-GLI-00005``;
every case's patient and timepoint go into ``patients.json`` and, when a patient has several
scans, patient-grouped folds into ``splits_final.json`` (:mod:`nnunet_mmpretrain.subjects`).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, SEGMENTATION, CaseSkip, CaseSpec, ConversionError, Plan, Release, Setting, display, find_dirs,
    load_image, multimodal_seg_case, nifti_pair, suffixed_files)

KIND = "BraTS 2023"
CASE_RE = re.compile(r"BraTS-([A-Z]+)-(\d{5})-(\d{3})")
#: a BraTS year in a folder name of the release (``ASNR-MICCAI-BraTS2023-GLI-...``, ``BraTS2024-...``)
YEAR_RE = re.compile(r"brats[-_ ]?(20\d\d)", re.IGNORECASE)
#: folder names only BraTS 2024 uses
FOLDERS_2024 = ("training_data1_v2", "training_data_additional")
SUFFIX = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
LABELS = labels.convention("brats2023")
LABEL_MAP = dict(LABELS.mapping)
#: label files read before converting to recognise a BraTS 2024 release (label 4)
SNIFF_CASES = 5
SUBSETS = ("GLI", "MEN", "MET", "PED", "SSA")
DEFAULT_IDS = {"GLI": 522, "MEN": 523, "MET": 524, "PED": 525, "SSA": 526}
DESCRIPTIONS = {"GLI": "adult glioma", "MEN": "meningioma", "MET": "brain metastases",
                "PED": "paediatric tumours", "SSA": "glioma, Sub-Saharan Africa"}


def find_cases(root: str) -> Dict[str, List[Tuple[str, str]]]:
    """sub-challenge -> [(case id, folder)]."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for d in find_dirs(root, CASE_RE):
        cid = os.path.basename(d)
        out.setdefault(CASE_RE.fullmatch(cid).group(1), []).append((cid, d))
    return out


def case_files(folder: str, case_id: str, suffix: str) -> Tuple[Optional[str], str]:
    """(existing file or None, expected .nii.gz path) of one modality / the segmentation."""
    return nifti_pair(folder, f"{case_id}-{suffix}")


def pick_subset(found: Dict[str, list], subset: Optional[str], root: str, kind: str = KIND) -> str:
    """The sub-challenge to convert: ``subset``, or the only one ``found`` (one line otherwise)."""
    if not found:
        raise ConversionError(f"no {kind} cases under {root}: expected folders BraTS-GLI-XXXXX-YYY "
                              f"(or MEN/MET/PED/SSA) holding BraTS-...-{{t1n,t1c,t2w,t2f,seg}}.nii.gz.")
    if subset is None:
        if len(found) > 1:
            raise ConversionError(f"{root} holds several {kind} sub-challenges "
                                  f"({', '.join(sorted(found))}): pick one with --subset.")
        return next(iter(found))
    subset = subset.upper()
    if subset not in found:
        raise ConversionError(f"no BraTS-{subset}-* cases under {root} (found: {', '.join(sorted(found))}).")
    return subset


def patient_timepoint(case_id: str) -> Tuple[str, str]:
    """``BraTS-GLI-00005-101`` -> (``BraTS-GLI-00005``, ``101``)."""
    m = CASE_RE.fullmatch(case_id)
    return f"BraTS-{m.group(1)}-{m.group(2)}", m.group(3)


def release_year(root: str, cases: Sequence[Tuple[str, str]]) -> Tuple[Optional[int], str]:
    """(2023 or 2024, the evidence) from the folder names between ``root``'s parent and the case
    folders, else from the case ids' timepoints (100 and up: 2024); (None, '') when neither tells."""
    years: Dict[int, str] = {}
    top = os.path.dirname(os.path.abspath(root))
    for _, d in cases:
        for part in os.path.relpath(os.path.dirname(os.path.abspath(d)), top).split(os.sep):
            m = YEAR_RE.search(part)
            if m and int(m.group(1)) in (2023, 2024):
                years.setdefault(int(m.group(1)), f"folder {part}")
            elif part.lower() in FOLDERS_2024:
                years.setdefault(2024, f"folder {part}")
    if len(years) == 1:
        (year, why), = years.items()
        return year, why
    late = [cid for cid, _ in cases if int(patient_timepoint(cid)[1]) >= 100]
    if late:
        return 2024, f"case {late[0]} (timepoints from 100 are BraTS 2024's)"
    return None, ""


def build_specs(cases: List[Tuple[str, str]], convention: labels.LabelConvention = LABELS) -> List[CaseSpec]:
    specs = []
    for cid, d in cases:
        spec = multimodal_seg_case(cid, suffixed_files(d, cid, SUFFIX, "-"), case_files(d, cid, "seg"), convention)
        patient, timepoint = patient_timepoint(cid)
        spec.info.update(patient=patient, timepoint=timepoint)
        specs.append(spec)
    return specs


def label_values(specs: Sequence[CaseSpec], limit: int = SNIFF_CASES) -> Iterator[Tuple[str, Set[int]]]:
    """(label file, values it holds) of the first ``limit`` readable label files."""
    import SimpleITK as sitk
    n = 0
    for s in specs:
        if n >= limit:
            return
        if s.problem or s.label is None or not os.path.isfile(s.label.src):
            continue
        try:
            img = load_image(s.label.src)
        except CaseSkip:
            continue
        n += 1
        yield s.label.src, {int(v) for v in np.unique(sitk.GetArrayViewFromImage(img))}


def refuse_brats2024(specs: Sequence[CaseSpec]) -> None:
    """ConversionError (one line) when the first label files hold a 4: a BraTS 2024 release."""
    for path, values in label_values(specs):
        if 4 in values:
            raise ConversionError(f"{path} holds label 4, which BraTS 2023 does not define (BraTS 2024 GLI: "
                                  f"resection cavity): convert this release with "
                                  f"'nnUNetv2_mmpretrain_convert brats2024' instead of brats2023.")


def plan(root: str, subset: Optional[str] = None) -> Plan:
    """Discovery and dataset.json content of one sub-challenge of a BraTS 2023 release (refused
    when its first label files hold a 4: a BraTS 2024 release)."""
    found = find_cases(root)
    sub = pick_subset(found, subset, root)
    specs = build_specs(found[sub])
    year, why = release_year(root, found[sub])
    if year == 2024:
        raise ConversionError(f"{root} is a BraTS 2024 release ({why}), whose labels mean other things: convert "
                              f"it with 'nnUNetv2_mmpretrain_convert brats2024' instead of brats2023.")
    if year is None:
        refuse_brats2024(specs)
    return Plan(specs, title=f"{KIND} {sub}", dataset_id=DEFAULT_IDS.get(sub), name=f"BraTS2023_{sub}",
                empty=f"no {KIND} {sub} cases under {root}.", channels=[display(m) for m in BRATS_CHANNELS],
                description=f"BraTS 2023 {sub} ({DESCRIPTIONS.get(sub, sub)}). Labels as released: 1 "
                            f"non-enhancing core/necrosis, 2 edema, 3 enhancing tumour.",
                conversion={"subset": sub, "release": "BraTS 2023" + (f" ({why})" if why else "")})


RELEASE = Release(
    kind="brats2023", title=KIND, output=SEGMENTATION, plan=plan, default_name="BraTS2023_<SUBSET>",
    default_id_help="by sub-challenge: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_IDS.items()),
    help=f"BraTS 2023 {'/'.join(SUBSETS)}: BraTS-GLI-XXXXX-YYY/...-{{t1n,t1c,t2w,t2f,seg}}.nii.gz (labels 0-3 kept)",
    settings=(Setting("subset", None, ("--subset",), "sub-challenge (needed when the folder holds several)",
                      cli={"choices": SUBSETS, "type": str.upper}),),
    labels=LABELS, reference="https://www.synapse.org/brats2023", licence="see the BraTS 2023 data use agreement")
convert = RELEASE.convert
