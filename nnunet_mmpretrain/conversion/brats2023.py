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
voxels. BraTS 2024 GLI ships the same file names with a fourth label (4, resection cavity): a tree
whose first label files hold a 4 is refused with one line pointing to :mod:`brats2024` (up to
:data:`SNIFF_CASES` label files are read for that, also in a dry run); a later file holding a 4, or
any other unknown value, skips its case with a reason. Channels: 0 T1 (t1n), 1 T1ce (t1c), 2 T2
(t2w), 3 FLAIR (t2f).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, CaseSkip, CaseSpec, ConversionError, ConversionSummary, DatasetInfo, convert_segmentation,
    dataset_folder, display, find_dirs, load_image, multimodal_seg_case, nifti_file, require_root)

KIND = "BraTS 2023"
CASE_RE = re.compile(r"BraTS-([A-Z]+)-\d{5}-\d{3}")
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
    return nifti_file(folder, f"{case_id}-{suffix}"), os.path.join(folder, f"{case_id}-{suffix}.nii.gz")


def pick_subset(found: Dict[str, list], subset: Optional[str], root: str, kind: str = KIND) -> str:
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


def build_specs(cases: List[Tuple[str, str]], convention: labels.LabelConvention = LABELS) -> List[CaseSpec]:
    specs = []
    for cid, d in cases:
        chans = [(m, *case_files(d, cid, SUFFIX[m])) for m in BRATS_CHANNELS]
        specs.append(multimodal_seg_case(cid, chans, case_files(d, cid, "seg"), convention))
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


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: Optional[int] = None,
            name: Optional[str] = None, *, subset: Optional[str] = None, link: bool = True,
            dry_run: bool = False, overwrite: bool = False, num_processes: int = 1,
            progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    """``dataset_id`` / ``name`` default to 522-526 / ``BraTS2023_<SUBSET>``."""
    root = require_root(release_root, KIND)
    found = find_cases(root)
    sub = pick_subset(found, subset, root)
    if dataset_id is None:
        if sub not in DEFAULT_IDS:
            raise ConversionError(f"no default dataset id for sub-challenge {sub}: pass -d ID.")
        dataset_id = DEFAULT_IDS[sub]
    folder = dataset_folder(out_dir, dataset_id, name or f"BraTS2023_{sub}")
    specs = build_specs(found[sub])
    refuse_brats2024(specs)
    info = DatasetInfo(
        channel_names=[display(m) for m in BRATS_CHANNELS], **LABELS.dataset_json(),
        description=f"BraTS 2023 {sub} ({DESCRIPTIONS.get(sub, sub)}). Labels as released: 1 "
                    f"non-enhancing core/necrosis, 2 edema, 3 enhancing tumour.",
        reference="https://www.synapse.org/brats2023",
        licence="see the BraTS 2023 data use agreement",
        extra={"conversion": {"kind": "brats2023", "subset": sub, "source": root,
                              "label_mapping_from_release": LABELS.mapping_json()}})
    return convert_segmentation(f"{KIND} {sub}", specs, folder, info, link=link, dry_run=dry_run,
                                overwrite=overwrite, num_processes=num_processes, progress=progress,
                                print_summary=print_summary)
