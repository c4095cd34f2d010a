"""The demo: the product's main job on the built-in phantoms, as a user would type it.

Every step is the console command a user runs (printed before it runs), on nnU-Net folders under
``--out`` (default ``demo_output/``). Finished steps are skipped on a second run.

1. ``nnUNetv2_mmpretrain_make_phantoms``: a labelled BraTS-like dataset (990) and an unlabelled
   two-source corpus (992: T1/T1ce/T2/FLAIR tumours, T1/T2/PD healthy)
2. ``nnUNetv2_mmpretrain_plan_and_preprocess``: validate, fingerprint, plan (ResEnc), preprocess
   the corpus, plus a CPU-sized configuration ``3d_demo``
3. ``nnUNetv2_train ... -tr nnUNetTrainerMMPretrain_demo``: BrainMVP pretraining
4. ``nnUNetv2_mmpretrain_export``: the encoder bundle (encoder, per-modality stems, templates,
   model card)
5. ``nnUNetv2_mmpretrain_transfer_plans``: the segmentation dataset gets the pretraining topology
6. ``nnUNetv2_mmpretrain_benchmark demo``: the ``demo`` suite (``plans/demo.json``) fine-tunes
   from scratch and from the bundle on the same plans, splits and schedule (two folds of 6 x 16
   iterations), evaluates the validation cases with nnU-Net's evaluator and writes the
   leaderboard (Markdown, CSV, plot), which the demo prints with its verdict on the proxy tasks
   and the ``nnUNetv2_predict`` command for the 2 held-out test cases.

Steps 3-4 write where the benchmark looks for the suite's pretraining (``OUT/pretraining/cpu-demo``),
so the benchmark only runs the fine-tuning cells.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from nnunet_mmpretrain.benchmark.prepare import folders_for
from nnunet_mmpretrain.benchmark.runner import build_cells
from nnunet_mmpretrain.benchmark.suite import load_suite
from nnunet_mmpretrain.conversion.paths import dataset_folder_name
from nnunet_mmpretrain.training.lookup import ext_trainer_value

SEG_ID, CORPUS_ID = 990, 992
CONFIG = "3d_demo"
PLANS = "mmPretrainPlans"
PRETRAINER = "nnUNetTrainerMMPretrain_demo"
SUITE, PRESET = "demo", "cpu-demo"


def _run(cmd, env):
    print("\n$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    t = time.time()
    subprocess.run([str(c) for c in cmd], env=env, check=True)
    print(f"  ({time.time() - t:.0f} s)", flush=True)


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


def closing_lines() -> list:
    """What the demo's numbers can and cannot say, and where the measurement is."""
    return [
        "",
        "What this shows: corpus planning, pretraining, export, transfer, fine-tuning, nnU-Net's validation and",
        "the paired statistics run end to end on your machine.",
        "What it cannot show: whether pretraining helps. Two folds give 4 paired validation cases; with 4 pairs",
        "the smallest possible two-sided Wilcoxon p is 0.125, so no difference here can be told from noise, and",
        "a sign that flips between runs is expected (6 x 16 fine-tuning iterations also favour any",
        "initialisation that speeds up the start: scratch is far from converged).",
        "To measure it: nnUNetv2_mmpretrain_benchmark multisite (six simulated sites, unseen-site scores, a",
        "positive control; run it by parts with --cell), nnUNetv2_mmpretrain_benchmark phantom (5 paired folds,",
        "~4 h on 2 cores), nnUNetv2_mmpretrain_benchmark brainmvp on your converted data (--dry-run lists the",
        "cells), and the results so far in docs/results/.",
    ]


def predict_command(out: str) -> list:
    """``nnUNetv2_predict`` of the demo dataset's held-out test cases (``imagesTs``) with the model of
    the demo suite's first pretrained cell (fold 0), as the user types it."""
    suite = load_suite(SUITE)
    cell = next(c for c in build_cells(suite) if c.method.name == "pretrained")
    f = folders_for(suite, out)
    ds = dataset_folder_name(cell.dataset.id, cell.dataset.name)
    return [f"nnUNet_results={os.path.join(f.cells, cell.name, 'nnUNet_results')}",
            f"nnUNet_extTrainer={ext_trainer_value(None)}", "nnUNetv2_predict", "-i",
            os.path.join(f.raw, ds, "imagesTs"), "-o", os.path.join(out, "predictions_test"), "-d", str(cell.dataset.id),
            "-c", suite.configuration, "-f", str(cell.fold), "-tr", cell.trainer, "-p", suite.plans, "-device", "cpu"]


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
               nnUNet_results=os.path.join(out, "pretraining", PRESET, "nnUNet_results"))
    # the demo's own pretraining runs with the demo suite's process settings (plans/demo.json "env": augmentation
    # in the training process, as at 32^3 on 2 cores workers cost more than they give: 9.9 s against 12.3 s per
    # pretraining epoch)
    for k, v in load_suite(SUITE).env.items():
        env.setdefault(k, v)
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
              "--corpus-cases", 6, "--spacing", 3, "--seed", 0, "--overwrite"], env)
    corpus_plans = os.path.join(pre, corpus, PLANS + ".json")
    if not (os.path.isfile(corpus_plans) and CONFIG in json.load(open(corpus_plans))["configurations"]):
        _run(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", CORPUS_ID, "--add-config", CONFIG,
              "--patch", 32, 32, 32, "--features", 8, 16, 32, 64], env)
    pre_fold = os.path.join(res, corpus, f"{PRETRAINER}__{PLANS}__{CONFIG}", "fold_all")
    if not os.path.isfile(os.path.join(pre_fold, "checkpoint_final.pth")):
        _run(["nnUNetv2_train", CORPUS_ID, CONFIG, "all", "-tr", PRETRAINER, "-p", PLANS, "-device", "cpu"], env)
    bundle = os.path.join(out, "pretraining", PRESET, "bundle")
    if not os.path.isfile(os.path.join(bundle, "encoder_bundle.pt")):
        _run(["nnUNetv2_mmpretrain_export", os.path.join(pre_fold, "checkpoint_final.pth"), "-o", bundle], env)
    if not os.path.isdir(os.path.join(pre, seg, f"{PLANS}_{CONFIG}")):
        _run(["nnUNetv2_mmpretrain_transfer_plans", "-s", CORPUS_ID, "-t", SEG_ID, "-c", CONFIG, "--bundle", bundle,
              "--preprocess"], env)
    _run(["nnUNetv2_mmpretrain_benchmark", SUITE, "--out", out], env)
    summ = json.load(open(os.path.join(pre_fold, "pretraining_summary", "summary.json")))
    print("\n=== pretraining (BrainMVP proxy tasks) ===")
    for line in pretext_lines(summ):
        print(line)
    print(f"plots: {os.path.join(pre_fold, 'progress_pretrain.png')}, {os.path.join(pre_fold, 'montage_pretrain.png')}")
    print(f"bundle and model card: {bundle}")
    lb = os.path.join(out, "leaderboard")
    print("\n=== leaderboard of the demo suite (scratch vs pretrained encoder, same plans, splits and schedule) ===")
    with open(os.path.join(lb, "leaderboard.md")) as f:
        text = f.read()
    body = text[text.find("## "):text.find("## Split files")] if "## " in text else text
    print(body.rstrip())
    print(f"leaderboard: {lb} (leaderboard.md, leaderboard.csv, comparisons.csv, label_efficiency.png)")
    print("\nto segment the 2 held-out test cases with the pretrained model of fold 0 (plain nnU-Net; the first")
    print("variable says where that model lies, the second where nnU-Net finds our trainers):")
    print("  " + " ".join(shlex.quote(c) for c in predict_command(out)))
    for line in closing_lines():
        print(line)
    print(f"demo finished in {time.time() - t0:.0f} s; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
