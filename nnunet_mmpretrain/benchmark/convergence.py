"""Did a cell's fine-tuning converge? Read from nnU-Net's own training log.

nnU-Net prints, per epoch, ``Epoch N`` and ``Pseudo dice [d_1, ..., d_K]`` (the foreground Dice
of each class on the epoch's validation batches). Their mean per epoch is noisy, and nnU-Net's
moving average (0.9 / 0.1) lags by about ten epochs, so short schedules are judged on plain
means instead: the *late gain* is the mean over the last quarter of the epochs minus the mean
over the quarter before. A schedule is long enough for a method when it is near 0.

Example::

    curve = mean_pseudo_dice([open(p).read() for p in sorted(glob.glob(f"{fold}/training_log_*.txt"))])
    late_gain(curve)        # e.g. 0.12: still rising by 12 Dice points when training stopped
"""
from __future__ import annotations

import glob
import math
import os
import re
from typing import Dict, List, Optional, Sequence

from nnunet_mmpretrain.benchmark.stats import mean_std

_EPOCH = re.compile(r": Epoch (\d+)\s*$")
_DICE = re.compile(r": Pseudo dice \[(.*)\]\s*$")


def pseudo_dice(log_texts: Sequence[str]) -> Dict[int, List[float]]:
    """Per epoch, the last printed pseudo Dice per class (a resumed run's repeat wins)."""
    out: Dict[int, List[float]] = {}
    for text in log_texts:
        epoch: Optional[int] = None
        for line in text.splitlines():
            m = _EPOCH.search(line)
            if m:
                epoch = int(m.group(1))
                continue
            m = _DICE.search(line)
            if m and epoch is not None:
                inner = re.sub(r"np\.float\d+\(|\)", "", m.group(1))     # numpy >= 2 prints np.float32(x)
                try:
                    out[epoch] = [float(x) for x in inner.split(",") if x.strip()]
                except ValueError:
                    continue                                              # a line we do not understand
    return out


def mean_pseudo_dice(log_texts: Sequence[str]) -> List[float]:
    """Mean pseudo Dice over the classes (NaN classes left out), epoch 0 .. last logged epoch;
    an epoch without a line repeats the previous value."""
    per_epoch = pseudo_dice(log_texts)
    curve: List[float] = []
    for e in range(max(per_epoch) + 1 if per_epoch else 0):
        vals = [v for v in per_epoch.get(e, []) if not math.isnan(v)]
        curve.append(sum(vals) / len(vals) if vals else (curve[-1] if curve else float("nan")))
    return curve


def late_gain(curve: Sequence[float], fraction: float = 0.25) -> float:
    """Mean of the last ``fraction`` of ``curve`` minus the mean of the ``fraction`` before it
    (NaN for fewer than 8 epochs)."""
    q = int(round(fraction * len(curve)))
    if len(curve) < 8 or q < 2:
        return float("nan")
    last, before = curve[-q:], curve[-2 * q:-q]
    return float(sum(last) / q - sum(before) / q)


def cell_curve(cell_dir: str, fold: int) -> List[float]:
    """The per-epoch mean pseudo Dice of a finished segmentation cell (empty without a log)."""
    logs = sorted(glob.glob(os.path.join(cell_dir, "nnUNet_results", "*", "*", f"fold_{fold}", "training_log_*.txt")))
    texts = []
    for p in logs:
        with open(p, errors="replace") as f:
            texts.append(f.read())
    return mean_pseudo_dice(texts)


CONVERGENCE_COLUMNS = ["dataset", "labels", "method", "epochs", "runs", "late_gain_mean", "late_gain_std", "rising_runs"]


def convergence(suite: dict, cells: List[dict]) -> List[dict]:
    """Per (dataset, labels, method): the late gain over runs (Dice points) and how many runs
    were still rising by more than 2 points (segmentation cells with a training log)."""
    groups: Dict[tuple, List[float]] = {}
    order = list(suite["methods"])
    for c in cells:
        if not math.isnan(c.get("late_gain", float("nan"))):
            key = (c["dataset"], c["budget"]["label"], c["method"], c.get("schedule", {}).get("epochs", 0))
            groups.setdefault(key, []).append(c["late_gain"])
    rows = []
    for (ds, labels, m, ep), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2])
                                                                          if kv[0][2] in order else 99)):
        mean, std = mean_std(g)
        rows.append({"dataset": ds, "labels": labels, "method": m, "epochs": ep, "runs": len(g), "late_gain_mean": mean,
                     "late_gain_std": std, "rising_runs": sum(x > 2.0 for x in g)})
    return rows
