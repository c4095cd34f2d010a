"""Classification metrics (every number from :mod:`sklearn.metrics`), the per-fold
``summary.json`` with its per-case probabilities, and the cross-validation summary.

Per fold (``fold_X/`` of an nnU-Net results folder)::

    summary.json                  see SUMMARY_KEYS / METRIC_KEYS
    validation_probabilities.csv  case,label,prediction,prob_0,...,prob_{K-1}

Cross-validation (``cv_summary.json`` beside the folds): for each metric the per-fold values,
their mean and standard deviation (sample std, ddof=1; 0 for a single fold), and the metrics of
all validation cases pooled.

Inputs: ``y_true`` int array (N,), ``probs`` float array (N, K) of class probabilities (rows sum
to 1); the prediction is ``probs.argmax(1)``.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "nnunet_mmpretrain.classification.summary/1"
CV_FORMAT = "nnunet_mmpretrain.classification.cv_summary/1"
#: scalar metrics, in the order tables print them
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
METRIC_KEYS = SCALAR_METRICS + ("roc_auc_note", "confusion_matrix", "per_class")
SUMMARY_KEYS = ("format", "dataset", "trainer", "plans", "configuration", "fold", "checkpoint", "classes",
                "num_cases", "class_counts", "input_size", "metrics")
CV_KEYS = ("format", "dataset", "trainer", "plans", "configuration", "folds", "classes", "num_cases",
           "per_fold", "mean", "std", "pooled", "std_note")
PROB_FILE = "validation_probabilities.csv"
SUMMARY_FILE = "summary.json"
CV_FILE = "cv_summary.json"


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, num_classes: Optional[int] = None) -> dict:
    """Accuracy, balanced accuracy, macro F1, ROC AUC (binary: of class 1; more classes: one-vs-rest,
    macro), confusion matrix (rows = true class, columns = predicted) and per-class precision /
    recall / F1 / support, all from sklearn. AUC is None (with ``roc_auc_note``) when the cases
    hold a single class, where it is undefined."""
    with warnings.catch_warnings():      # sklearn warns about classes absent from a small fold
        warnings.simplefilter("ignore", UserWarning)
        return _metrics(np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float), num_classes)


def _metrics(y: np.ndarray, p: np.ndarray, num_classes: Optional[int]) -> dict:
    k = int(num_classes or p.shape[1])
    labels = list(range(k))
    pred = p.argmax(1)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "roc_auc": None,
        "roc_auc_note": "",
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": {str(c): {"precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]),
                               "support": int(sup[c])} for c in labels},
    }
    present = np.unique(y)
    if len(present) < 2:
        out["roc_auc_note"] = "undefined: the cases hold a single class"
    elif k == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]))
    elif len(present) < k:
        out["roc_auc_note"] = f"one-vs-rest over the {len(present)} classes present"
        sub = p[:, present] / np.clip(p[:, present].sum(1, keepdims=True), 1e-12, None)
        out["roc_auc"] = float(skm.roc_auc_score(y, sub, multi_class="ovr", labels=list(present)))
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y, p, multi_class="ovr", labels=labels))
        out["roc_auc_note"] = "one-vs-rest, macro"
    return out


# ------------------------------------------------------------------ per fold
def write_probabilities(path: str, cases: Sequence[str], y_true: Sequence[int], probs: np.ndarray) -> None:
    k = probs.shape[1]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "label", "prediction"] + [f"prob_{c}" for c in range(k)])
        for c, y, p in zip(cases, y_true, probs):
            w.writerow([c, int(y), int(np.argmax(p))] + [f"{float(v):.6f}" for v in p])


def read_probabilities(path: str):
    """(cases list, y_true (N,), probs (N, K)) from a ``validation_probabilities.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    k = len([c for c in (rows[0].keys() if rows else []) if c.startswith("prob_")])
    cases = [r["case"] for r in rows]
    y = np.array([int(r["label"]) for r in rows], dtype=int)
    p = np.array([[float(r[f"prob_{c}"]) for c in range(k)] for r in rows], dtype=float).reshape(len(rows), k)
    return cases, y, p


def write_fold_summary(fold_dir: str, cases: Sequence[str], y_true: Sequence[int], probs: np.ndarray,
                       class_names: Mapping[int, str], info: Mapping) -> dict:
    """Write ``summary.json`` and ``validation_probabilities.csv`` in ``fold_dir``; returns the summary.
    ``info``: dataset, trainer, plans, configuration, fold, checkpoint, input_size."""
    probs = np.asarray(probs, dtype=float)
    k = len(class_names)
    y = np.asarray(y_true, dtype=int)
    summary = {
        "format": FORMAT,
        **{key: info.get(key) for key in ("dataset", "trainer", "plans", "configuration", "fold", "checkpoint")},
        "classes": {str(c): class_names[c] for c in sorted(class_names)},
        "num_cases": int(len(y)),
        "class_counts": {str(c): int((y == c).sum()) for c in range(k)},
        "input_size": [int(s) for s in info.get("input_size") or []],
        "metrics": classification_metrics(y, probs, k),
    }
    os.makedirs(fold_dir, exist_ok=True)
    write_probabilities(os.path.join(fold_dir, PROB_FILE), cases, y, probs)
    atomic_write_json(summary, os.path.join(fold_dir, SUMMARY_FILE))
    return summary


# ------------------------------------------------------------------ cross-validation
def _fold_key(name: str):
    m = re.fullmatch(r"fold_(\d+)", name)
    return (0, int(m.group(1))) if m else (1, name)


def find_fold_summaries(trainer_dir: str, folds: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """{fold name: summary.json path} for ``fold_*`` folders (or the given folds) that have one."""
    if folds:
        names = [f if str(f).startswith("fold_") else f"fold_{f}" for f in folds]
    else:
        names = sorted((os.path.basename(d) for d in glob.glob(os.path.join(trainer_dir, "fold_*"))), key=_fold_key)
    return {n: os.path.join(trainer_dir, n, SUMMARY_FILE) for n in names
            if os.path.isfile(os.path.join(trainer_dir, n, SUMMARY_FILE))}


def cross_validation_summary(trainer_dir: str, folds: Optional[Sequence[str]] = None) -> dict:
    """Mean +- std over the folds' summaries, plus the pooled metrics of all their validation cases.
    ``fold_all`` (trained and validated on every case) is left out unless named in ``folds``."""
    found = find_fold_summaries(trainer_dir, folds)
    if not folds:
        found = {k: v for k, v in found.items() if k != "fold_all"}
    if not found:
        raise FileNotFoundError(f"no fold_*/summary.json under {trainer_dir}: train and validate folds with "
                                f"nnUNetv2_train first (or name them with -f).")
    sums = {k: json.load(open(v)) for k, v in found.items()}
    first = next(iter(sums.values()))
    classes = first["classes"]
    for k, s in sums.items():
        if s.get("classes") != classes:
            raise ValueError(f"{found[k]} has classes {s.get('classes')} but {next(iter(found.values()))} has "
                             f"{classes}: summarise folds of one training only.")
    per_fold = {m: {k: s["metrics"].get(m) for k, s in sums.items()} for m in SCALAR_METRICS}
    mean, std = {}, {}
    for m, vals in per_fold.items():
        v = np.array([x for x in vals.values() if x is not None], dtype=float)
        mean[m] = float(v.mean()) if len(v) else None
        std[m] = float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else None)
    pooled_cases: List[str] = []
    ys, ps = [], []
    for k in sums:
        path = os.path.join(trainer_dir, k, PROB_FILE)
        if os.path.isfile(path):
            c, y, p = read_probabilities(path)
            pooled_cases += c
            ys.append(y)
            ps.append(p)
    pooled = classification_metrics(np.concatenate(ys), np.concatenate(ps), len(classes)) if ys else None
    return {
        "format": CV_FORMAT,
        **{key: first.get(key) for key in ("dataset", "trainer", "plans", "configuration")},
        "folds": list(sums),
        "classes": classes,
        "num_cases": {k: s["num_cases"] for k, s in sums.items()},
        "per_fold": per_fold,
        "mean": mean,
        "std": std,
        "pooled": pooled,
        "std_note": "sample standard deviation over folds (ddof=1)",
    }


def format_cv_table(cv: dict) -> str:
    """Plain-text table: one line per metric, 'mean +- std' and the per-fold values."""
    lines = [f"{cv.get('trainer')} ({cv.get('plans')}, {cv.get('configuration')}), folds {', '.join(cv['folds'])}:"]
    for m in SCALAR_METRICS:
        mu, sd = cv["mean"][m], cv["std"][m]
        vals = ", ".join("-" if v is None else f"{v:.3f}" for v in cv["per_fold"][m].values())
        body = "n/a" if mu is None else f"{mu:.3f} +- {sd:.3f}"
        lines.append(f"  {m:<18} {body:<17} (folds: {vals})")
    if cv.get("pooled"):
        lines.append(f"  pooled confusion matrix (rows true, columns predicted): {cv['pooled']['confusion_matrix']}")
    return "\n".join(lines)
