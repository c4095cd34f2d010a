"""Statistics of the leaderboard: spread over runs, paired comparisons over cases.

* :func:`mean_std`: mean and sample standard deviation (ddof 1) of per-run scores (one run = one
  fold x seed); NaN std for a single run.
* :func:`paired`: method vs baseline on the same evaluation cases. Runs are paired by (fold, seed);
  per case the difference method - baseline is averaged over the paired runs, so every case counts
  once (repeated seeds of one case are not independent). On these per-case differences:
  the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped,
  exact distribution for small n as scipy chooses) and a percentile bootstrap 95 % confidence
  interval of the mean difference (:func:`bootstrap_ci`, seeded, so the leaderboard is
  reproducible).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Hashable, Sequence, Tuple

import numpy as np


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample std) ignoring NaN; (nan, nan) when empty, std nan for one value."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy). 1.0 when every
    difference is zero (no evidence of a difference), NaN when there are none."""
    from scipy.stats import wilcoxon
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def bootstrap_ci(diffs: Sequence[float], n_boot: int = 10000, confidence: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``diffs`` (resampling cases with
    replacement, ``n_boot`` resamples, seeded). (nan, nan) with fewer than 2 values."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


@dataclass
class Paired:
    n_cases: int           # evaluation cases with a paired difference
    n_runs: int            # (fold, seed) runs both methods finished
    delta: float           # mean over cases of (method - baseline)
    p: float               # Wilcoxon signed-rank, two-sided
    ci_low: float
    ci_high: float
    wins: int              # cases where the method is better
    losses: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired(method: Dict[Hashable, Dict[str, float]], baseline: Dict[Hashable, Dict[str, float]],
           n_boot: int = 10000, seed: int = 0) -> Paired:
    """Paired comparison. ``method`` / ``baseline``: run key (fold, seed) -> {case key: score}.

    Only runs both have, and cases both scored (not NaN), count.
    """
    per_case: Dict[Hashable, list] = {}
    runs = 0
    for run in sorted(set(method) & set(baseline), key=str):
        a, b = method[run], baseline[run]
        used = False
        for case in set(a) & set(b):
            x, y = a[case], b[case]
            if x is None or y is None or math.isnan(x) or math.isnan(y):
                continue
            per_case.setdefault(case, []).append(x - y)
            used = True
        runs += used
    d = np.asarray([np.mean(v) for _, v in sorted(per_case.items(), key=lambda kv: str(kv[0]))], dtype=float)
    if d.size == 0:
        nan = float("nan")
        return Paired(0, runs, nan, nan, nan, nan, 0, 0)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    return Paired(int(d.size), runs, float(d.mean()), wilcoxon_p(d), lo, hi, int((d > 0).sum()), int((d < 0).sum()))


def fmt_num(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def fmt_p(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")
