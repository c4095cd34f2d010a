"""Patients across timepoints: one person is one subject, whatever the number of scans.

Releases with follow-up exams (BraTS 2023 GLI ``-001``, BraTS 2024 GLI ``-100`` ... ``-10X``,
UPENN-GBM ``_21``, ISLES sessions) hold several cases per patient. A converter records, for every
case, its patient and timepoint in ``patients.json`` beside ``dataset.json``::

    {"cases": {"BraTS-GLI-00005-100": {"patient": "BraTS-GLI-00005", "timepoint": "100"}, ...}}

and, when some patient has several cases, a patient-grouped ``splits_final.json`` (nnU-Net's own
format, a list of ``{"train": [...], "val": [...]}``) in the raw dataset folder. nnU-Net reads the
splits from ``nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json``; that folder does not exist
before planning, so :func:`place_splits` copies the file there -- at conversion time when
``nnUNet_preprocessed`` is set (nnU-Net's planning and preprocessing keep the file), and again
from our planning step when it is missing. A split file already there that keeps every patient on
one side is left alone; one that splits a patient (nnU-Net's random case-level default) is moved
aside (``splits_final.json.case-level``) and replaced.

Folds deal whole patients (sorted, shuffled once with ``seed``) round-robin into ``n`` folds,
the same rule as the benchmark's splits.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_write_json

PATIENTS_FILE = "patients.json"
SPLITS_FILE = "splits_final.json"
#: nnU-Net's default number of folds and split seed
NUM_FOLDS = 5
SEED = 12345


def groups(patients: Mapping[str, str]) -> Dict[str, List[str]]:
    """patient -> sorted case ids, patients sorted (``patients``: case id -> patient)."""
    out: Dict[str, List[str]] = {}
    for case in sorted(patients):
        out.setdefault(patients[case], []).append(case)
    return dict(sorted(out.items()))


def patient_folds(patients: Mapping[str, str], num_folds: int = NUM_FOLDS, seed: int = SEED) -> List[dict]:
    """``min(num_folds, number of patients)`` folds that never split a patient:
    ``[{"train": [...], "val": [...]}, ...]`` (sorted case ids). ValueError below two patients."""
    g = groups(patients)
    names = list(g)
    if len(names) < 2:
        raise ValueError(f"{len(names)} patient(s) cannot be split into folds")
    k = min(num_folds, len(names))
    folds: List[List[str]] = [[] for _ in range(k)]
    for pos, idx in enumerate(np.random.RandomState(seed).permutation(len(names))):
        folds[pos % k].append(names[idx])
    out = []
    for val in folds:
        vs = set(val)
        out.append({"train": sorted(c for p in names if p not in vs for c in g[p]),
                    "val": sorted(c for p in val for c in g[p])})
    return out


def split_patients(splits: Sequence[dict], patients: Mapping[str, str]) -> List[str]:
    """Patients whose cases lie on both sides of some fold (empty: the splits are patient-safe)."""
    bad = set()
    for fold in splits:
        train = {patients.get(c, c) for c in fold.get("train", [])}
        val = {patients.get(c, c) for c in fold.get("val", [])}
        bad |= train & val
    return sorted(bad)


def write_patient_files(folder: str, cases: Mapping[str, Mapping[str, str]]) -> Optional[str]:
    """``patients.json`` (every case's patient and timepoint) and, when a patient has several cases,
    ``splits_final.json`` in the raw dataset ``folder``. Returns the splits file or None."""
    atomic_write_json({"cases": {c: dict(v) for c, v in sorted(cases.items())}}, os.path.join(folder, PATIENTS_FILE))
    patients = {c: v["patient"] for c, v in cases.items()}
    if len(groups(patients)) == len(patients) or len(groups(patients)) < 2:
        return None
    path = os.path.join(folder, SPLITS_FILE)
    atomic_write_json(patient_folds(patients), path)
    return path


def read_patients(raw_folder: str) -> Dict[str, str]:
    """case id -> patient from ``patients.json`` ({} when the file is missing)."""
    p = os.path.join(raw_folder, PATIENTS_FILE)
    if not os.path.isfile(p):
        return {}
    with open(p) as f:
        return {c: v["patient"] for c, v in json.load(f)["cases"].items()}


def place_splits(raw_folder: str, preprocessed_folder: str) -> Optional[str]:
    """Copy the raw dataset's patient-grouped ``splits_final.json`` where nnU-Net reads it. Returns
    a line saying what was done (None when the raw folder has no split file)."""
    src = os.path.join(raw_folder, SPLITS_FILE)
    if not os.path.isfile(src):
        return None
    with open(src) as f:
        ours = json.load(f)
    dst = os.path.join(preprocessed_folder, SPLITS_FILE)
    if os.path.isfile(dst):
        try:
            with open(dst) as f:
                theirs = json.load(f)
        except (OSError, ValueError):
            theirs = None
        if theirs == ours:
            return f"patient-grouped folds already in {dst}"
        if isinstance(theirs, list) and all(isinstance(x, dict) for x in theirs) \
                and not split_patients(theirs, read_patients(raw_folder)):
            return f"{dst} (kept) already keeps every patient on one side"
        os.replace(dst, dst + ".case-level")
        atomic_write_json(ours, dst)
        return (f"{dst} split patients across folds: moved to {os.path.basename(dst)}.case-level and "
                f"replaced by the patient-grouped folds")
    os.makedirs(preprocessed_folder, exist_ok=True)
    atomic_write_json(ours, dst)
    return f"patient-grouped folds written to {dst} (plain nnUNetv2_train uses them)"
