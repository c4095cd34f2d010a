"""A fine-tuning iteration with nnUNetTrainerMMFinetune against the stock nnUNetTrainer.

Same plans, configuration, fold, batch and data; both trainers are set up as nnUNetv2_train does
(``on_train_start``: dataloaders, and for ours the bundle injection), then their ``train_step``
is timed in alternation (A, B, A, B, ...) so that machine load drifts affect both alike. Goal of
the transfer issue: within 2 %.

Needs a planned downstream dataset with a bundle, e.g. the demo's output::

    bash scripts/demo.sh            # once
    .venv/bin/python scripts/bench_finetune_step.py --root demo_output --dataset 990 -c 3d_demo

On a GPU (``--device cuda``) both trainers run as ``nnUNetv2_train`` runs them there (AMP); set
``nnUNet_compile=f`` to time them without torch.compile (scripts/gpu_check.sh does).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import load_average, print_table, write_result  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="demo_output", help="folder with nnUNet_raw / nnUNet_preprocessed")
    p.add_argument("--dataset", default="990")
    p.add_argument("-c", default="3d_demo")
    p.add_argument("-p", default="mmPretrainPlans")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--out", default=None, help="JSON result (default bench_output/finetune_step.json)")
    a = p.parse_args(argv)
    root = os.path.abspath(a.root)
    os.environ["nnUNet_raw"] = os.path.join(root, "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = os.path.join(root, "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="bench_finetune_")
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    import torch
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fold = a.fold if a.fold == "all" else int(a.fold)
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_mmpretrain.training.lookup import ext_trainer_value
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    load0 = load_average()
    trainers = {}
    for name in ("nnUNetTrainer", "nnUNetTrainerMMFinetune"):
        tr = get_trainer_from_args(a.dataset, a.c, fold, name, a.p, device=device)
        tr.on_train_start()
        tr.on_train_epoch_start()
        trainers[name] = tr
    times = {k: [] for k in trainers}
    for i in range(a.warmup + a.iters):
        for name, tr in trainers.items():
            batch = next(tr.dataloader_train)
            sync()
            t = time.perf_counter()
            tr.train_step(batch)
            sync()
            if i >= a.warmup:
                times[name].append(time.perf_counter() - t)
    for tr in trainers.values():
        tr.on_train_end()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["nnUNetTrainerMMFinetune"] / med["nnUNetTrainer"]
    rows = [[k, f"{1000 * statistics.mean(v):.1f}", f"{1000 * med[k]:.1f}", f"{1000 * min(v):.1f}"]
            for k, v in times.items()]
    print(f"dataset {a.dataset}, {a.c}, plans {a.p}; {a.iters} steps each after {a.warmup} warm-up, "
          f"{a.device}{'' if a.device == 'cuda' else f', {a.threads} threads'}; load {load0}")
    print_table(rows, ["trainer", "mean ms", "median ms", "min ms"])
    print(f"ratio (median) MMFinetune / stock: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; goal within 2 %)")
    write_result(a.out, "finetune_step", {"times_s": times, "median_ratio": ratio, "args": vars(a),
                                          "machine": {"load_average_start": load0}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
