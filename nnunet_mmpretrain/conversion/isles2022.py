"""ISLES 2022 (ischemic stroke lesion segmentation) -> nnU-Net raw dataset.

Release layout (BIDS; subject folders directly in ``RELEASE_ROOT`` or in ``RELEASE_ROOT/rawdata``)::

    sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz   (b=1000 trace)
    sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_adc.nii.gz
    sub-strokecaseXXXX/ses-0001/anat/sub-strokecaseXXXX_ses-0001_FLAIR.nii.gz
    derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz

The lesion masks live on the DWI grid, so DWI is the reference: the FLAIR (acquired on its own
grid) is resampled into DWI space by physical coordinates with SimpleITK (linear interpolation,
0 outside the FLAIR field of view); an ADC that is not on the DWI grid is resampled the same way.
Channels (default): 0 DWI, 1 ADC, 2 FLAIR. Labels: 0 background, 1 lesion.
Case ids are the subject ids (``sub-strokecase0001``), with ``_ses-XXXX`` appended only when a
subject has several sessions.
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Sequence

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.conversion.common import (
    CaseSpec, ConversionError, ConversionSummary, DatasetInfo, ImageSpec, LabelSpec,
    convert_segmentation, dataset_folder, display, find_dirs_containing, missing_files_problem, require_root,
    seg_image_dst, seg_label_dst, visible)

KIND = "ISLES 2022"
DEFAULT_ID, DEFAULT_NAME = 528, "ISLES2022"
SUB_RE = re.compile(r"sub-strokecase\d+")
LABEL_MAP = {0: 0, 1: 1}
#: canonical modality -> (BIDS folder, file suffix)
FILES = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
DEFAULT_CHANNELS = ("dwi", "adc", "flair")


def _one(pattern: str) -> Optional[str]:
    hits = sorted(p for p in glob.glob(pattern) if visible(os.path.basename(p)))
    return hits[0] if hits else None


def subject_root(root: str) -> str:
    """The folder holding the ``sub-strokecase*`` folders (``root``, ``root/rawdata``, or up to
    three levels further down, e.g. ``root/ISLES-2022``)."""
    def has_subjects(p: str) -> bool:
        return os.path.basename(p) != "derivatives" and any(
            SUB_RE.fullmatch(d) and os.path.isdir(os.path.join(p, d)) for d in os.listdir(p))
    hits = [h for h in find_dirs_containing(root, has_subjects, max_depth=3)
            if "derivatives" not in os.path.relpath(h, root).split(os.sep)]
    if not hits:
        raise ConversionError(f"no {KIND} subjects under {root}: expected sub-strokecaseXXXX/ses-XXXX/"
                              f"{{dwi,anat}}/ folders (BIDS), directly or in rawdata/.")
    return hits[0]


def derivatives_root(root: str, subjects: str) -> str:
    for cand in (os.path.join(subjects, "derivatives"), os.path.join(os.path.dirname(subjects), "derivatives"),
                 os.path.join(root, "derivatives")):
        if os.path.isdir(cand):
            return cand
    raise ConversionError(f"no derivatives/ folder with the lesion masks next to {subjects}.")


def build_specs(root: str, channels: Sequence[str] = DEFAULT_CHANNELS) -> List[CaseSpec]:
    subjects = subject_root(root)
    deriv = derivatives_root(root, subjects)
    specs = []
    for sub in sorted(d for d in os.listdir(subjects) if SUB_RE.fullmatch(d)):
        sdir = os.path.join(subjects, sub)
        sessions = sorted(s for s in os.listdir(sdir) if s.startswith("ses-") and os.path.isdir(os.path.join(sdir, s)))
        if not sessions:
            specs.append(CaseSpec(case_id=sub, problem=f"no ses-* folder in {sdir}"))
            continue
        for ses in sessions:
            cid = sub if len(sessions) == 1 else f"{sub}_{ses}"
            files = {}
            spec = CaseSpec(case_id=cid, info={"subject": sub, "session": ses})
            for i, m in enumerate(channels):
                sub_folder, suffix = FILES[m]
                expected = os.path.join(sdir, ses, sub_folder, f"{sub}_{ses}_{suffix}.nii.gz")
                found = _one(os.path.join(sdir, ses, sub_folder, f"*_{suffix}.nii*"))
                files[f"{display(m)} image"] = (found, expected)
                spec.images.append(ImageSpec(src=found or expected, dst=seg_image_dst(cid, i),
                                             on_mismatch="skip" if i == 0 else "resample",
                                             what=f"{display(m)} image"))
            expected = os.path.join(deriv, sub, ses, f"{sub}_{ses}_msk.nii.gz")
            found = _one(os.path.join(deriv, sub, ses, "*_msk.nii*")) or _one(os.path.join(deriv, sub, ses, "*", "*_msk.nii*"))
            files["lesion mask"] = (found, expected)
            spec.label = LabelSpec(src=found or expected, dst=seg_label_dst(cid), mapping=LABEL_MAP, dataset=KIND)
            spec.problem = missing_files_problem(files)
            specs.append(spec)
    return specs


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, channels: Sequence[str] = DEFAULT_CHANNELS, link: bool = True,
            dry_run: bool = False, overwrite: bool = False, num_processes: int = 1,
            progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    """``channels``: any ordered subset of dwi, adc, flair starting with dwi (the mask's grid)."""
    chans = [mod.canonical(c) for c in channels]
    if not chans or chans[0] != "dwi" or len(set(chans)) != len(chans) or any(c not in FILES for c in chans):
        raise ConversionError(f"ISLES 2022 channels must be distinct names from dwi, adc, flair, "
                              f"starting with dwi (the lesion masks' grid); got {list(channels)}.")
    root = require_root(release_root, KIND)
    folder = dataset_folder(out_dir, dataset_id, name)
    specs = build_specs(root, chans)
    if not specs:
        raise ConversionError(f"no {KIND} cases under {root}.")
    info = DatasetInfo(
        channel_names=[display(m) for m in chans], labels={"background": 0, "lesion": 1},
        description="ISLES 2022 stroke lesions; DWI (b=1000) is the reference grid, FLAIR (and an "
                    "ADC off that grid) resampled into DWI space (linear, physical coordinates).",
        reference="https://isles22.grand-challenge.org ; Hernandez Petzsche et al., Sci Data 2022",
        licence="CC-BY 4.0",
        extra={"conversion": {"kind": "isles2022", "source": root, "reference_grid": "DWI",
                              "label_mapping_from_release": {"0": 0, "1": 1}}})
    return convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                num_processes=num_processes, progress=progress, print_summary=print_summary)
