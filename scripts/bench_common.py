"""Helpers shared by the ``scripts/bench_*.py`` benchmarks (not a benchmark itself).

Machine description (cores, load average), a plain-text table printer and the JSON result
writer. The benchmark scripts import it as ``bench_common`` (``scripts/`` is on ``sys.path`` when
a script there is run as ``python scripts/bench_X.py``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(REPO, "bench_output")


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> Dict:
    """Cores, load, Python and library versions; call it at the start of a run."""
    info = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "load_average_start": load_average()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def print_table(rows: Sequence[Sequence], headers: Sequence[str], title: Optional[str] = None) -> str:
    """Markdown-style table (printed and returned) so it can be pasted into BENCHMARKS.md."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = ([f"\n{title}"] if title else []) + [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_result(out: Optional[str], name: str, result: Dict) -> str:
    """Write ``result`` (plus the load average at the end) as JSON; default
    ``bench_output/<name>.json`` in the repository. Returns the path."""
    path = out or os.path.join(DEFAULT_OUT_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result.setdefault("machine", {})["load_average_end"] = load_average()
    result["argv"] = sys.argv
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nresult written to {path}; load average at start {result['machine'].get('load_average_start')}, "
          f"end {result['machine']['load_average_end']}", flush=True)
    return path


# ---------------------------------------------------------------- scripts/gpu_check.sh
def _pretrain_row(label: str, fold: str, log_file: str) -> List:
    """One pretraining run of the GPU check: does its final checkpoint load weights-only, epochs,
    AMP, process group, median epoch time (epochs after the first)."""
    import statistics
    import torch
    ck_file = os.path.join(fold, "checkpoint_final.pth")
    if not os.path.isfile(ck_file):
        return [label, "FAILED: no checkpoint_final.pth", "", "", "", ""]
    ck = torch.load(ck_file, map_location="cpu", weights_only=True)
    lg = ck.get("nnunet_logging", {})
    ep = [e - s for s, e in zip(lg.get("epoch_start_timestamps", []), lg.get("epoch_end_timestamps", []))]
    loss = ck["mm_log"]["train_loss"]
    text = open(log_file, errors="replace").read() if os.path.isfile(log_file) else ""
    group = "NCCL" if ", NCCL," in text else "gloo" if ", gloo," in text else "none"
    finite = all(v == v and abs(v) != float("inf") for v in loss)
    return [label, f"{ck['current_epoch']} epochs, loss {loss[0]:.3g} -> {loss[-1]:.3g}{'' if finite else ' NOT FINITE'}",
            "on" if ck.get("grad_scaler_state") else "off", group,
            f"{statistics.median(ep[1:] or ep):.2f}" if ep else "?", ck["init_args"]["device"]]


def gpu_check_report(out_dir: str, work: str, config: str, dry_run: bool) -> str:
    """The Markdown report of scripts/gpu_check.sh from what its steps left in ``out_dir``."""
    info = machine_info()
    res = lambda r: os.path.join(work, r, "Dataset992_PhantomCorpus",
                                 f"nnUNetTrainerMMPretrain_5epochs__mmPretrainPlans__{config}", "fold_all")
    lines = [f"# GPU check ({info['time']}, {info.get('cuda_device', 'no CUDA device')}, torch {info.get('torch')})", ""]
    if dry_run:
        lines += ["**GPU figures: unmeasured.** This is the CPU dry run at a tiny patch: it checks that every "
                  "step of the GPU check runs; its times say nothing about a GPU.", ""]
    plans = os.path.join(work, "nnUNet_preprocessed", "Dataset992_PhantomCorpus", "mmPretrainPlans.json")
    if os.path.isfile(plans):
        with open(plans) as f:
            c = json.load(f)["configurations"]
        full = c.get("3d_fullres", {})
        lines += [f"Corpus plan (ResEnc-M preset): 3d_fullres patch {full.get('patch_size')}, batch "
                  f"{full.get('batch_size')}; measured configuration: {config}", ""]
    rows = [_pretrain_row("nnUNetv2_train -num_gpus 1", res("results_train"), os.path.join(out_dir, "logs", "train.log")),
            _pretrain_row("nnUNetv2_mmpretrain_train_ddp -nproc 1", res("results_ddp"),
                          os.path.join(out_dir, "logs", "train_ddp.log"))]
    lines.append(_md(rows, ["pretraining (5 epochs x 3 iterations)", "result", "AMP", "process group",
                            "median epoch s", "device"]))
    step = _load(os.path.join(out_dir, "pretrain_step.json"))
    if step:
        mem = step.get("cuda_memory", {})
        rows = [[k, f"{step['median_s'][k] * 1e3:.1f}", f"{step['mean_s'][k] * 1e3:.1f}",
                 f"{mem[k]['peak_MiB']:.0f}" if k in mem else "-"] for k in ("brainmvp", "2x_mae")]
        lines.append(_md(rows, ["training step", "median ms", "mean ms", "peak CUDA MiB"]))
        lines.append(f"BrainMVP step / two MAE steps: {step['ratio_median']:.3f} (overhead "
                     f"{step['overhead_pct_median']:+.1f} %, target < 10 %: {'met' if step['target_met'] else 'NOT met'}); "
                     f"patch {step['config']['patch']}, batch {step['config']['batch']}, AMP "
                     f"{'on' if step['config'].get('amp') else 'off'}\n")
    ft = _load(os.path.join(out_dir, "finetune_step.json"))
    if ft:
        import statistics
        rows = [[k, f"{statistics.median(v) * 1e3:.1f}", f"{min(v) * 1e3:.1f}"] for k, v in ft["times_s"].items()]
        lines.append(_md(rows, ["fine-tuning step", "median ms", "min ms"]))
        lines.append(f"nnUNetTrainerMMFinetune / nnUNetTrainer (median): {ft['median_ratio']:.3f} "
                     f"({(ft['median_ratio'] - 1) * 100:+.1f} %, goal within 2 %)\n")
    stages = os.path.join(out_dir, "stages.txt")
    if os.path.isfile(stages):
        rows = [ln.rsplit(" ", 1) for ln in open(stages).read().splitlines() if ln.strip()]
        lines.append(_md(rows + [["total", str(sum(int(r[1]) for r in rows))]], ["stage", "wall s"]))
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(text + "\n")
    return text


def _load(path: str) -> Optional[Dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _md(rows, headers) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"
