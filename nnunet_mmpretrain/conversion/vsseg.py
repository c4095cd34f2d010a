"""Vestibular-Schwannoma-SEG (TCIA, Shapey et al. 2021) -> nnU-Net raw dataset.

TCIA distributes DICOM images with RTSTRUCT contours plus, per patient, JSON contours and the
affine matrices that map the T1 and T2 spaces onto each other (from the Leksell frame fiducials).
The dataset authors' scripts (github.com/KCL-BMEIS/VS_Seg, ``preprocessing/``, run in 3D Slicer)
turn them into NIfTI in one of two layouts, both read here (found anywhere below ``RELEASE_ROOT``):

1. ``data_conversion.py`` (one folder per patient)::

       vs_gk_1/vs_gk_t1_refT1.nii.gz   vs_gk_seg_refT1.nii.gz    contrast-enhanced T1 (ceT1) + its mask
       vs_gk_1/vs_gk_t2_refT2.nii.gz   vs_gk_seg_refT2.nii.gz    T2 + its mask (the default output)
       vs_gk_1/vs_gk_t2_refT1.nii.gz   T2 registered to ceT1 (only with ``--register T1``, which then
                                       writes no ``*_refT2`` files)

2. ``createBIDSdataset/data_conversion_BIDS.py`` (BIDS)::

       sub-001/anat/sub-001_T1w.nii.gz  sub-001_T2w.nii.gz       (T1w is the ceT1)
       derivatives/manual_segmentation_masks_of_T1w/sub-001/anat/sub-001_space-individual_desc-tumor_mask.nii.gz
       derivatives/manual_segmentation_masks_of_T2w/sub-001/anat/sub-001_space-individual_desc-tumor_mask.nii.gz
       derivatives/T2w_registered_to_T1w/sub-001/anat/sub-001_space-individual_T2w.nii.gz

``sequence`` picks the dataset: ``'t1c'`` (default) the ceT1 with its mask (channel "T1ce");
``'t2'`` the T2 with its own mask, a T2-only dataset (channel "T2"). ``with_t2`` adds the T2 as
channel 1 of the ceT1 dataset, and only a T2 *registered to ceT1 with the release's transforms*
(``vs_gk_t2_refT1`` or ``derivatives/T2w_registered_to_T1w``), on the ceT1 grid: a T2 is never
resampled onto the ceT1 by scanner coordinates (the two were acquired in different frames); a
release without registered T2 is refused with one line saying what is needed. Case ids are the
patient folder names (``vs_gk_1``, ``sub-001``). Labels: 0 background, 1 vestibular schwannoma.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Tuple

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.common import (
    SEGMENTATION, CaseSpec, ConversionError, ImageSpec, LabelSpec, Plan, Release, Setting, find_dirs_containing,
    missing_files_problem, nifti_pair, seg_image_dst, seg_label_dst, visible)

KIND = "VS-seg"
DEFAULT_ID, DEFAULT_NAME = 531, "VSseg"
DEFAULT_T2_ID, DEFAULT_T2_NAME = 537, "VSsegT2"
SEQUENCES = ("t1c", "t2")
LABELS = labels.convention("vsseg")
LABEL_MAP = dict(LABELS.mapping)
MASKS = "derivatives/manual_segmentation_masks_of_{}"
T2_TO_T1 = "derivatives/T2w_registered_to_T1w"
NEEDS_REGISTERED_T2 = (
    "--with-t2 needs the T2 registered to the ceT1 with the release's own transforms: "
    "vs_gk_N/vs_gk_t2_refT1.nii.gz (VS_Seg preprocessing/data_conversion.py --register T1) or the BIDS "
    f"export's {T2_TO_T1}/sub-N/anat/sub-N_space-individual_T2w.nii.gz; {{root}} has {{found}}, and a T2 is "
    "never resampled onto the ceT1 by scanner coordinates. Convert without --with-t2 (ceT1 only), or "
    "with --sequence t2 for the T2-only dataset.")


def _find(folder: str, suffix: str) -> Optional[str]:
    hits = sorted(p for p in glob.glob(os.path.join(folder, f"*{suffix}.nii*"))
                  if visible(os.path.basename(p)) and (p.endswith(".nii") or p.endswith(".nii.gz")))
    return hits[0] if hits else None


def _bids_file(path_no_ext: str) -> Tuple[Optional[str], str]:
    return nifti_pair(os.path.dirname(path_no_ext), os.path.basename(path_no_ext))


def _is_bids_root(p: str) -> bool:
    return any(os.path.isdir(os.path.join(p, MASKS.format(m))) for m in ("T1w", "T2w"))


def _case(cid: str, image: Tuple[Optional[str], str], what: str, channel: str, seg: Tuple[Optional[str], str],
          t2: Optional[Tuple[Optional[str], str]]) -> CaseSpec:
    files = {what: image}
    spec = CaseSpec(case_id=cid, info={"channel": channel})
    spec.images.append(ImageSpec(src=image[0] or image[1], dst=seg_image_dst(cid, 0), what=what))
    if t2 is not None:
        files["T2 image registered to ceT1"] = t2
        spec.images.append(ImageSpec(src=t2[0] or t2[1], dst=seg_image_dst(cid, 1), on_mismatch="skip",
                                     what="T2 image registered to ceT1"))
    files["segmentation"] = seg
    spec.label = LabelSpec.of(seg[0] or seg[1], seg_label_dst(cid), LABELS)
    spec.problem = missing_files_problem(files)
    return spec


def _vsseg_specs(root: str, sequence: str, with_t2: bool) -> Tuple[List[CaseSpec], int]:
    """Cases of the data_conversion.py layout, and how many of them have a registered T2."""
    ref = "refT1" if sequence == "t1c" else "refT2"
    img = "t1_refT1" if sequence == "t1c" else "t2_refT2"
    folders = find_dirs_containing(
        root, lambda p: any(_find(p, f"{m}_{r}") for m in ("t1", "t2", "seg") for r in ("refT1", "refT2")), 4)
    specs, registered = [], 0
    for d in folders:
        t2 = None
        if with_t2:
            t2 = (_find(d, "t2_refT1"), os.path.join(d, "vs_gk_t2_refT1.nii.gz"))
            registered += t2[0] is not None
        specs.append(_case(os.path.basename(d), (_find(d, img), os.path.join(d, f"vs_gk_{img}.nii.gz")),
                           "ceT1 image" if sequence == "t1c" else "T2 image", "T1ce" if sequence == "t1c" else "T2",
                           (_find(d, f"seg_{ref}"), os.path.join(d, f"vs_gk_seg_{ref}.nii.gz")), t2))
    return specs, registered


def _bids_specs(bids: str, sequence: str, with_t2: bool) -> Tuple[List[CaseSpec], int]:
    mod = "T1w" if sequence == "t1c" else "T2w"
    specs, registered = [], 0
    for sub in sorted(d for d in os.listdir(bids) if d.startswith("sub-") and os.path.isdir(os.path.join(bids, d))):
        image = _bids_file(os.path.join(bids, sub, "anat", f"{sub}_{mod}"))
        seg = _bids_file(os.path.join(bids, MASKS.format(mod), sub, "anat", f"{sub}_space-individual_desc-tumor_mask"))
        t2 = None
        if with_t2:
            t2 = _bids_file(os.path.join(bids, T2_TO_T1, sub, "anat", f"{sub}_space-individual_T2w"))
            registered += t2[0] is not None
        specs.append(_case(sub, image, "ceT1 image" if sequence == "t1c" else "T2 image",
                           "T1ce" if sequence == "t1c" else "T2", seg, t2))
    return specs, registered


def build_specs(root: str, with_t2: bool = False, sequence: str = "t1c") -> List[CaseSpec]:
    """Cases of the BIDS export where there is one, else of the data_conversion.py layout;
    refuses ``with_t2`` when no case has a T2 registered to the ceT1."""
    if sequence not in SEQUENCES:
        raise ConversionError(f"VS-seg sequence must be one of {', '.join(SEQUENCES)}, got {sequence!r}.")
    if with_t2 and sequence != "t1c":
        raise ConversionError("--with-t2 adds the registered T2 to the ceT1 dataset; --sequence t2 already is "
                              "the T2 dataset (T2 with its own mask): drop one of the two options.")
    bids_roots = find_dirs_containing(root, _is_bids_root, max_depth=3)
    specs: List[CaseSpec] = []
    registered = 0
    for b in bids_roots:
        s, r = _bids_specs(b, sequence, with_t2)
        specs, registered = specs + s, registered + r
    if not bids_roots:
        specs, registered = _vsseg_specs(root, sequence, with_t2)
    if with_t2 and specs and not registered:
        what = ("the BIDS export without derivatives/T2w_registered_to_T1w" if bids_roots else
                "no vs_gk_t2_refT1 file (the default data_conversion.py output: T2 in its own space, "
                "vs_gk_t2_refT2)")
        raise ConversionError(NEEDS_REGISTERED_T2.format(root=root, found=what))
    return specs


def plan(root: str, sequence: str = "t1c", with_t2: bool = False) -> Plan:
    """Discovery and dataset.json content of VS-seg: ``sequence`` 't1c' (ceT1 + its mask; default
    id 531 ``VSseg``) or 't2' (T2 + its own mask; default id 537 ``VSsegT2``); ``with_t2``: add
    the T2 registered to ceT1 as channel 1."""
    specs = build_specs(root, with_t2, sequence)
    t1c = sequence == "t1c"
    return Plan(
        specs, dataset_id=DEFAULT_ID if t1c else DEFAULT_T2_ID, name=DEFAULT_NAME if t1c else DEFAULT_T2_NAME,
        empty=f"no {KIND} cases under {root}: expected folders vs_gk_N/ holding vs_gk_{{t1_refT1,seg_refT1}}.nii.gz "
              f"or vs_gk_{{t2_refT2,seg_refT2}}.nii.gz (VS_Seg data_conversion.py), or the BIDS export (sub-N/anat/, "
              f"{MASKS.format('T1w')}/).",
        channels=(["T1ce"] + (["T2"] if with_t2 else [])) if t1c else ["T2"],
        description=("Vestibular-Schwannoma-SEG (TCIA): contrast-enhanced T1 with the tumour mask in ceT1 space"
                     + (", plus T2 registered to ceT1 with the release's transforms" if with_t2 else "")
                     if t1c else "Vestibular-Schwannoma-SEG (TCIA): high-resolution T2 with the tumour mask "
                                 "in T2 space") + ".",
        conversion={"sequence": sequence, "with_t2": bool(with_t2)})


RELEASE = Release(
    kind="vsseg", title=KIND, output=SEGMENTATION, plan=plan, default_id=DEFAULT_ID, default_name=DEFAULT_NAME,
    default_id_help=f"{DEFAULT_ID}; {DEFAULT_T2_ID} with --sequence t2",
    help="Vestibular-Schwannoma-SEG as NIfTI (VS_Seg scripts: vs_gk_N/vs_gk_{t1,seg}_refT1.nii.gz, "
         "or their BIDS export); ceT1 or T2 with its own mask",
    settings=(
        Setting("sequence", "t1c", ("--sequence",), f"t1c: ceT1 with its mask (default, id {DEFAULT_ID}); t2: T2 "
                f"with its own mask, a T2-only dataset (id {DEFAULT_T2_ID})", cli={"choices": SEQUENCES}),
        Setting("with_t2", False, ("--with-t2",), "add the T2 registered to ceT1 by the release's transforms "
                "(vs_gk_t2_refT1 or BIDS derivatives/T2w_registered_to_T1w) as channel 1",
                cli={"action": "store_true"})),
    labels=LABELS, reference="https://doi.org/10.7937/TCIA.9YTJ-5Q73 ; Shapey et al., Sci Data 2021",
    licence="CC-BY 4.0 (TCIA)")
convert = RELEASE.convert
