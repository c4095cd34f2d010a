"""The demo: the product's main job on the built-in phantoms, as a user would type it.

Every step is the console command a user runs (printed before it runs), on nnU-Net folders under
``--out`` (default ``demo_output/``). Finished steps are skipped on a second run.

1. ``nnUNetv2_mmpretrain_make_phantoms``: a labelled BraTS-like dataset (990) and an unlabelled
   two-source corpus (992: T1/T1ce/T2/FLAIR tumours, T1/T2/PD healthy)
2. ``nnUNetv2_mmpretrain_plan_and_preprocess``: validate, fingerprint, plan (ResEnc), preprocess
   the corpus, plus a CPU-sized configuration ``3d_demo``
3. ``nnUNetv2_train ... -tr nnUNetTrainerMMPretrain_demo``: BrainMVP pretraining
4. ``nnUNetv2_mmpretrain_export``: the encoder bundle (encoder, per-modality stems, templates)
5. ``nnUNetv2_mmpretrain_transfer_plans``: the segmentation dataset gets the pretraining topology
6. ``nnUNetv2_train`` twice on the same plans and split: from scratch and from the bundle
7. ``nnUNetv2_predict`` + ``nnUNetv2_evaluate_folder`` on the held-out cases for both
8. a results table (Markdown, CSV) and a bar plot of Dice per region
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

SEG_ID, CORPUS_ID = 990, 992
CONFIG = "3d_demo"
PLANS = "mmPretrainPlans"
PRETRAINER = "nnUNetTrainerMMPretrain_demo"
RUNS = {"scratch": "nnUNetTrainerMMDemo", "pretrained": "nnUNetTrainerMMFinetune_demo"}
REGIONS = {"(1, 2, 3)": "whole tumor", "(1, 3)": "tumor core", "(3,)": "enhancing tumor"}


def _run(cmd, env):
    print("\n$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    t = time.time()
    subprocess.run([str(c) for c in cmd], env=env, check=True)
    print(f"  ({time.time() - t:.0f} s)", flush=True)


def _dice(summary: dict) -> dict:
    out = {REGIONS.get(k, k): v["Dice"] for k, v in summary["mean"].items()}
    out["mean"] = summary["foreground_mean"]["Dice"]
    return out


def write_results(rows: dict, out: str) -> str:
    """rows: run -> {"validation": dice dict, "test": dice dict}; writes results.md/.csv/.png."""
    from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_text
    cols = ["whole tumor", "tumor core", "enhancing tumor", "mean"]
    md = ["| run | split | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    csv = ["run,split," + ",".join(cols)]
    for run, splits in rows.items():
        for split, d in splits.items():
            md.append(f"| {run} | {split} | " + " | ".join(f"{d.get(c, float('nan')):.3f}" for c in cols) + " |")
            csv.append(f"{run},{split}," + ",".join(f"{d.get(c, float('nan')):.4f}" for c in cols))
    atomic_write_text("\n".join(md) + "\n", os.path.join(out, "results.md"))
    atomic_write_text("\n".join(csv) + "\n", os.path.join(out, "results.csv"))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, split in zip(axes, ("validation", "test")):
        x = np.arange(len(cols))
        for i, run in enumerate(rows):
            d = rows[run].get(split, {})
            ax.bar(x + (i - 0.5) * 0.38, [d.get(c, 0) for c in cols], 0.38, label=run)
        ax.set_xticks(x, cols, fontsize=8)
        ax.set_title(f"Dice, {split}")
        ax.set_ylim(0, 1)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(os.path.join(out, "results.png")) as tmp:
        fig.savefig(tmp, dpi=80)
    return "\n".join(md)


def pretext_lines(summary: dict, goal: float = 0.8) -> list:
    """The demo's verdict on the proxy tasks from ``pretraining_summary/summary.json``: per view
    the validation masked-voxel error against both baselines, and whether the task was learned
    (error at most ``goal`` x the patch-mean baseline and below the fill left in place)."""
    last, lines, learned = summary["last"], [], True
    for v, name in (("cmr", "cross-modal view"), ("md", "template view")):
        m, pm, fl = (last[f"val_{v}_{k}"] for k in ("masked_mse", "baseline_patch_mean", "baseline_fill"))
        ok = m <= goal * pm and m < fl
        learned &= ok if v == "cmr" else True
        lines.append(f"{name}: masked-voxel MSE (validation) {m:.3f} = {m / pm:.2f} x the patch-mean baseline "
                     f"({pm:.3f}), {m / fl:.2f} x the fill left in place ({fl:.3f})")
    lines.append("proxy task learned: " + ("YES, the cross-modal error is at most " + f"{goal} x the patch mean and below "
                                           "the fill" if learned else "NO, the cross-modal error is not clearly below "
                                           "both baselines: the encoder has little to transfer"))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_mmpretrain.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.abspath("demo_output"))
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    if a.fresh and os.path.isdir(out):
        import shutil
        shutil.rmtree(out)
    env = dict(os.environ)
    env.update(nnUNet_raw=os.path.join(out, "nnUNet_raw"), nnUNet_preprocessed=os.path.join(out, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(out, "nnUNet_results"))
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2")
    from nnunet_mmpretrain.cli.ext_trainer_path import ext_trainer_value
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer"))
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        os.makedirs(env[k], exist_ok=True) if k != "nnUNet_extTrainer" else None
        print(f"export {k}={env[k]}")
    t0 = time.time()
    raw, pre, res = env["nnUNet_raw"], env["nnUNet_preprocessed"], env["nnUNet_results"]
    seg, corpus = "Dataset990_PhantomBraTS", "Dataset992_PhantomCorpus"

    if not (os.path.isfile(os.path.join(raw, seg, "dataset.json")) and
            os.path.isfile(os.path.join(raw, corpus, "manifest.json"))):
        _run(["nnUNetv2_mmpretrain_make_phantoms", "--what", "seg,corpus", "--num-train", 10, "--num-test", 2,
              "--corpus-cases", 6, "--spacing", 3, "--overwrite"], env)
    corpus_plans = os.path.join(pre, corpus, PLANS + ".json")
    if not (os.path.isfile(corpus_plans) and CONFIG in json.load(open(corpus_plans))["configurations"]):
        _run(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", CORPUS_ID, "--add-config", CONFIG,
              "--patch", 32, 32, 32, "--features", 8, 16, 32, 64], env)
    pre_fold = os.path.join(res, corpus, f"{PRETRAINER}__{PLANS}__{CONFIG}", "fold_all")
    if not os.path.isfile(os.path.join(pre_fold, "checkpoint_final.pth")):
        _run(["nnUNetv2_train", CORPUS_ID, CONFIG, "all", "-tr", PRETRAINER, "-p", PLANS, "-device", "cpu"], env)
    bundle = os.path.join(out, "bundle")
    if not os.path.isfile(os.path.join(bundle, "encoder_bundle.pt")):
        _run(["nnUNetv2_mmpretrain_export", os.path.join(pre_fold, "checkpoint_final.pth"), "-o", bundle], env)
    seg_plans = os.path.join(pre, seg, PLANS + ".json")
    if not os.path.isdir(os.path.join(pre, seg, f"{PLANS}_{CONFIG}")):
        _run(["nnUNetv2_mmpretrain_transfer_plans", "-s", CORPUS_ID, "-t", SEG_ID, "-c", CONFIG, "--bundle", bundle,
              "--preprocess"], env)
    rows = {}
    for run, trainer in RUNS.items():
        fold = os.path.join(res, seg, f"{trainer}__{PLANS}__{CONFIG}", "fold_0")
        if not os.path.isfile(os.path.join(fold, "validation", "summary.json")):
            _run(["nnUNetv2_train", SEG_ID, CONFIG, 0, "-tr", trainer, "-p", PLANS, "-device", "cpu"], env)
        pred = os.path.join(out, f"predictions_{run}")
        if not os.path.isfile(os.path.join(pred, "summary.json")):
            _run(["nnUNetv2_predict", "-i", os.path.join(raw, seg, "imagesTs"), "-o", pred, "-d", SEG_ID, "-c", CONFIG,
                  "-f", 0, "-tr", trainer, "-p", PLANS, "-device", "cpu", "--disable_tta", "-npp", 1, "-nps", 1], env)
            _run(["nnUNetv2_evaluate_folder", os.path.join(raw, seg, "labelsTs"), pred, "-djfile",
                  os.path.join(fold, "..", "dataset.json"), "-pfile", os.path.join(fold, "..", "plans.json"),
                  "-np", 1], env)
        rows[run] = {"validation": _dice(json.load(open(os.path.join(fold, "validation", "summary.json")))),
                     "test": _dice(json.load(open(os.path.join(pred, "summary.json"))))}
    table = write_results(rows, out)
    summ = json.load(open(os.path.join(pre_fold, "pretraining_summary", "summary.json")))
    print("\n=== pretraining (BrainMVP proxy tasks) ===")
    for line in pretext_lines(summ):
        print(line)
    print(f"plots: {os.path.join(pre_fold, 'progress_pretrain.png')}, {os.path.join(pre_fold, 'montage_pretrain.png')}")
    print("\n=== segmentation, Dice (scratch vs pretrained encoder, same plans/split/schedule) ===")
    print(table)
    print(f"results: {os.path.join(out, 'results.md')}, results.csv, results.png")
    print(f"demo finished in {time.time() - t0:.0f} s; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
