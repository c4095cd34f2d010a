"""The leaderboard, regenerated from a benchmark output folder alone.

Reads ``OUT/suite.json`` (methods, regions, paper numbers), every finished cell
(``OUT/cells/*/cell.json`` + ``done.json``) and nnU-Net's own ``summary.json`` files (validation
of the fold = internal cross-validation ``cv``; ``test/summary.json`` = the official test cases),
and writes ``OUT/leaderboard/``:

* ``leaderboard.md``: per dataset and evaluation, one row per (labels, method, region): runs,
  Dice % mean +- std over runs (fold x seed), delta vs scratch, Wilcoxon p, bootstrap 95 % CI of
  the delta, cases, the paper's number where one exists; then the other paired comparisons
  (e.g. pretrained_frozen vs random_frozen), published numbers without a run, split file hashes.
* ``leaderboard.csv`` / ``comparisons.csv``: the same numbers, machine-readable (CSV columns in
  :data:`COLUMNS` / :data:`COMPARISON_COLUMNS`).
* ``label_efficiency.png``: mean Dice vs label budget, one line per method, error bars = std over
  runs; and the regions at the largest budget.
* ``splits.sha256``: ``sha256sum`` lines of the split files.
* ``convergence.csv`` (and a section of the Markdown): per (labels, method) the *late gain* of
  the fine-tuning (:mod:`.convergence`, from nnU-Net's training logs): a gain well above 0 says
  the schedule stopped while that method was still improving.

Task hook: :data:`METRIC_READERS` maps a task to a reader returning, per evaluation, the run's
score per region and the per-case scores. Classification cells are read from the classifier's
``fold_K/validation_probabilities.csv`` (columns ``case,label,prediction,prob_*``): accuracy in %,
region ``accuracy``, per case 100 (correct) or 0, so the paired test runs over per-case
correctness (a crude test for binary outcomes; the CI is the informative column there).
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
from typing import Dict, List, Tuple

import numpy as np

from nnunet_mmpretrain.benchmark.controls import groups_of, mean_of, share_of_control, validity, validity_lines
from nnunet_mmpretrain.benchmark.convergence import CONVERGENCE_COLUMNS, cell_curve, convergence, late_gain
from nnunet_mmpretrain.benchmark.stats import fmt_num as _fmt, fmt_p as _p, mean_std, paired
from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_text

log = logging.getLogger("nnunet_mmpretrain.benchmark")

COLUMNS = ["dataset", "dataset_name", "task", "evaluation", "labels", "budget", "method", "region", "runs", "mean",
           "std", "mean_pm_std", "delta_vs_scratch", "p_wilcoxon", "ci95_low", "ci95_high", "n_cases", "share_of_control",
           "paper", "paper_source"]
COMPARISON_COLUMNS = ["dataset", "evaluation", "labels", "method", "baseline", "region", "delta", "p_wilcoxon",
                      "ci95_low", "ci95_high", "n_cases", "n_runs", "wins", "losses"]
EVAL_NAMES = {"cv": "internal cross-validation (nnU-Net validation of each fold)",
              "test": "official test cases (imagesTs)",
              "cv-unseen": "cases of sites never trained on (unseen sites), scored by every fold's model"}

Scores = Tuple[Dict[str, float], Dict[str, Dict[str, float]]]   # region -> run score; region -> case -> score


def _case_of(path: str) -> str:
    b = os.path.basename(path)
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd", ".png", ".tif", ".tiff"):
        if b.endswith(ending):
            return b[: -len(ending)]
    return b.rsplit(".", 1)[0]


def read_nnunet_summary(path: str, regions: Dict[str, str]) -> Scores:
    """nnU-Net summary.json -> (region -> mean Dice %, region -> case -> Dice %); 'mean' is the
    foreground mean (per case: the mean over regions)."""
    with open(path) as f:
        s = json.load(f)
    name = lambda k: regions.get(k, k)  # noqa: E731
    run = {name(k): 100 * v["Dice"] for k, v in s["mean"].items()}
    run["mean"] = 100 * s["foreground_mean"]["Dice"]
    cases: Dict[str, Dict[str, float]] = {}
    for pc in s["metric_per_case"]:
        case = _case_of(pc["reference_file"])
        vals = []
        for k, m in pc["metrics"].items():
            d = m.get("Dice", float("nan"))
            d = float("nan") if d is None else 100 * d
            cases.setdefault(name(k), {})[case] = d
            vals.append(d)
        finite = [v for v in vals if not math.isnan(v)]
        cases.setdefault("mean", {})[case] = float(np.mean(finite)) if finite else float("nan")
    return run, cases


def split_unseen(scores: Scores, unseen_regex: str) -> Dict[str, Scores]:
    """One validation into ``cv`` (in-domain cases) and ``cv-unseen`` (case ids matching
    ``unseen_regex``); each run score = the mean over its cases (NaN cases left out)."""
    _, cases = scores
    out = {}
    for ev, keep in (("cv", lambda c: not re.match(unseen_regex, c)), ("cv-unseen", lambda c: bool(re.match(unseen_regex, c)))):
        sub = {reg: {c: v for c, v in per.items() if keep(c)} for reg, per in cases.items()}
        run = {}
        for reg, per in sub.items():
            finite = [v for v in per.values() if not math.isnan(v)]
            run[reg] = float(np.mean(finite)) if finite else float("nan")
        out[ev] = (run, sub)
    return out


def read_segmentation(cell_dir: str, cell: dict, regions: Dict[str, str], unseen: str = None) -> Dict[str, Scores]:
    fold = os.path.join(cell_dir, "nnUNet_results", cell["dataset_name"],
                        f"{cell['trainer']}__{cell['plans']}__{cell['configuration']}", f"fold_{cell['fold']}")
    cv = read_nnunet_summary(os.path.join(fold, "validation", "summary.json"), regions)
    out = split_unseen(cv, unseen) if unseen else {"cv": cv}
    test = os.path.join(cell_dir, "test", "summary.json")
    if os.path.isfile(test):
        out["test"] = read_nnunet_summary(test, regions)
    for summ in sorted(glob.glob(os.path.join(cell_dir, "missing", "no*_*", "summary.json"))):
        out["cv-" + os.path.basename(os.path.dirname(summ))] = read_nnunet_summary(summ, regions)   # cv-no0_zero
    return out


def read_classification(cell_dir: str, cell: dict, regions: Dict[str, str], unseen: str = None) -> Dict[str, Scores]:
    fold = os.path.join(cell_dir, "nnUNet_results", cell["dataset_name"],
                        f"{cell['trainer']}__{cell['plans']}__{cell['configuration']}", f"fold_{cell['fold']}")
    import csv
    with open(os.path.join(fold, "validation_probabilities.csv"), newline="") as f:
        cases = {r["case"]: 100.0 * (int(r["label"]) == int(r["prediction"])) for r in csv.DictReader(f)}
    return {"cv": ({"accuracy": float(np.mean(list(cases.values())))}, {"accuracy": cases})}


METRIC_READERS = {"segmentation": read_segmentation, "classification": read_classification}


def collect(out: str) -> Tuple[dict, List[dict], List[str]]:
    """(suite dict, finished cells with their scores, names of unfinished cells)."""
    with open(os.path.join(out, "suite.json")) as f:
        suite = json.load(f)
    regions = {d["id"]: d.get("regions", {}) for d in suite["datasets"]}
    unseen = {d["id"]: d.get("unseen") for d in suite["datasets"]}
    cells, unfinished = [], []
    for meta in sorted(glob.glob(os.path.join(out, "cells", "*", "cell.json"))):
        cdir = os.path.dirname(meta)
        if not os.path.isfile(os.path.join(cdir, "done.json")):
            unfinished.append(os.path.basename(cdir))
            continue
        with open(meta) as f:
            cell = json.load(f)
        cell["scores"] = METRIC_READERS[cell.get("task", "segmentation")](cdir, cell, regions.get(cell["dataset"], {}),
                                                                         unseen.get(cell["dataset"]))
        if cell.get("task", "segmentation") == "segmentation":
            cell["late_gain"] = 100 * late_gain(cell_curve(cdir, cell["fold"]))
        cells.append(cell)
    return suite, cells, unfinished


def eval_name(ev: str) -> str:
    """``cv`` / ``test`` / ``cv-no2_template`` in words."""
    if ev.startswith("cv-no"):
        ch, fill = ev[5:].split("_", 1)
        return f"validation cases with input channel {ch} removed and filled with {'the template' if fill == 'template' else 'zeros'}"
    return EVAL_NAMES.get(ev, ev)


def _references(suite: dict) -> Dict[tuple, dict]:
    out = {}
    for r in suite.get("references", []):
        tag = f"frac{round(r.get('fraction', 1.0) * 100):d}"
        out[(r["dataset"], tag, r.get("method"), r.get("region", "mean"))] = r
    return out


def tables(suite: dict, cells: List[dict]) -> Tuple[List[dict], List[dict]]:
    """(leaderboard rows, comparison rows) as dicts with :data:`COLUMNS` / :data:`COMPARISON_COLUMNS`."""
    groups = groups_of(cells)
    controls = suite.get("controls") or {}
    refs = _references(suite)
    method_order = list(suite["methods"])
    rows, comps = [], []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], method_order.index(k[3]) if k[3] in method_order else 99)):
        ds, ev, tag, m = key
        g = groups[key]
        c = g["cell"]
        regions = list(next(iter(g["runs"].values())))
        base = groups.get((ds, ev, tag, "scratch"))
        for reg in regions:
            mean, std = mean_std([r.get(reg, float("nan")) for r in g["runs"].values()])
            pr = None
            if base is not None and m != "scratch":
                pr = paired({k: v.get(reg, {}) for k, v in g["cases"].items()},
                            {k: v.get(reg, {}) for k, v in base["cases"].items()})
            ref = refs.get((ds, tag, m, reg))
            nan = float("nan")
            share = share_of_control(mean, mean_of(groups.get((ds, ev, tag, controls.get("random"))), reg),
                                     mean_of(groups.get((ds, ev, tag, controls.get("positive"))), reg)) \
                if controls else nan
            rows.append({"dataset": ds, "dataset_name": c["dataset_name"], "task": c["task"], "evaluation": ev,
                         "labels": c["budget"]["label"], "budget": tag, "method": m, "region": reg,
                         "runs": len(g["runs"]), "mean": mean, "std": std,
                         "mean_pm_std": f"{_fmt(mean)} ± {_fmt(std)}",
                         "delta_vs_scratch": pr.delta if pr else nan, "p_wilcoxon": pr.p if pr else nan,
                         "ci95_low": pr.ci_low if pr else nan, "ci95_high": pr.ci_high if pr else nan,
                         "n_cases": pr.n_cases if pr else len(set().union(*[v.get(reg, {}) for v in g["cases"].values()])),
                         "share_of_control": share,
                         "paper": ref["value"] if ref else nan, "paper_source": ref.get("source", "") if ref else "",
                         "per_run": {k: r.get(reg, nan) for k, r in g["runs"].items()}})
            for b in ["scratch"] + list(suite["methods"].get(m, {}).get("compare_to", [])):
                other = groups.get((ds, ev, tag, b))
                if other is None or b == m:
                    continue
                q = paired({k: v.get(reg, {}) for k, v in g["cases"].items()},
                           {k: v.get(reg, {}) for k, v in other["cases"].items()})
                comps.append({"dataset": ds, "evaluation": ev, "labels": c["budget"]["label"], "method": m,
                              "baseline": b, "region": reg, "delta": q.delta, "p_wilcoxon": q.p, "ci95_low": q.ci_low,
                              "ci95_high": q.ci_high, "n_cases": q.n_cases, "n_runs": q.n_runs, "wins": q.wins,
                              "losses": q.losses})
    for (ds, ev, tag, m), g in groups.items():          # missing channel: template vs zero fill, same model
        if not (ev.startswith("cv-no") and ev.endswith("_template")):
            continue
        zero = groups.get((ds, ev[: -len("template")] + "zero", tag, m))
        for reg in (list(next(iter(g["runs"].values()))) if zero else []):
            q = paired({k: v.get(reg, {}) for k, v in g["cases"].items()},
                       {k: v.get(reg, {}) for k, v in zero["cases"].items()})
            comps.append({"dataset": ds, "evaluation": ev[: -len("_template")], "labels": g["cell"]["budget"]["label"],
                          "method": f"{m} (template fill)", "baseline": f"{m} (zero fill)", "region": reg,
                          "delta": q.delta, "p_wilcoxon": q.p, "ci95_low": q.ci_low, "ci95_high": q.ci_high,
                          "n_cases": q.n_cases, "n_runs": q.n_runs, "wins": q.wins, "losses": q.losses})
    return rows, comps


def _csv(rows: List[dict], columns: List[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        s = str(v)
        return '"' + s.replace('"', '""') + '"' if any(ch in s for ch in ',"\n') else s
    return "\n".join([",".join(columns)] + [",".join(cell(r[k]) for k in columns) for r in rows]) + "\n"


def _per_run_table(rows: List[dict]) -> List[str]:
    """The 'mean' region of each run (fold x seed), one line per (labels, method): the spread the
    mean ± std summarises, run by run."""
    rs = [r for r in rows if r["region"] == "mean"]
    runs = sorted({k for r in rs for k in r["per_run"]})          # (fold, seed)
    if len(runs) < 2:
        return []
    out = ["Per run (mean over regions):", "", "| labels | method | "
           + " | ".join(f"fold {f} seed {sd}" for f, sd in runs) + " |",
           "|---|---|" + "---|" * len(runs)]
    out += [f"| {r['labels']} | {r['method']} | " + " | ".join(_fmt(r["per_run"].get(k, float("nan")), 1) for k in runs)
            + " |" for r in rs]
    return out + [""]


def markdown(suite: dict, rows: List[dict], comps: List[dict], unfinished: List[str], hashes: List[str],
             out: str, conv: List[dict] = (), valid: List[dict] = ()) -> str:
    md = [f"# Benchmark leaderboard: {suite['name']}", "", suite.get("description", ""), "",
          f"Regenerate: `nnUNetv2_mmpretrain_benchmark {suite['name']} --out {out} --leaderboard-only` "
          f"({time.strftime('%Y-%m-%d %H:%M')}).", "",
          "Scores in % (Dice for segmentation). mean ± std over runs (one run = one fold x seed). Δ = method − "
          "baseline on the same cases: runs are paired by (fold, seed), each case's Δ is averaged over its paired "
          "runs; p = two-sided Wilcoxon signed-rank test over the per-case Δ (scipy); 95 % CI = percentile "
          "bootstrap of the mean Δ over cases. `paper` = the published number on the paper's own data and split "
          "(side by side, not a paired comparison). `share` = (method − frozen random) / (positive control − "
          "frozen random), from the means: the part of a supervised encoder's gain a method captures.", ""]
    md += validity_lines(list(valid))
    sections: Dict[tuple, List[dict]] = {}
    for r in rows:
        sections.setdefault((r["dataset"], r["dataset_name"], r["evaluation"]), []).append(r)
    for (ds, name, ev), rs in sections.items():
        md += [f"## {name}: {ev} = {eval_name(ev)}", "",
               "| labels | method | region | runs | mean ± std | Δ vs scratch | p (Wilcoxon) | 95 % CI of Δ | "
               "cases | share | paper |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            ci = f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]"
            paper = "" if math.isnan(r["paper"]) else f"{r['paper']:.2f} ({r['paper_source']})"
            md.append(f"| {r['labels']} | {r['method']} | {r['region']} | {r['runs']} | {r['mean_pm_std']} | "
                      f"{_fmt(r['delta_vs_scratch'])} | {_p(r['p_wilcoxon'])} | {ci} | {r['n_cases']} | "
                      f"{_fmt(r['share_of_control'])} | {paper} |")
        md.append("")
        md += _per_run_table(rs)
    extra = [c for c in comps if c["baseline"] != "scratch"]
    if extra:
        md += ["## Other paired comparisons", "", "| dataset | evaluation | labels | method | baseline | region | Δ | "
               "p (Wilcoxon) | 95 % CI of Δ | cases | wins / losses |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in extra:
            md.append(f"| {c['dataset']} | {c['evaluation']} | {c['labels']} | {c['method']} | {c['baseline']} | "
                      f"{c['region']} | {_fmt(c['delta'])} | {_p(c['p_wilcoxon'])} | [{_fmt(c['ci95_low'])}, "
                      f"{_fmt(c['ci95_high'])}] | {c['n_cases']} | {c['wins']} / {c['losses']} |")
        md.append("")
    have = {(r["dataset"], r["budget"], r["method"]) for r in rows}
    pub = [r for r in suite.get("references", [])
           if (r["dataset"], f"frac{round(r.get('fraction', 1.0) * 100):d}", r.get("method")) not in have]
    if pub:
        md += ["## Published numbers without a run here", "", "| dataset | labels | method | value | metric | source |",
               "|---|---|---|---|---|---|"]
        for r in pub:
            md.append(f"| {r['dataset']} | {r.get('fraction', 1.0) * 100:g} % | {r.get('label', r.get('method', ''))} "
                      f"| {r['value']} | {r.get('metric', '')} | {r['source']} |")
        md.append("")
    if conv:
        md += ["## Did the fine-tuning converge?", "", "Late gain = mean pseudo Dice (nnU-Net's per-epoch validation "
               "batches) over the last quarter of the epochs minus over the quarter before, in Dice points. Near 0: "
               "converged; well above 0: the schedule stopped while the method was still improving, so the table "
               "above compares methods at an unfinished budget.", "",
               "| dataset | labels | method | epochs | runs | late gain (mean ± std) | runs rising > 2 points |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['dataset']} | {r['labels']} | {r['method']} | {r['epochs']} | {r['runs']} | "
               f"{_fmt(r['late_gain_mean'], 1)} ± {_fmt(r['late_gain_std'], 1)} | {r['rising_runs']} / {r['runs']} |"
               for r in conv]
        md.append("")
    if unfinished:
        md += [f"Unfinished cells (not counted): {', '.join(unfinished)}", ""]
    md += ["## Split files (SHA-256, also in splits.sha256)", "", "```"] + hashes + ["```", ""]
    return "\n".join(md)


def _budget_x(tag: str) -> float:
    """``frac20`` -> 20.0 (% of the training patients), ``n4`` -> 4.0 (cases)."""
    return float(tag[4:]) if tag.startswith("frac") else float(tag[1:])


def plot(rows: List[dict], path: str) -> None:
    """label_efficiency.png: per (dataset, evaluation) mean score vs budget with std error bars,
    one line per method (with a single budget: one point per method with its std, no budget
    axis); last panel: regions at each dataset's largest budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = sorted({(r["dataset_name"], r["evaluation"]) for r in rows if not r["evaluation"].startswith("cv-no")})
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.2), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (name, ev) in zip(axes[0], panels):
        sel = [r for r in rows if r["dataset_name"] == name and r["evaluation"] == ev and r["region"] in ("mean", "accuracy")]
        one = len({r["budget"] for r in sel}) == 1
        for j, m in enumerate(methods):
            pts = sorted((_budget_x(r["budget"]), r["mean"], 0 if math.isnan(r["std"]) else r["std"])
                         for r in sel if r["method"] == m)
            if pts and one:       # one label budget: a point per method with its std, no budget axis
                ax.errorbar([j], [pts[0][1]], yerr=[pts[0][2]], marker="o", capsize=6, linestyle="none", label=m)
            elif pts:
                x, y, e = map(np.asarray, zip(*pts))
                ax.errorbar(x * (1 + 0.015 * (j - len(methods) / 2)), y, yerr=e, marker="o", capsize=4, label=m)
        if one:
            ax.set_xticks(range(len(methods)), methods, fontsize=7, rotation=20)
            ax.set_xlim(-0.6, len(methods) - 0.4)
            ax.set_xlabel(f"method (one label budget: {sel[0]['labels']})")
        else:
            ax.set_xlabel("labelled training data (% of the fold, or cases)")
        ax.set_ylabel("score % (mean ± std over runs)")
        ax.set_title(f"{name}\n{ev}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    top = {}
    for r in rows:
        k = (r["dataset_name"], r["evaluation"])
        top[k] = r["budget"] if k not in top else max(top[k], r["budget"], key=_budget_x)
    sel = [r for r in rows if (r["dataset_name"], r["evaluation"]) == panels[0] and r["budget"] == top[panels[0]]]
    regions = list(dict.fromkeys(r["region"] for r in sel))
    w = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        vals = {r["region"]: r for r in sel if r["method"] == m}
        ax.bar(np.arange(len(regions)) + j * w, [vals[g]["mean"] if g in vals else 0 for g in regions], w,
               yerr=[0 if g not in vals or math.isnan(vals[g]["std"]) else vals[g]["std"] for g in regions],
               capsize=3, label=m)
    ax.set_xticks(np.arange(len(regions)) + 0.4 - w / 2, regions, fontsize=7, rotation=20)
    ax.set_title(f"{panels[0][0]} {panels[0][1]}, per region", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def write_leaderboard(out: str) -> str:
    """Write ``OUT/leaderboard/*`` from the output folder alone; returns the Markdown path."""
    from nnunet_mmpretrain.io_utils import sha256_file as file_sha256
    out = os.path.abspath(out)
    suite, cells, unfinished = collect(out)
    rows, comps = tables(suite, cells)
    lb = os.path.join(out, "leaderboard")
    os.makedirs(lb, exist_ok=True)
    split_files = sorted(glob.glob(os.path.join(out, "splits", "**", "*.json"), recursive=True))
    hashes = [f"{file_sha256(p)}  {os.path.relpath(p, out)}" for p in split_files]
    atomic_write_text("\n".join(hashes) + "\n", os.path.join(lb, "splits.sha256"))
    atomic_write_text(_csv(rows, COLUMNS), os.path.join(lb, "leaderboard.csv"))
    atomic_write_text(_csv(comps, COMPARISON_COLUMNS), os.path.join(lb, "comparisons.csv"))
    md_path = os.path.join(lb, "leaderboard.md")
    conv = convergence(suite, cells)
    atomic_write_text(_csv(conv, CONVERGENCE_COLUMNS), os.path.join(lb, "convergence.csv"))
    valid = validity(suite, cells)
    atomic_write_text(markdown(suite, rows, comps, unfinished, hashes, out, conv, valid), md_path)
    for v in valid:
        log.info("testbed validity %s %s: positive control %+.1f Dice over the random frozen encoder, %d runs: %s",
                 v["evaluation"], v["labels"], v["delta"], v["n_runs"], "valid" if v["valid"] else "NOT valid")
    if rows:
        plot(rows, os.path.join(lb, "label_efficiency.png"))
    log.info("leaderboard from %d finished cell(s), %d unfinished", len(cells), len(unfinished))
    return md_path
