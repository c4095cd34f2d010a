"""Rehearsal at the size users run (issue 24): 1 mm BraTS-like phantoms, nnU-Net's ResEnc-M plans,
every step of the chain on the CPU, with wall time and peak memory (RSS) per process.

Stages (``--stages``; default all, in this order)::

    phantoms        make_phantoms --spacing 1: a labelled dataset (990, --num-train cases + 1 test case)
                    and a corpus (992, 2 sources x --corpus-cases: 4 and 3 modalities)
    plan_corpus     nnUNetv2_mmpretrain_plan_and_preprocess -d 992 -pl ResEncM (disk per case)
    plan_nnunet     nnUNetv2_plan_and_preprocess -d 990 -pl nnUNetPlannerResEncM --no_pp (nnU-Net's own
                    plan of the labelled dataset, for the record: patch, batch, stages, features)
    step            scripts/bench_pretrain_step.py --plans: BrainMVP step against two MAE steps
    pretrain        nnUNetv2_train 992 ... -tr nnUNetTrainerMMPretrain_rehearsal (BrainMVP defaults)
    pretrain_cpu    the same with nnUNetTrainerMMPretrain_cpuRehearsal (the CPU recipe)
    ddp             nnUNetv2_mmpretrain_train_ddp -nproc 2 (gloo; on --device cuda -nproc 1, NCCL), one step
                    (nnUNetTrainerMMPretrain_oneStep; --ddp-objective mae: ..._oneStepMAE)
    export          nnUNetv2_mmpretrain_export of the BrainMVP rehearsal checkpoint
    transfer        nnUNetv2_mmpretrain_transfer_plans -s 992 -t 990 --preprocess (disk per case)
    finetune        nnUNetv2_train 990 ... 0 -tr nnUNetTrainerMMFinetune_rehearsal
    predict         nnUNetv2_predict of the test case (full case, sliding window, no mirroring)
    predict_fill    nnUNetv2_mmpretrain_predict of the test case with its FLAIR removed (template fill)
    loader          scripts/bench_loader.py: samples/s of both loaders with 0, 1, 2 workers + profile

Every stage runs as its own process; a sampler reads /proc every 0.25 s and records the peak RSS
of the main process, of the largest child (data-loader workers, DDP ranks) and of the whole
process tree. A stage with a process above ``--mem-limit-gib`` (or a tree above
``--tree-limit-gib``) is stopped and recorded as such; the
training stages are then retried at batch 1 (a configuration ``<config>_b1`` added to the plans)
and the report says so. Results: ``OUT/rehearsal.json`` and ``OUT/rehearsal.md``; logs in
``OUT/logs``. ``--resume`` keeps ``OUT/rehearsal.json`` and runs the stages that did not succeed
(or those named by ``--stages``). Not for CI: about 40 minutes on 2 busy cores (scripts/BENCHMARKS.md).

    python scripts/rehearse_real_size.py [--out bench_output/real_size] [--stages ...] [--resume] [--ddp-patch 64]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import REPO, load_average, machine_info  # noqa: E402
from rehearsal_report import config_summary, epoch_times, folder_bytes, write_report  # noqa: E402

#: --ddp-objective: BrainMVP's defaults (two views per sample) or a plain masked autoencoder (one view)
DDP_TRAINERS = {"brainmvp": "nnUNetTrainerMMPretrain_oneStep", "mae": "nnUNetTrainerMMPretrain_oneStepMAE"}
STAGES = ("phantoms", "plan_corpus", "plan_nnunet", "step", "pretrain", "pretrain_cpu", "ddp", "export",
          "transfer", "finetune", "predict", "predict_fill", "loader")
SEG, CORPUS = 990, 992
SEG_NAME, CORPUS_NAME = "Dataset990_PhantomBraTS", "Dataset992_PhantomCorpus"


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(pid: int) -> list:
    """``pid`` and all its descendants (from /proc/PID/task/*/children)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(task) as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return seen


def run_stage(name: str, cmd: list, log_dir: str, env: dict, mem_limit_gib: float, tree_limit_gib: float) -> dict:
    """Run ``cmd``; wall time, exit code, peak RSS (main, largest descendant, tree) in MiB. Stopped when
    one process passes ``mem_limit_gib`` or the whole tree ``tree_limit_gib``."""
    log = os.path.join(log_dir, f"{name}.log")
    print(f"[rehearse] {name}: {' '.join(map(str, cmd))}", flush=True)
    rec = {"stage": name, "cmd": [str(c) for c in cmd], "load_start": load_average(), "log": log}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        peak_main = peak_child = peak_tree = 0
        n_children = 0
        killed = False
        while proc.poll() is None:
            pids = _tree(proc.pid)
            rss = {p: _rss_kib(p) for p in pids}
            peak_main = max(peak_main, rss.get(proc.pid, 0))
            kids = [v for p, v in rss.items() if p != proc.pid]
            n_children = max(n_children, len(kids))
            peak_child = max([peak_child] + kids)
            peak_tree = max(peak_tree, sum(rss.values()))
            over = max(rss.values()) > mem_limit_gib * 2 ** 20 or sum(rss.values()) > tree_limit_gib * 2 ** 20
            if over and not killed:
                killed = True
                print(f"[rehearse] {name}: a process above {mem_limit_gib} GiB or the tree above {tree_limit_gib} GiB; "
                      f"stopping it", flush=True)
                for p in reversed(pids):
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
            time.sleep(0.25)
    rec.update(wall_s=round(time.perf_counter() - t0, 1), rc=proc.returncode, over_memory_limit=killed,
               peak_rss_main_MiB=round(peak_main / 1024), peak_rss_largest_child_MiB=round(peak_child / 1024),
               peak_rss_tree_MiB=round(peak_tree / 1024), max_children=n_children, load_end=load_average())
    status = "over memory limit" if killed else ("ok" if proc.returncode == 0 else f"FAILED rc {proc.returncode}")
    print(f"[rehearse] {name}: {status}, {rec['wall_s']} s, peak RSS main {rec['peak_rss_main_MiB']} MiB, "
          f"largest child {rec['peak_rss_largest_child_MiB']} MiB, tree {rec['peak_rss_tree_MiB']} MiB", flush=True)
    if proc.returncode != 0 and not killed:
        with open(log, errors="replace") as f:
            print("".join(f.readlines()[-15:]), file=sys.stderr)
    return rec


def add_batch_config(plans_file: str, config: str, batch: int, patch=None) -> str:
    """Add ``<config>_b<batch>`` (inherits ``config``, only the batch differs; with ``patch`` also the
    patch: ``<config>_b<batch>_p<patch>``) to a plans file."""
    name = f"{config}_b{batch}" + (f"_p{patch}" if patch else "")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["configurations"][name] = {"inherits_from": config, "batch_size": batch}
    if patch:
        plans["configurations"][name]["patch_size"] = [patch] * 3
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=1)
    return name


class Rehearsal:
    def __init__(self, a):
        self.a = a
        self.out = os.path.abspath(a.out)
        self.work = os.path.join(self.out, "work")
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.res_file = os.path.join(self.out, "rehearsal.json")
        self.res = {"machine": machine_info(), "stages": {}, "plans": {}, "disk": {}, "derived": {}, "args": vars(a)}
        if a.resume and os.path.isfile(self.res_file):
            with open(self.res_file) as f:
                old = json.load(f)
            self.res.update({k: old[k] for k in ("stages", "plans", "disk", "derived") if k in old})
        self.raw = os.path.join(self.work, "nnUNet_raw")
        self.pre = os.path.join(self.work, "nnUNet_preprocessed")
        self.results = os.path.join(self.work, "nnUNet_results")
        for d in (self.raw, self.pre, self.results):
            os.makedirs(d, exist_ok=True)
        self.env = dict(os.environ, nnUNet_raw=self.raw, nnUNet_preprocessed=self.pre, nnUNet_results=self.results,
                        nnUNet_compile="f", OMP_NUM_THREADS=str(a.threads), nnUNet_def_n_proc=str(a.np))
        from nnunet_mmpretrain.training.lookup import ext_trainer_value
        self.env["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
        self.config = a.config
        self.train_config = self.res.get("derived", {}).get("train_config", a.config)
        self.corpus_plans = os.path.join(self.pre, CORPUS_NAME, "mmPretrainPlans.json")
        self.seg_plans = os.path.join(self.pre, SEG_NAME, "mmPretrainPlans.json")

    def save(self):
        self.res.setdefault("derived", {})["train_config"] = self.train_config
        with open(self.res_file, "w") as f:
            json.dump(self.res, f, indent=1)

    def stage(self, name, cmd, env=None):
        rec = run_stage(name, cmd, self.logs, env or self.env, self.a.mem_limit_gib, self.a.tree_limit_gib)
        self.res["stages"][name] = rec
        self.save()
        return rec

    def ok(self, name):
        r = self.res["stages"].get(name)
        return bool(r) and r["rc"] == 0

    def fold(self, trainer, dataset=CORPUS_NAME, fold="fold_all", results=None, plans="mmPretrainPlans"):
        config = self.train_config
        if dataset == CORPUS_NAME:   # fine-tuning tries the planned batch again: the pretraining's own
            config = self.res["derived"].get("pretrain_config", config)
        return os.path.join(results or self.results, dataset, f"{trainer}__{plans}__{config}", fold)

    def train(self, name, cmd_fn):
        """A training stage; stopped for memory -> batch 1 configuration, once."""
        rec = self.stage(name, cmd_fn())
        if rec["over_memory_limit"] and not self.train_config.endswith("_b1"):
            print(f"[rehearse] {name}: retrying at batch 1", flush=True)
            self.train_config = add_batch_config(self.corpus_plans, self.config, 1)
            if os.path.isfile(self.seg_plans):
                add_batch_config(self.seg_plans, self.config, 1)
            first = dict(rec)
            rec = self.stage(name, cmd_fn())
            rec["batch_planned_attempt"] = first
            self.save()
        return rec

    # ---------------------------------------------------------------- stages
    def phantoms(self):
        self.stage("phantoms", ["nnUNetv2_mmpretrain_make_phantoms", "--what", "seg,corpus", "--num-train",
                                self.a.num_train, "--num-test", 1, "--corpus-cases", self.a.corpus_cases,
                                "--spacing", 1, "-np", self.a.np, "--overwrite"])
        n = {}
        for ds in (SEG_NAME, CORPUS_NAME):
            b, k = folder_bytes(os.path.join(self.raw, ds), "images*/*.nii.gz")
            n[ds] = {"raw_MiB": round(b / 2 ** 20, 1), "images": k}
        self.res["disk"]["raw"] = n

    def record_preprocessed(self, what: str, dataset_name: str, plans_file: str, rec: dict) -> None:
        """The plans chosen and the preprocessed data's size per case (``what``: corpus / labelled)."""
        s = config_summary(plans_file, self.config)
        self.res["plans"][f"{what}_mmPretrainPlans"] = s
        data = os.path.join(self.pre, dataset_name, s["data_identifier"])
        b, _ = folder_bytes(data, "*.b2nd")
        k = len(glob.glob(os.path.join(data, "*.pkl")))
        self.res["disk"][f"{what}_preprocessed"] = {"MiB": round(b / 2 ** 20, 1), "cases": k,
                                                   "MiB_per_case": round(b / 2 ** 20 / max(k, 1), 2),
                                                   "s_per_case": round(rec["wall_s"] / max(k, 1), 2)}

    def plan_corpus(self):
        shutil.rmtree(os.path.join(self.pre, CORPUS_NAME), ignore_errors=True)
        rec = self.stage("plan_corpus", ["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", CORPUS, "-pl", "ResEncM",
                                         "-np", self.a.np])
        if rec["rc"] == 0:
            self.record_preprocessed("corpus", CORPUS_NAME, self.corpus_plans, rec)

    def plan_nnunet(self):
        rec = self.stage("plan_nnunet", ["nnUNetv2_plan_and_preprocess", "-d", SEG, "-pl", "nnUNetPlannerResEncM",
                                         "--no_pp", "-npfp", self.a.np])
        if rec["rc"] == 0:
            f = os.path.join(self.pre, SEG_NAME, "nnUNetResEncUNetMPlans.json")
            self.res["plans"]["labelled_nnUNetResEncUNetMPlans"] = config_summary(f, "3d_fullres")

    def step(self):
        cmd = [sys.executable, os.path.join(REPO, "scripts", "bench_pretrain_step.py"), "--plans", self.corpus_plans,
               "-c", self.config, "--iters", self.a.iters, "--warmup", 1, "--threads", self.a.threads,
               "--fused-adamw", "--device", self.a.device, "--out", os.path.join(self.out, "pretrain_step.json")]
        cmd += ["--amp"] if self.a.device == "cuda" else []
        rec = self.stage("step", cmd)
        if rec["over_memory_limit"]:
            first = dict(rec)
            rec = self.stage("step", cmd + ["--batch", 1])
            rec["batch_planned_attempt"] = first
            self.save()

    def _pretrain_cmd(self, trainer, results=None):
        return lambda: ["nnUNetv2_train", CORPUS, self.train_config, "all", "-tr", trainer, "-p", "mmPretrainPlans",
                        "-device", self.a.device]

    def pretrain(self):
        self.train("pretrain", self._pretrain_cmd("nnUNetTrainerMMPretrain_rehearsal"))
        self._epoch("pretrain", 2)

    def pretrain_cpu(self):
        self.train("pretrain_cpu", self._pretrain_cmd("nnUNetTrainerMMPretrain_cpuRehearsal"))
        self._epoch("pretrain_cpu", 2)

    def _epoch(self, name, iters):
        ep = epoch_times(self.res["stages"][name]["log"])
        if ep:
            self.res["stages"][name].update(epoch_s=ep, train_iterations=iters,
                                            s_per_iteration_incl_val=round(ep[0] / iters, 1))
        self.save()

    def ddp(self):
        results = os.path.join(self.work, "nnUNet_results_ddp")
        env = dict(self.env, nnUNet_results=results)
        # nnU-Net splits the global batch over the ranks (batch 2 -> 1 per rank); --ddp-patch: the same
        # architecture, template grid and data at a smaller patch where two ranks do not fit in memory
        config = self.config if not self.a.ddp_patch else add_batch_config(self.corpus_plans, self.config, 2,
                                                                           self.a.ddp_patch)
        self.res["derived"]["ddp_config"] = config
        trainer = DDP_TRAINERS[self.a.ddp_objective]
        self.res["derived"]["ddp_trainer"] = trainer
        rec = self.stage("ddp", ["nnUNetv2_mmpretrain_train_ddp", CORPUS, config, "all", "-tr",
                                 trainer, "-p", "mmPretrainPlans", "-nproc",
                                 2 if self.a.device == "cpu" else 1, "--threads", 1, "--device", self.a.device],
                         env=env)
        if rec["rc"] == 0:
            self._epoch("ddp", 1)

    def export(self):
        ck = os.path.join(self.fold("nnUNetTrainerMMPretrain_rehearsal"), "checkpoint_final.pth")
        shutil.rmtree(os.path.join(self.work, "bundle"), ignore_errors=True)
        rec = self.stage("export", ["nnUNetv2_mmpretrain_export", ck, "-o", os.path.join(self.work, "bundle")])
        if rec["rc"] == 0:
            files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(self.work, "bundle")) for f in fs]
            self.res["disk"]["bundle_MiB"] = round(sum(map(os.path.getsize, files)) / 2 ** 20, 1)

    def transfer(self):
        rec = self.stage("transfer", ["nnUNetv2_mmpretrain_transfer_plans", "-s", CORPUS, "-t", SEG, "-c", self.config,
                                      "--bundle", os.path.join(self.work, "bundle"), "--preprocess", "-np", self.a.np])
        if rec["rc"] == 0:
            self.record_preprocessed("labelled", SEG_NAME, self.seg_plans, rec)
            if self.train_config != self.config:
                add_batch_config(self.seg_plans, self.config, 1)

    def finetune(self):
        tr = "nnUNetTrainerMMFinetune_rehearsal"
        self.res["derived"].setdefault("pretrain_config", self.train_config)
        self.train_config = self.config   # the planned batch first here too; batch 1 when it does not fit
        self.train("finetune", lambda: ["nnUNetv2_train", SEG, self.train_config, 0, "-tr", tr, "-p", "mmPretrainPlans",
                                        "-device", self.a.device])
        self._epoch("finetune", 2)

    def _predict(self, name, cmd_head, inp):
        out = os.path.join(self.work, f"pred_{name}")
        shutil.rmtree(out, ignore_errors=True)
        return self.stage(name, cmd_head + ["-i", inp, "-o", out, "-d", SEG, "-c", self.train_config, "-f", 0, "-tr",
                                            "nnUNetTrainerMMFinetune_rehearsal", "-p", "mmPretrainPlans",
                                            "-chk", "checkpoint_final.pth", "-device", self.a.device])

    def predict(self):
        self._predict("predict", ["nnUNetv2_predict", "--disable_tta", "-npp", 1, "-nps", 1],
                      os.path.join(self.raw, SEG_NAME, "imagesTs"))

    def predict_fill(self):
        inp = os.path.join(self.work, "imagesTs_noflair")
        shutil.rmtree(inp, ignore_errors=True)
        os.makedirs(inp)
        with open(os.path.join(self.raw, SEG_NAME, "dataset.json")) as f:
            channels = json.load(f)["channel_names"]
        drop = next((k for k, v in channels.items() if v.lower() == "flair"), sorted(channels)[-1])
        for src in glob.glob(os.path.join(self.raw, SEG_NAME, "imagesTs", "*.nii.gz")):
            if not src.endswith(f"_{int(drop):04d}.nii.gz"):
                os.symlink(src, os.path.join(inp, os.path.basename(src)))
        self.res["derived"]["predict_fill_removed_channel"] = channels[drop]
        self._predict("predict_fill", ["nnUNetv2_mmpretrain_predict", "--bundle", os.path.join(self.work, "bundle"),
                                       "-np", 1], inp)

    def loader(self):
        self.stage("loader", [sys.executable, os.path.join(REPO, "scripts", "bench_loader.py"), "--root", self.work,
                              "-c", self.config, "--batches", self.a.loader_batches, "--workers", 0, 1, 2,
                              "--out", os.path.join(self.out, "loader.json")])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "bench_output", "real_size"))
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=None, help="run these (default: all)")
    ap.add_argument("--resume", action="store_true", help="keep OUT/rehearsal.json; without --stages, skip the "
                                                          "stages that succeeded there")
    ap.add_argument("--num-train", type=int, default=8)
    ap.add_argument("--corpus-cases", type=int, default=8, help="corpus cases per source (2 sources)")
    ap.add_argument("-c", "--config", default="3d_fullres")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the same stages on one GPU (AMP; DDP with -nproc 1, NCCL)")
    ap.add_argument("-np", type=int, default=2, help="processes for phantoms and preprocessing")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of the training processes")
    ap.add_argument("--iters", type=int, default=2, help="timed iterations of the step benchmark")
    ap.add_argument("--loader-batches", type=int, default=12)
    ap.add_argument("--ddp-objective", choices=sorted(DDP_TRAINERS), default="brainmvp",
                    help="the DDP stage's trainer: BrainMVP's defaults or a plain MAE (one view per sample: two ranks "
                         "at the real patch fit a 24 GB machine, 9.3 GiB each in scripts/BENCHMARKS.md)")
    ap.add_argument("--ddp-patch", type=int, default=None,
                    help="DDP stage at this cubic patch (batch 2, 1 per rank) instead of the planned one")
    ap.add_argument("--mem-limit-gib", type=float, default=14.0, help="per process")
    ap.add_argument("--tree-limit-gib", type=float, default=18.0, help="all processes of a stage together")
    a = ap.parse_args()
    r = Rehearsal(a)
    t0 = time.perf_counter()
    for name in STAGES:
        if name not in (a.stages or STAGES) or (a.resume and not a.stages and r.ok(name)):
            continue
        getattr(r, name)()
        if not r.ok(name):
            print(f"error: stage {name} did not succeed; see {r.res['stages'][name]['log']}", file=sys.stderr)
            if name in ("phantoms", "plan_corpus", "pretrain", "export", "transfer", "finetune"):
                break
    for name, iters in (("pretrain", 2), ("pretrain_cpu", 2), ("ddp", 1), ("finetune", 2)):
        if r.ok(name) and "epoch_s" not in r.res["stages"][name]:
            r._epoch(name, iters)
    r.res.setdefault("derived", {})["this_invocation_wall_s"] = round(time.perf_counter() - t0, 1)
    r.save()
    print(write_report(r.out))


if __name__ == "__main__":
    main()
