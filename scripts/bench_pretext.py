"""Does the pretext task get learned, and how fast? Masked-voxel error of both views against the
two trivial baselines, per epoch and against wall time, for several pretraining trainers.

Each trainer runs through ``nnUNetv2_train`` on the demo's phantom corpus (made and planned here
when missing, 3 mm, 32^3 patches, features 8/16/32/64). The numbers come from the final
checkpoint's log (fixed validation patches) and nnU-Net's epoch timestamps.

    .venv/bin/python scripts/bench_pretext.py [--trainers nnUNetTrainerMMPretrain_cpuBrainMVP nnUNetTrainerMMPretrain_cpu]
                                              [--out bench_output/pretext]

Writes ``pretext.md`` (table), ``pretext.json`` and ``pretext.png`` (masked error / patch-mean
baseline against minutes, per view) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_ID, CONFIG, PLANS = 992, "3d_demo", "mmPretrainPlans"


def _env(out: str) -> dict:
    env = dict(os.environ, nnUNet_raw=os.path.join(out, "raw"), nnUNet_preprocessed=os.path.join(out, "pre"),
               nnUNet_results=os.path.join(out, "results"))
    from nnunet_mmpretrain.training.lookup import ext_trainer_value
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.setdefault("nnUNet_n_proc_DA", "1")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    return env


def _run(cmd, env):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], env=env, check=True, stdout=subprocess.DEVNULL)


def prepare(env: dict) -> None:
    plans = os.path.join(env["nnUNet_preprocessed"], "Dataset992_PhantomCorpus", PLANS + ".json")
    if os.path.isfile(plans) and CONFIG in json.load(open(plans))["configurations"]:
        return
    _run(["nnUNetv2_mmpretrain_make_phantoms", "--what", "corpus", "--corpus-cases", 6, "--spacing", 3,
          "--overwrite"], env)
    _run(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", CORPUS_ID, "--add-config", CONFIG, "--patch", 32, 32, 32,
          "--features", 8, 16, 32, 64], env)


def measure(trainer: str, env: dict) -> dict:
    fold = os.path.join(env["nnUNet_results"], "Dataset992_PhantomCorpus", f"{trainer}__{PLANS}__{CONFIG}", "fold_all")
    ck_path = os.path.join(fold, "checkpoint_final.pth")
    if not os.path.isfile(ck_path):
        _run(["nnUNetv2_train", CORPUS_ID, CONFIG, "all", "-tr", trainer, "-p", PLANS, "-device", "cpu"], env)
    ck = torch.load(ck_path, weights_only=True)
    log, nl = ck["mm_log"], ck["nnunet_logging"]
    t0 = nl["epoch_start_timestamps"][0]
    minutes = [(t - t0) / 60 for t in nl["epoch_end_timestamps"]]
    rel = {v: [m / b for m, b in zip(log[f"val_{v}_masked_mse"], log[f"val_{v}_baseline_patch_mean"])]
           for v in ("md", "cmr")}
    last = {k: log[k][-1] for k in log if k.startswith("val_")}
    return {"trainer": trainer, "minutes": minutes, "rel_patch_mean": rel, "last": last,
            "epochs": len(minutes)}


def table(rows) -> str:
    out = ["| trainer | epochs | minutes | view | masked MSE | patch mean | fill in place | x patch mean | x fill |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for v, name in (("md", "template"), ("cmr", "cross-modal")):
            L = r["last"]
            m, pm, fl = L[f"val_{v}_masked_mse"], L[f"val_{v}_baseline_patch_mean"], L[f"val_{v}_baseline_fill"]
            out.append(f"| {r['trainer']} | {r['epochs']} | {r['minutes'][-1]:.1f} | {name} | {m:.3f} | {pm:.3f} | "
                       f"{fl:.3f} | {m / pm:.2f} | {m / fl:.2f} |")
    return "\n".join(out)


def plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for a, v, name in ((ax[0], "md", "template view"), (ax[1], "cmr", "cross-modal view")):
        for r in rows:
            a.plot(r["minutes"], r["rel_patch_mean"][v], marker=".", label=r["trainer"].replace("nnUNetTrainerMM", ""))
        a.axhline(1.0, color="0.5", ls="--", lw=1, label="patch mean (baseline)")
        a.axhline(0.8, color="0.7", ls=":", lw=1)
        a.set_xlabel("wall time (min, 2 CPU cores)")
        a.set_title(f"{name}: masked error / patch-mean baseline", fontsize=9)
    ax[0].set_ylabel("relative masked-voxel MSE (validation)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainerMMPretrain_cpuBrainMVP", "nnUNetTrainerMMPretrain_cpu"])
    p.add_argument("--out", default=os.path.join(REPO, "bench_output", "pretext"))
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    env = _env(out)
    prepare(env)
    rows = []
    for tr in a.trainers:
        t = time.time()
        rows.append(measure(tr, env))
        print(f"{tr}: {time.time() - t:.0f} s", flush=True)
    md = table(rows)
    print(md)
    with open(os.path.join(out, "pretext.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "pretext.json"), "w") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.join(out, "pretext.png"))
    print(f"written: {out}/pretext.md, pretext.json, pretext.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
