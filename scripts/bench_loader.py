"""Data-loader throughput at the planned patch: samples/s per worker process.

Two loaders, each built by its trainer's own code (nothing re-implemented here):

* pretraining: ``nnUNetTrainerMMPretrain.get_dataloaders()`` on the corpus (992): per sample one
  case, one (target, partner) pair of its modalities, one random patch, the atlas position for the
  template crop (masks are drawn in the step, on the device, and are not part of the loader);
* fine-tuning: ``nnUNetTrainer.get_dataloaders()`` on the labelled dataset (990, fold 0, plans
  ``mmPretrainPlans``): nnU-Net's own sampling, spatial / intensity augmentation and deep
  supervision targets.

For each worker count (``$nnUNet_n_proc_DA``; 0 = in the main process) the first batch (worker
start-up) is not timed, then ``--batches`` batches are. One profile (cProfile) of each loader's
sample production in the main process says where the time goes. The target: at ~0.17 s per
ResEnc-M iteration on an A100 (nnU-Net's figure: 1,000 x 250 iterations in ~12 h), batch 2
needs 12 samples/s; nnU-Net's default is 12 worker processes per GPU.

    python scripts/bench_loader.py --root bench_output/real_size/work [-c 3d_fullres] [--batches 6]
        [--workers 0 1 2] [--loaders pretrain finetune] [--out FILE]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info, print_table, write_result  # noqa: E402

TARGET_SAMPLES_PER_S = 12.0   # batch 2 every ~0.17 s
NNUNET_DEFAULT_WORKERS = 12   # get_allowed_n_proc_DA() without nnUNet_n_proc_DA on an unknown host


def build(kind: str, config: str, workers: int):
    """(training loader, batch size, trainer) exactly as the trainer makes them."""
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    if kind == "pretrain":
        from nnunet_mmpretrain.training.pretrain_corpus import load_corpus_properties
        tr = get_trainer_from_args("992", config, "all", "nnUNetTrainerMMPretrain", "mmPretrainPlans",
                                   device=torch.device("cpu"))
        tr._set_batch_size_and_oversample()
        tr.dataset_class, tr.corpus_props = load_corpus_properties(tr.preprocessed_dataset_folder,
                                                                   tr.plans_manager.dataset_name)
    else:
        tr = get_trainer_from_args("990", config, 0, "nnUNetTrainer", "mmPretrainPlans", device=torch.device("cpu"))
        tr.initialize()
    dl_tr, dl_val = tr.get_dataloaders()
    return dl_tr, dl_val, tr.batch_size


def _finish(*loaders):
    for dl in loaders:
        if hasattr(dl, "_finish"):
            dl._finish()


def measure(kind: str, config: str, workers: int, batches: int) -> dict:
    dl, dl_val, bs = build(kind, config, workers)
    t = time.perf_counter()
    next(dl)
    first = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(dl)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    _finish(dl, dl_val)
    sps = batches * bs / dt
    r = {"loader": kind, "workers": workers, "batch": bs, "batches": batches, "first_batch_s": round(first, 2),
         "s_per_batch": round(dt / batches, 3), "samples_per_s": round(sps, 3),
         "samples_per_s_per_process": round(sps / max(workers, 1), 3)}
    if workers == 0:   # CPU seconds of the main process per sample: what a core busy with nothing else delivers
        r["cpu_s_per_sample"] = round(cpu / (batches * bs), 3)
        r["samples_per_cpu_s"] = round(batches * bs / cpu, 3)
    return r


def profile(kind: str, config: str, batches: int, top: int = 15, workers: int = 0) -> dict:
    """cProfile of the main process over ``batches`` batches: produced there (0 workers), or
    received from ``workers`` worker processes (what the training loop waits on)."""
    dl, dl_val, bs = build(kind, config, workers)
    next(dl)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(batches):
        next(dl)
    pr.disable()
    _finish(dl, dl_val)
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    total = st.total_tt
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{os.path.basename(fn)}:{line}({name})", "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["tottime_s"])
    return {"loader": kind, "workers": workers, "batches": batches, "batch": bs, "total_s": round(total, 2),
            "top_by_own_time": [dict(r, tottime_s=round(r["tottime_s"], 3), cumtime_s=round(r["cumtime_s"], 3),
                                     share=round(r["tottime_s"] / total, 3)) for r in rows[:top]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder with nnUNet_raw / nnUNet_preprocessed")
    ap.add_argument("-c", default="3d_fullres")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--loaders", nargs="+", choices=["pretrain", "finetune"], default=["pretrain", "finetune"])
    ap.add_argument("--profile-batches", type=int, default=3)
    ap.add_argument("--profile-workers", type=int, default=1,
                    help="also profile the main process receiving --batches batches from this many workers (0: no)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.environ[sub] = os.path.join(root, sub)
    os.environ.setdefault("nnUNet_results", os.path.join(root, "nnUNet_results_loader"))
    from nnunet_mmpretrain.training.lookup import ext_trainer_value
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    import torch
    torch.set_num_threads(1)   # as in nnU-Net's workers
    res = {"machine": machine_info(), "runs": [], "profiles": [], "target_samples_per_s": TARGET_SAMPLES_PER_S}
    print(f"load average at start: {res['machine']['load_average_start']} on {os.cpu_count()} cores", flush=True)
    for kind in a.loaders:
        for w in a.workers:
            r = measure(kind, a.c, w, a.batches)
            print(r, flush=True)
            res["runs"].append(r)
        res["profiles"].append(profile(kind, a.c, a.profile_batches))
        if a.profile_workers:
            res["profiles"].append(profile(kind, a.c, a.batches, workers=a.profile_workers))
    rows = []
    for kind in a.loaders:
        single = [r for r in res["runs"] if r["loader"] == kind and r["workers"] in (0, 1)]
        per = max(r["samples_per_s_per_process"] for r in single)   # one process producing alone
        need = math.ceil(TARGET_SAMPLES_PER_S / per)
        zero = [r for r in res["runs"] if r["loader"] == kind and r["workers"] == 0]
        per_core = zero[0]["samples_per_cpu_s"] if zero else None
        res.setdefault("workers_needed", {})[kind] = {
            "samples_per_s_one_process": per, "workers_for_target": need,
            "meets_with_nnunet_default": need <= NNUNET_DEFAULT_WORKERS, "samples_per_cpu_s": per_core,
            "workers_for_target_on_idle_cores": math.ceil(TARGET_SAMPLES_PER_S / per_core) if per_core else None}
        rows += [(kind, r["workers"], r["batch"], r["s_per_batch"], r["samples_per_s"], r["samples_per_s_per_process"])
                 for r in res["runs"] if r["loader"] == kind]
    res["table"] = print_table(rows, ["loader", "workers", "batch", "s/batch", "samples/s", "samples/s per process"],
                               f"loaders at {a.c} (load {res['machine']['load_average_start']})")
    for kind, v in res["workers_needed"].items():
        print(f"{kind}: {v['samples_per_s_one_process']} samples/s per process -> {v['workers_for_target']} workers for "
              f"{TARGET_SAMPLES_PER_S:g} samples/s (nnU-Net default {NNUNET_DEFAULT_WORKERS}: "
              f"{'met' if v['meets_with_nnunet_default'] else 'NOT met'}); per CPU-second {v['samples_per_cpu_s']} "
              f"samples -> {v['workers_for_target_on_idle_cores']} workers on idle cores")
    for p in res["profiles"]:
        print(f"\nprofile {p['loader']}, main process with {p['workers']} workers ({p['batches']} batches of "
              f"{p['batch']}, {p['total_s']} s):")
        for r in p["top_by_own_time"][:10]:
            print(f"  {r['share'] * 100:5.1f} %  {r['tottime_s']:7.2f} s  {r['function']}")
    write_result(a.out, "bench_loader", res)


if __name__ == "__main__":
    main()
