"""The benchmark's controls: the share of a positive control's gain a method captures, and
whether a testbed can tell encoders apart at all (positive control vs frozen random encoder).

A suite names its controls (``"controls": {"positive": METHOD, "random": METHOD, "min_gap": 5}``):
the *positive* control is an encoder trained with labels on a disjoint pool, frozen like the
pretrained ones; the *random* control is the same stages frozen at random initialisation.
"""
from __future__ import annotations

import math
from typing import Dict, List

from nnunet_mmpretrain.benchmark.stats import fmt_num as _fmt, fmt_p as _p, mean_std, paired


def groups_of(cells: List[dict]) -> Dict[tuple, Dict[str, dict]]:
    """(dataset, evaluation, budget tag, method) -> {"cell", "runs": (fold, seed) -> region -> score,
    "cases": (fold, seed) -> region -> case -> score}."""
    groups: Dict[tuple, Dict[str, dict]] = {}
    for c in cells:
        for ev, (run, cases) in c["scores"].items():
            key = (c["dataset"], ev, c["budget"]["tag"], c["method"])
            g = groups.setdefault(key, {"cell": c, "runs": {}, "cases": {}})
            g["runs"][(c["fold"], c["seed"])] = run
            g["cases"][(c["fold"], c["seed"])] = cases
    return groups


def mean_of(g: dict, reg: str) -> float:
    return mean_std([r.get(reg, float("nan")) for r in g["runs"].values()])[0] if g else float("nan")


def share_of_control(value: float, random: float, positive: float) -> float:
    """(value - random) / (positive - random): the share of the positive control's gain over the
    frozen random encoder that a method captures (1 = all of it, 0 = none, < 0 = worse than random);
    NaN when the controls do not differ."""
    gap = positive - random
    return float("nan") if any(math.isnan(x) for x in (value, gap)) or abs(gap) < 1e-9 else (value - random) / gap


def validity(suite: dict, cells: List[dict]) -> List[dict]:
    """Per (dataset, evaluation, labels): does the frozen positive control beat the frozen random
    encoder by ``controls.min_gap`` Dice (region 'mean'), paired over >= 10 runs (5 folds x 2
    seeds)? The testbed ranks nothing where it does not."""
    ctl = suite.get("controls")
    if not ctl:
        return []
    groups, out = groups_of(cells), []
    for (ds, ev, tag, m), g in sorted(groups.items()):
        other = groups.get((ds, ev, tag, ctl["random"]))
        if m != ctl["positive"] or other is None:
            continue
        reg = "accuracy" if g["cell"].get("task") == "classification" else "mean"
        q = paired({k: v.get(reg, {}) for k, v in g["cases"].items()}, {k: v.get(reg, {}) for k, v in other["cases"].items()})
        gap = float(ctl.get("min_gap", 5.0))
        out.append({"dataset": ds, "evaluation": ev, "labels": g["cell"]["budget"]["label"], "positive": m,
                    "random": ctl["random"], "delta": q.delta, "p": q.p, "ci_low": q.ci_low, "ci_high": q.ci_high,
                    "n_runs": q.n_runs, "min_gap": gap,
                    "valid": bool(q.n_runs >= 10 and not math.isnan(q.delta) and q.delta >= gap)})
    return out


def validity_lines(valid: List[dict]) -> List[str]:
    """The testbed validity section (positive control vs frozen random encoder)."""
    if not valid:
        return []
    md = ["## Can this testbed tell encoders apart? (controls)", "",
          "The positive control (an encoder trained with labels on a disjoint pool, stages frozen) must beat the "
          "frozen random encoder by the suite's minimum gap, paired over at least 10 runs (5 folds x 2 seeds), before "
          "any self-supervised result on the same rows counts.", ""]
    for v in valid:
        verdict = "VALID" if v["valid"] else "NOT VALID"
        md.append(f"- {v['evaluation']}, {v['labels']}: {v['positive']} vs {v['random']}: Δ {_fmt(v['delta'], 1)} Dice "
                  f"(p {_p(v['p'])}, 95 % CI [{_fmt(v['ci_low'], 1)}, {_fmt(v['ci_high'], 1)}], {v['n_runs']} paired "
                  f"runs; needs >= {v['min_gap']:g} over >= 10 runs): **{verdict}**")
    return md + [""]
