"""ISLES 2022 (ischemic stroke lesion segmentation) -> nnU-Net raw dataset.

Release layouts (BIDS; subject folders directly in ``RELEASE_ROOT`` or in ``RELEASE_ROOT/rawdata``).
The Zenodo archive::

    sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz   (b=1000 trace)
    sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_adc.nii.gz
    sub-strokecaseXXXX/ses-0001/anat/sub-strokecaseXXXX_ses-0001_FLAIR.nii.gz
    derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz

and the flat layout of the organisers' README (no ``dwi/`` / ``anat/`` folders, lower-case
``flair``)::

    rawdata/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_{dwi,adc,flair}.nii.gz

File suffixes are matched without regard to case, in the BIDS sub-folder first, then in the
session folder itself.

The lesion masks live on the DWI grid, so DWI is the reference. The FLAIR was acquired on its own
grid and, as the organisers state, must be *registered* to the DWI before the masks apply to it:
by default it is rigidly registered onto the DWI (SimpleITK, Mattes mutual information, see
:mod:`~nnunet_mmpretrain.conversion.registration`) and resampled there (linear, 0 outside its
field of view). The metrics of every registration are reported per case (summary, log and
``registration.csv`` in the dataset folder); a case whose registration fails the sanity check is
skipped with the numbers in its reason, never written. ``register=False`` (``--no-register``)
resamples the FLAIR by scanner coordinates only. An ADC (computed from the DWI acquisition) that
is not on the DWI grid is resampled by scanner coordinates.
Channels (default): 0 DWI, 1 ADC, 2 FLAIR. Labels: 0 background, 1 lesion.
Case ids are the subject ids (``sub-strokecase0001``), with ``_ses-XXXX`` appended only when a
subject has several sessions (those are grouped by subject in ``patients.json`` and the folds of
``splits_final.json``, :mod:`nnunet_mmpretrain.subjects`).
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Sequence

from nnunet_mmpretrain import labels, modalities as mod
from nnunet_mmpretrain.conversion import registration as reg
from nnunet_mmpretrain.conversion.common import (
    SEGMENTATION, CaseSpec, ConversionError, ConversionSummary, ConvertOptions, ImageSpec, LabelSpec, Plan, Release,
    Setting, display, find_dirs_containing, missing_files_problem, seg_image_dst, seg_label_dst, visible)

KIND = "ISLES 2022"
SUB_RE = re.compile(r"sub-strokecase\d+")
LABELS = labels.convention("isles2022")
LABEL_MAP = dict(LABELS.mapping)
#: canonical modality -> (BIDS folder, file suffix)
FILES = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
DEFAULT_CHANNELS = ("dwi", "adc", "flair")


def _one(pattern: str) -> Optional[str]:
    hits = sorted(p for p in glob.glob(pattern) if visible(os.path.basename(p)))
    return hits[0] if hits else None


def modality_file(session_dir: str, sub_folder: str, suffix: str) -> Optional[str]:
    """The ``*_<suffix>.nii[.gz]`` file (suffix in any case) in ``session_dir/sub_folder`` (Zenodo
    layout) or, failing that, in ``session_dir`` itself (the README's flat layout)."""
    want = re.compile(rf".*_{re.escape(suffix)}\.nii(\.gz)?", re.IGNORECASE)
    for d in (os.path.join(session_dir, sub_folder), session_dir):
        if os.path.isdir(d):
            hits = sorted(f for f in os.listdir(d) if visible(f) and want.fullmatch(f)
                          and os.path.isfile(os.path.join(d, f)))
            if hits:
                return os.path.join(d, hits[0])
    return None


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
    """The ``derivatives/`` folder holding the lesion masks."""
    for cand in (os.path.join(subjects, "derivatives"), os.path.join(os.path.dirname(subjects), "derivatives"),
                 os.path.join(root, "derivatives")):
        if os.path.isdir(cand):
            return cand
    raise ConversionError(f"no derivatives/ folder with the lesion masks next to {subjects}.")


def build_specs(root: str, channels: Sequence[str] = DEFAULT_CHANNELS,
                registration: Optional[reg.RegistrationSettings] = reg.RegistrationSettings()) -> List[CaseSpec]:
    """``registration``: settings for registering the FLAIR onto the DWI, None for none."""
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
            spec = CaseSpec(case_id=cid, info={"subject": sub, "session": ses, "patient": sub, "timepoint": ses})
            for i, m in enumerate(channels):
                sub_folder, suffix = FILES[m]
                expected = os.path.join(sdir, ses, sub_folder, f"{sub}_{ses}_{suffix}.nii.gz")
                found = modality_file(os.path.join(sdir, ses), sub_folder, suffix)
                files[f"{display(m)} image"] = (found, expected)
                spec.images.append(ImageSpec(src=found or expected, dst=seg_image_dst(cid, i),
                                             on_mismatch="skip" if i == 0 else "resample",
                                             what=f"{display(m)} image",
                                             register=registration if m == "flair" else None))
            expected = os.path.join(deriv, sub, ses, f"{sub}_{ses}_msk.nii.gz")
            found = _one(os.path.join(deriv, sub, ses, "*_msk.nii*")) or _one(os.path.join(deriv, sub, ses, "*", "*_msk.nii*"))
            files["lesion mask"] = (found, expected)
            spec.label = LabelSpec.of(found or expected, seg_label_dst(cid), LABELS)
            spec.problem = missing_files_problem(files)
            specs.append(spec)
    return specs


def plan(root: str, channels: Sequence[str] = DEFAULT_CHANNELS, register: bool = True,
         min_coverage: Optional[float] = None) -> Plan:
    """Discovery and dataset.json content of ISLES 2022. ``channels``: any ordered subset of dwi,
    adc, flair starting with dwi (the mask's grid). ``register``: rigid registration of the FLAIR
    onto the DWI (default) or scanner coordinates only; ``min_coverage``: the sanity check's
    minimum share of the DWI foreground inside the registered FLAIR's foreground (default 0.8)."""
    chans = [mod.canonical(c) for c in channels]
    if not chans or chans[0] != "dwi" or len(set(chans)) != len(chans) or any(c not in FILES for c in chans):
        raise ConversionError(f"ISLES 2022 channels must be distinct names from dwi, adc, flair, "
                              f"starting with dwi (the lesion masks' grid); got {list(channels)}.")
    settings = reg.RegistrationSettings()
    if min_coverage is not None:
        if not 0.0 <= min_coverage <= 1.0:
            raise ConversionError(f"the minimum foreground coverage is a fraction in [0, 1], got {min_coverage}.")
        settings = reg.RegistrationSettings(min_coverage=float(min_coverage))
    return Plan(
        build_specs(root, chans, settings if register else None), empty=f"no {KIND} cases under {root}.",
        channels=[display(m) for m in chans],
        description="ISLES 2022 stroke lesions; DWI (b=1000) is the reference grid; FLAIR "
                    + ("rigidly registered onto the DWI (Mattes MI) and resampled there"
                       if register else "resampled into DWI space by scanner coordinates (no registration)")
                    + "; an ADC off the DWI grid resampled by scanner coordinates.",
        conversion={"reference_grid": "DWI",
                    "flair": ({"registration": "rigid (Euler 3D), Mattes mutual information, SimpleITK",
                               "metrics": reg.TABLE_NAME, "min_coverage": settings.min_coverage}
                              if register else "scanner coordinates, no registration")},
        finish=write_registration_table)


def write_registration_table(summary: ConversionSummary, folder: str, options: ConvertOptions) -> None:
    """``registration.csv`` in the dataset folder: the registration metrics of the finished cases."""
    if not options.dry_run and os.path.isdir(folder):
        finished = set(summary.converted) | set(summary.already_done)
        table = reg.write_table(folder, summary.case_info, finished)
        if table:
            summary.notes.append(f"registration metrics per case: {table}")


def _channel_list(text: str) -> List[str]:
    """``--channels dwi,adc`` -> ['dwi', 'adc']."""
    return [c.strip() for c in text.split(",") if c.strip()]


RELEASE = Release(
    kind="isles2022", title=KIND, output=SEGMENTATION, plan=plan, default_id=528, default_name="ISLES2022",
    help="ISLES 2022 (BIDS): DWI, ADC and the FLAIR rigidly registered onto the DWI (Mattes MI; "
         "--no-register: scanner coordinates); lesion masks",
    settings=(
        Setting("channels", DEFAULT_CHANNELS, ("--channels",),
                "comma-separated channels, DWI first (default dwi,adc,flair)",
                cli={"default": ",".join(DEFAULT_CHANNELS)}, parse=_channel_list),
        Setting("register", True, ("--no-register",), "resample the FLAIR into DWI space by scanner coordinates "
                "only (default: rigid registration onto the DWI, Mattes MI)", cli={"action": "store_false"}),
        Setting("min_coverage", None, ("--min-coverage",), "sanity check: minimum share of the DWI foreground "
                "inside the registered FLAIR's foreground (default 0.8)", cli={"type": float, "metavar": "FRACTION"})),
    labels=LABELS, reference="https://isles22.grand-challenge.org ; Hernandez Petzsche et al., Sci Data 2022",
    licence="CC-BY 4.0")
convert = RELEASE.convert
