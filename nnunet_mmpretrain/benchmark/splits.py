"""Patient-level cross-validation splits and reproducible label-budget subsampling.

* A *patient* groups the cases of one person: BraTS 2023 ids ``BraTS-GLI-00001-000`` and
  ``BraTS-GLI-00001-001`` are two time points of patient ``BraTS-GLI-00001``. The default rule
  (:data:`DEFAULT_PATIENT_REGEX`) handles the BraTS 2023 naming; a suite can give its own regex per
  dataset (its first group is the patient id; a case that does not match is its own patient).
* :func:`kfold` deals the patients (shuffled once with the suite's ``split_seed``) into K folds,
  so no patient straddles the training and validation side.
* :func:`subsample` keeps a label budget of the fold's *training* patients (validation untouched).
  The order depends on (dataset, fold, seed) only, so budgets are nested (20 % within 40 % within
  100 %) and every method of a paired comparison sees the same cases.

A split file is ``{"train": [case ids], "val": [case ids], "patients": {...}, ...}`` (JSON);
:func:`file_sha256` is what the leaderboard lists beside the results.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np


DEFAULT_PATIENT_REGEX = r"^(BraTS[-_][A-Za-z]+[-_]\d+)[-_]\d{3}$"


def patient_of(case_id: str, regex: Optional[str] = None) -> str:
    """The patient id of ``case_id`` (the regex's first group; the case id when it does not match)."""
    m = re.match(regex or DEFAULT_PATIENT_REGEX, case_id)
    return m.group(1) if m else case_id


def group_by_patient(case_ids: Iterable[str], regex: Optional[str] = None) -> Dict[str, List[str]]:
    """patient id -> sorted case ids, patients in sorted order."""
    out: Dict[str, List[str]] = {}
    for c in sorted(case_ids):
        out.setdefault(patient_of(c, regex), []).append(c)
    return dict(sorted(out.items()))


def kfold(case_ids: Sequence[str], num_folds: int, regex: Optional[str] = None, seed: int = 12345) -> List[dict]:
    """``num_folds`` patient-level folds: ``[{"train": [...], "val": [...]}, ...]`` (sorted ids).

    Raises ValueError when there are fewer patients than folds.
    """
    groups = group_by_patient(case_ids, regex)
    patients = list(groups)
    if len(patients) < num_folds:
        raise ValueError(f"{len(patients)} patients cannot fill {num_folds} folds; lower num_folds")
    order = np.random.RandomState(seed).permutation(len(patients))
    folds: List[List[str]] = [[] for _ in range(num_folds)]
    for pos, idx in enumerate(order):
        folds[pos % num_folds].append(patients[idx])
    out = []
    for k in range(num_folds):
        val_p = set(folds[k])
        out.append({"train": sorted(c for p in patients if p not in val_p for c in groups[p]),
                    "val": sorted(c for p in folds[k] for c in groups[p])})
    return out


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()[:4], "little")


def subsample(train_cases: Sequence[str], kind: str, value: float, dataset: int, fold: int, seed: int,
              regex: Optional[str] = None) -> List[str]:
    """The labelled training cases of one cell (sorted).

    ``kind`` ``"fraction"``: ``max(1, round(value * patients))`` patients; ``"cases"``: patients are
    added until at least ``value`` cases are in (all of them when there are fewer). Patients come
    in an order drawn from (dataset, fold, seed), the same for every budget and method.
    """
    groups = group_by_patient(train_cases, regex)
    patients = list(groups)
    order = [patients[i] for i in np.random.RandomState(_seed_of("budget", dataset, fold, seed)).permutation(len(patients))]
    if kind == "fraction":
        if not 0 < value <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {value}")
        chosen = order[:max(1, int(math.floor(value * len(patients) + 0.5)))]
    elif kind == "cases":
        chosen, n = [], 0
        for p in order:
            if n >= value:
                break
            chosen.append(p)
            n += len(groups[p])
    else:
        raise ValueError(f"unknown label budget kind {kind!r}")
    return sorted(c for p in chosen for c in groups[p])


def cell_split(case_ids: Sequence[str], num_folds: int, fold: int, kind: str, value: float, dataset: int, seed: int,
               regex: Optional[str] = None, split_seed: int = 12345) -> dict:
    """The split file content of one cell: fold ``fold`` of :func:`kfold`, training side subsampled."""
    base = kfold(case_ids, num_folds, regex, split_seed)[fold]
    train = subsample(base["train"], kind, value, dataset, fold, seed, regex)
    return {"train": train, "val": base["val"], "fold": fold, "num_folds": num_folds, "seed": seed,
            "label_budget": {"kind": kind, "value": value}, "all_train": base["train"],
            "patients": {p: cs for p, cs in group_by_patient(list(train) + list(base["val"]), regex).items()}}


def check_patient_disjoint(split: dict, regex: Optional[str] = None) -> None:
    """Raise ValueError when a patient has cases on both sides of ``split``."""
    tr = {patient_of(c, regex) for c in split["train"]}
    both = sorted(tr & {patient_of(c, regex) for c in split["val"]})
    if both:
        raise ValueError(f"patients on both sides of the split: {', '.join(both)}")


def split_bytes(split: dict) -> bytes:
    """Canonical JSON bytes (what is written, so the file hash is reproducible)."""
    return (json.dumps(split, indent=1, sort_keys=True) + "\n").encode()
