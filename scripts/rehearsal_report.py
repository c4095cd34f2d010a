"""The Markdown report of scripts/rehearse_real_size.py (``OUT/rehearsal.md``) from what its stages
left in OUT: rehearsal.json, pretrain_step.json, loader.json. Not a benchmark itself.

    python scripts/rehearsal_report.py [OUT]

The projection (issue 24, item 5) uses the measured seconds and bytes per case; its assumptions are
printed with it.
"""
from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import REPO, _md  # noqa: E402

#: nnU-Net's statement for ResEnc-M: 1,000 epochs x 250 iterations in about 12 h on one A100
A100_RESENC_M_S_PER_ITER = 12 * 3600 / (1000 * 250)


# ---------------------------------------------------------------- readers shared with rehearse_real_size.py
def folder_bytes(folder: str, pattern: str = "*") -> tuple:
    files = glob.glob(os.path.join(folder, pattern))
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f)), len(files)


def config_summary(plans_file: str, config: str) -> dict:
    with open(plans_file) as f:
        cfgs = json.load(f)["configurations"]
    c = dict(cfgs[config])
    while c.get("inherits_from"):
        parent = dict(cfgs[c.pop("inherits_from")])
        parent.update(c)
        c = parent
    a = c["architecture"]["arch_kwargs"]
    return {"patch": c["patch_size"], "batch": c["batch_size"], "spacing": c["spacing"], "stages": a["n_stages"],
            "features": a["features_per_stage"], "blocks": a.get("n_blocks_per_stage"),
            "network": c["architecture"]["network_class_name"].rsplit(".", 1)[-1],
            "median_image_size": c.get("median_image_size_in_voxels"), "data_identifier": c.get("data_identifier")}


def epoch_times(log: str) -> list:
    """Epoch wall times from the trainer's output ("Epoch time: X s"; nnU-Net's stock checkpoints hold
    numpy scalars that torch.load(weights_only=True) refuses, so the log is read instead)."""
    import re
    with open(log, errors="replace") as f:
        return [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", f.read())]


def _load(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _plan_rows(plans: dict) -> str:
    rows = [[k, v["network"], "x".join(map(str, v["patch"])), v["batch"], v["stages"],
             "-".join(map(str, v["features"])), "x".join(f"{s:g}" for s in v["spacing"]),
             "x".join(map(str, v["median_image_size"] or []))] for k, v in plans.items()]
    return _md(rows, ["plans", "network", "patch", "batch", "stages", "features", "spacing mm", "median size"])


def _stage_rows(stages: dict) -> str:
    rows = []
    for k, r in stages.items():
        status = "over memory limit" if r.get("over_memory_limit") else ("ok" if r["rc"] == 0 else f"failed ({r['rc']})")
        first = r.get("batch_planned_attempt")
        if first:
            status += f"; planned batch stopped at {first['peak_rss_tree_MiB']} MiB after {first['wall_s']} s, rerun at batch 1"
        per_it = r.get("s_per_iteration_incl_val", "")
        rows.append([k, status, r["wall_s"], per_it, r["peak_rss_main_MiB"], r["peak_rss_largest_child_MiB"],
                     r["max_children"], r["peak_rss_tree_MiB"],
                     f"{'/'.join(map(str, r['load_start']))} -> {'/'.join(map(str, r['load_end']))}"])
    return _md(rows, ["stage", "result", "wall s", "s/iteration (epoch / train iterations)", "peak RSS main MiB",
                      "largest child MiB", "children", "tree MiB", "load 1/5/15 start -> end"])


def _step(step: dict) -> str:
    c = step["config"]
    rows = [[k, f"{step['median_s'][k]:.1f}", f"{step['mean_s'][k]:.1f}"] for k in ("brainmvp", "2x_mae", "overhead_only")]
    return (_md(rows, ["variant", "median s", "mean s"])
            + f"\nPatch {c['patch']}, batch {c['batch']}, template grid {c['grid']}, {c['threads']} threads, "
              f"{c['iters']} iterations after {c['warmup']} warm-up, load at start "
              f"{step['machine']['load_average_start']}. BrainMVP / 2 MAE (median): **{step['ratio_median']:.3f}** "
              f"(target <= 1.10: {'met' if step['ratio_median'] <= 1.10 else 'NOT met'}). Network "
              f"{step['params']['network_M']:.1f} M parameters; template bank {step['params']['templates_M']:.1f} M "
              f"parameters = {step['template_bank_MiB']:.0f} MiB, with gradient and AdamW states "
              f"{step['template_bank_with_grad_adamw_MiB']:.0f} MiB.\n")


def _loader(ld: dict) -> str:
    rows = [[r["loader"], r["workers"], r["batch"], r["first_batch_s"], r["s_per_batch"], r["samples_per_s"],
             r["samples_per_s_per_process"]] for r in ld["runs"]]
    text = _md(rows, ["loader", "workers", "batch", "first batch s", "s/batch", "samples/s", "samples/s per process"])
    for k, v in ld.get("workers_needed", {}).items():
        text += (f"\n* {k}: {v['samples_per_s_one_process']} samples/s from one process -> "
                 f"**{v['workers_for_target']} workers** for {ld['target_samples_per_s']:g} samples/s "
                 f"(nnU-Net's default 12: {'met' if v['meets_with_nnunet_default'] else 'NOT met'}); "
                 f"{v.get('samples_per_cpu_s')} samples per CPU-second of one process -> "
                 f"{v.get('workers_for_target_on_idle_cores')} workers where each has a core to itself.")
    for p in ld.get("profiles", []):
        text += (f"\n\nProfile of the main process, {p['loader']} loader, {p.get('workers', 0)} workers ({p['batches']} "
                 f"batches of {p['batch']}, {p['total_s']} s):\n\n")
        text += _md([[f"{r['share'] * 100:.1f} %", r["tottime_s"], r["function"]] for r in p["top_by_own_time"][:8]],
                    ["share", "own s", "function"])
    return text + "\n"


def _preprocessing_seconds(res: dict):
    """Seconds of the corpus preprocessing alone, from the command's own summary line."""
    import re
    log = res.get("stages", {}).get("plan_corpus", {}).get("log")
    if not log or not os.path.isfile(log):
        return None
    hits = re.findall(r" in ([0-9.]+) s \([0-9.]+ cases/s\)", open(log, errors="replace").read())
    return float(hits[-1]) if hits else None


def projection(res: dict, step: dict) -> str:
    disk = res.get("disk", {})
    cp = disk.get("corpus_preprocessed")
    if not cp:
        return "(no corpus preprocessing measured)\n"
    folder = os.path.join(res.get("args", {}).get("out", ""), "work", "nnUNet_preprocessed", "Dataset992_PhantomCorpus",
                          "mmPretrainPlans_3d_fullres")
    if os.path.isdir(folder):   # recount: one .pkl per case (a case has a data and a seg .b2nd)
        n = len([f for f in os.listdir(folder) if f.endswith(".pkl")])
        cp = dict(cp, cases=n, MiB_per_case=round(cp["MiB"] / n, 2),
                  s_per_case=round(res["stages"]["plan_corpus"]["wall_s"] / n, 2))
    whole = cp["s_per_case"] * res.get("args", {}).get("np", 1)
    pre_s = _preprocessing_seconds(res)
    if pre_s:   # the preprocessing alone (its own log line), per case and per process
        cp = dict(cp, s_per_case=round(pre_s * res.get("args", {}).get("np", 1) / cp["cases"], 2))
    raw = disk.get("raw", {}).get("Dataset992_PhantomCorpus", {})
    raw_per_case = raw.get("raw_MiB", 0) / max(cp["cases"], 1)
    rows = []
    for n in (1000, 10000):
        for cores in (16, 64):
            rows.append([n, f"{n * raw_per_case / 1024:.0f}", f"{n * cp['MiB_per_case'] / 1024:.0f}", cores,
                         f"{n * cp['s_per_case'] / cores / 3600:.2f}", f"{n * whole / cores / 3600:.2f}"])
    text = _md(rows, ["subjects", "raw GiB (.nii.gz)", "preprocessed GiB (.b2nd)", "cores", "hours, preprocessing",
                      "hours, whole command (validation + fingerprint + planning + preprocessing)"])
    how = (f"the preprocessing alone ({pre_s} s for {cp['cases']} cases with {res['args']['np']} processes), in "
           f"process-seconds per case" if pre_s else "the whole plan_and_preprocess call divided by the cases")
    text += (f"\nMeasured here: {cp['s_per_case']} s and {cp['MiB_per_case']} MiB per preprocessed corpus case "
             f"({cp['cases']} cases, mixed 4- and 3-modality subjects; the seconds are {how}; "
             f"the whole command, validation, fingerprint and planning included, took {whole:.1f} process-seconds per case), "
             f"{raw_per_case:.1f} MiB raw per case. Assumptions: cases take as long as these phantoms "
             f"(177x213x187 at 1 mm, BraTS's 240x240x155 grid crops to a similar brain box); preprocessing scales "
             f"linearly with cores (on this 2-core VM it did not: see section 2); no resampling (the data are at "
             f"1 mm already; resampling anisotropic scans costs more).\n")
    if step:
        b = res.get("plans", {}).get("corpus_mmPretrainPlans", {}).get("batch", step["config"]["batch"])   # planned
        gpu_iter = A100_RESENC_M_S_PER_ITER * step["ratio_median"] * 2
        text += (f"\nPretraining on one GPU (estimate, not measured): nnU-Net states ~{A100_RESENC_M_S_PER_ITER:.3f} s per "
                 f"ResEnc-M training iteration on an A100 (1,000 x 250 iterations in ~12 h). A BrainMVP step puts 2B "
                 f"samples through the network and cost {step['ratio_median']:.2f}x two MAE steps here, so take "
                 f"~{gpu_iter:.2f} s per iteration (upper side: the pretraining decoder is lighter than nnU-Net's). "
                 f"One nnU-Net epoch (250 iterations) is then ~{250 * gpu_iter / 60:.1f} min; the plans' 1,500 epochs "
                 f"~{1500 * 250 * gpu_iter / 3600:.0f} h. One pass with one patch per subject at batch {b}: "
                 f"1,000 subjects ~{1000 / b * gpu_iter / 60:.0f} min, 10,000 ~{10000 / b * gpu_iter / 3600:.1f} h. "
                 f"The pretraining loader must then deliver {b / gpu_iter:.1f} samples/s (each sample gives both "
                 f"views); the ratio was measured at batch {step['config']['batch']} on the CPU.\n")
    return text


def write_report(out: str) -> str:
    res = _load(os.path.join(out, "rehearsal.json")) or {}
    step = _load(os.path.join(out, "pretrain_step.json"))
    ld = _load(os.path.join(out, "loader.json"))
    m = res.get("machine", {})
    parts = [f"# Real-size rehearsal ({m.get('time')}, {m.get('cpu_count')} cores, torch {m.get('torch')}, "
             f"load at start {m.get('load_average_start')})\n"]
    if res.get("plans"):
        parts += ["## Plans\n", _plan_rows(res["plans"])]
    if res.get("stages"):
        wall = sum(r["wall_s"] for r in res["stages"].values())
        parts += ["## Stages\n", _stage_rows(res["stages"]), f"Sum of stage wall times: {wall:.0f} s "
                  f"({wall / 60:.1f} min); this invocation {res.get('derived', {}).get('this_invocation_wall_s')} s.\n"]
    if res.get("disk"):
        parts += ["## Disk\n", "```\n" + json.dumps(res["disk"], indent=1) + "\n```\n"]
    if step:
        parts += ["## BrainMVP step against two MAE steps\n", _step(step)]
    if ld:
        parts += ["## Loaders\n", _loader(ld)]
    parts += ["## Projection\n", projection(res, step)]
    text = "\n".join(parts)
    with open(os.path.join(out, "rehearsal.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    print(write_report(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "bench_output", "real_size")))
