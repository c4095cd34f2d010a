"""What a bundle says about itself: the ``bundle.json`` metadata, ``MODEL_CARD.md``, and the
check behind ``nnUNetv2_mmpretrain_export --verify``.

:func:`describe_checkpoint` gathers, from a pretraining checkpoint and the trainer folder it sits
in: the corpus (sources, scans per modality, case count, SHA256 of the sorted case list with each
case's modalities), method and objective, schedule, final proxy-task errors against their
baselines (from the checkpoint's ``mm_log``, the ``pretraining_summary/summary.json`` beside it when
present), plans and fingerprint. :func:`bundle_metadata` adds geometry, versions, the command,
the licence and the SHA256 of every file of the bundle folder.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
from typing import List, Optional

from nnunet_mmpretrain.io_utils import sha256_file
from nnunet_mmpretrain.planning.compat import resolved_configuration
from nnunet_mmpretrain.transfer.bundle_format import BUNDLE_FORMAT, META_FILE
from nnunet_mmpretrain.transfer.stem import SAME_FILTER_COSINE, stem_kernel_cosines

#: top-level bundle.json keys that --verify requires
REQUIRED = ("format", "weights_file", "weights_sha256", "files", "corpus", "method", "schedule", "proxy_task",
            "plans_and_fingerprint", "modality_order", "axis_order", "template_geometry", "versions", "code",
            "command", "license", "stem_origin")
DEFAULT_LICENSE = "unspecified (set it with nnUNetv2_mmpretrain_export --license)"
CARD_FILE = "MODEL_CARD.md"
log = logging.getLogger(__name__)


def _json_path(*cands: str) -> Optional[str]:
    return next((c for c in cands if c and os.path.isfile(c)), None)


def _finite(x):
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def current_command(argv: Optional[List[str]] = None, prog: str = "nnUNetv2_mmpretrain_export") -> str:
    """The command line as a user would type it again."""
    return shlex.join([prog, *(sys.argv[1:] if argv is None else argv)])


def _proxy_task(mm_log: dict) -> dict:
    """Last validation masked-voxel MSE per view and both baselines (patch mean, fill left in place)."""
    out = {}
    for v, name in (("md", "template_view"), ("cmr", "cross_modal_view"), ("joint", "joint_view")):
        if v == "joint" and _finite((mm_log.get("val_joint_masked_mse") or [None])[-1]) is None:
            continue
        last = lambda k: _finite((mm_log.get(f"val_{v}_{k}") or [None])[-1])
        err, pm, fill = last("masked_mse"), last("baseline_patch_mean"), last("baseline_fill")
        out[name] = {"masked_mse": err, "baseline_patch_mean": pm, "baseline_fill": fill,
                     "ratio_to_patch_mean": err / pm if err is not None and pm else None,
                     "ratio_to_fill": err / fill if err is not None and fill else None}
    out["note"] = "validation masked-voxel MSE; ratio < 1 means better than the baseline"
    return out


def describe_checkpoint(ck: dict, checkpoint_path: str, settings: Optional[dict] = None) -> dict:
    """Model-card fields of a pretraining checkpoint dict (see module docstring).

    ``settings``: the trainer's resolved settings (schedule, masking, optimiser) as the caller knows
    them; by default those the checkpoint recorded (``trainer_settings``), else none."""
    plans = json.loads(ck["init_args"]["plans"])
    block = plans.get("mmpretrain", {})
    conf_name = ck["init_args"]["configuration"]
    conf = resolved_configuration(plans, conf_name)
    fold = os.path.dirname(os.path.abspath(checkpoint_path))
    ds = ck.get("identity", {}).get("dataset_name") or plans.get("dataset_name")
    pre = os.path.join(os.environ.get("nnUNet_preprocessed", ""), str(ds))
    fp_file = _json_path(os.path.join(fold, "..", "dataset_fingerprint.json"),
                         os.path.join(pre, "dataset_fingerprint.json") if os.environ.get("nnUNet_preprocessed") else "")
    fp = json.load(open(fp_file)) if fp_file else {}
    cases = (fp.get("mmpretrain") or {}).get("modalities_per_case")
    case_list = sorted([c, sorted(m)] for c, m in cases.items()) if isinstance(cases, dict) else None
    counts = block.get("counts") or {}
    corpus = {"name": block.get("name"), "dataset": ds, "sources": block.get("sources"),
              "scans_per_modality": counts.get("scans_per_modality") or (fp.get("mmpretrain") or {}).get(
                  "scans_per_modality"),
              "cases_per_source": counts.get("cases_per_source"),
              "case_count": len(case_list) if case_list is not None else counts.get("cases"),
              "case_list_sha256": hashlib.sha256(json.dumps(case_list).encode()).hexdigest() if case_list else None,
              "case_list_from": os.path.abspath(fp_file) if case_list else "not found (no dataset_fingerprint.json "
                                                                              "beside the trainer folder)",
              "atlas_registered": block.get("atlas_registered"), "left_out_cases": block.get("left_out_cases")}
    mm = ck.get("mmpretrain", {})
    method = {"trainer": ck.get("trainer_name"), "objective": ck.get("objective"),
              "description": "BrainMVP-style multi-modal pretraining: block-masked single-modality reconstruction "
                             "from a template-filled view and a cross-modal view, plus modality-wise contrastive "
                             "learning; one 1-channel stem per modality, shared encoder",
              "pretraining_decoder": mm.get("decoder"), "template_space": mm.get("template_space")}
    log = ck.get("mm_log") or {}
    lrs = [x for x in log.get("lr") or [] if _finite(x) is not None]
    summary_file = _json_path(os.path.join(fold, "pretraining_summary", "summary.json"))
    summary = json.load(open(summary_file)) if summary_file else None
    settings = dict(settings if settings is not None else ck.get("trainer_settings") or {})
    method["settings"] = {k: v for k, v in settings.items() if "epoch" not in k}
    nl = ck.get("nnunet_logging") or {}
    t0, t1 = (nl.get("epoch_start_timestamps") or [None])[0], (nl.get("epoch_end_timestamps") or [None])[-1]
    schedule = {"checkpoint": os.path.basename(checkpoint_path), "epochs_completed": int(ck.get("current_epoch", 0)),
                "planned_epochs": settings.get("planned_epochs"),
                "iterations_per_epoch": settings.get("iterations_per_epoch"),
                "initial_lr": lrs[0] if lrs else None, "final_lr": lrs[-1] if lrs else None,
                "wall_time_hours": round((t1 - t0) / 3600, 4) if _finite(t0) is not None and _finite(t1) is not None
                else None,
                "batch_size": conf.get("batch_size"), "patch_size": conf.get("patch_size"),
                "epochs_in_summary": summary.get("epochs") if summary else None}
    proxy = _proxy_task(log)
    if summary and not any(v.get("masked_mse") is not None for v in proxy.values() if isinstance(v, dict)):
        proxy = _proxy_task({k: [v] for k, v in (summary.get("last") or {}).items()})
    proxy["summary_file"] = summary_file
    plans_fp = {"plans_name": plans.get("plans_name"), "configuration": conf_name,
                "plans_sha256": hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest(),
                "spacing": conf.get("spacing"), "patch_size": conf.get("patch_size"),
                "network_class_name": conf["architecture"]["network_class_name"],
                "fingerprint_file": os.path.abspath(fp_file) if fp_file else None,
                "fingerprint_sha256": sha256_file(fp_file) if fp_file else None,
                "median_spacing": plans.get("original_median_spacing_after_transp")}
    return {"corpus": corpus, "method": method, "schedule": schedule, "proxy_task": proxy,
            "plans_and_fingerprint": plans_fp, "source_checkpoint": os.path.abspath(checkpoint_path)}


def _code_version() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = {"package": "nnunet_mmpretrain", "git_commit": None}
    if os.path.isdir(os.path.join(root, ".git")):
        try:
            r = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
            out["git_commit"] = r.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def bundle_metadata(bundle: dict, folder: str, weights_file: str, license: Optional[str] = None,
                    command: Optional[str] = None) -> dict:
    """The bundle.json dict of ``bundle`` written in ``folder`` (weights already there)."""
    card = dict(bundle.get("card") or {})
    meta = {k: v for k, v in bundle.items() if k not in ("encoder", "stems", "templates", "plans", "card")}
    meta["encoder_keys"] = len(bundle["encoder"])
    meta["arch_kwargs"] = json.loads(bundle["arch_kwargs"])
    meta["format"] = BUNDLE_FORMAT
    for k in ("corpus", "method", "schedule", "proxy_task", "plans_and_fingerprint"):
        meta[k] = card.get(k) or ({"unknown": "imported", **card["imported_from"]} if "imported_from" in card
                                  else {"unknown": "not recorded by the exporter"})
    if "imported_from" in card:
        meta["imported_from"] = card["imported_from"]
    plans = json.loads(bundle["plans"])
    meta["modality_order"] = {"vocabulary": list(bundle["vocabulary"]), "stems": list(bundle["stems"]),
                              "trained": list(bundle["modalities_trained"])}
    meta["axis_order"] = {"transpose_forward": plans.get("transpose_forward"),
                          "transpose_backward": plans.get("transpose_backward"),
                          "note": "tensors and templates are in nnU-Net's preprocessed axis order (after "
                                  "transpose_forward); template NIfTIs are written back in world order"}
    meta["template_geometry"] = bundle.get("template_geometry")
    meta["code"] = _code_version()
    meta["command"] = command or current_command()
    meta["license"] = license or card.get("license") or DEFAULT_LICENSE
    meta["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["stem_origin"] = bundle.get("stem_origin", "per-modality")
    meta["stem_kernel_cosine"] = {k: round(v, 4) for k, v in stem_kernel_cosines(bundle).items()} \
        if meta["stem_origin"] == "per-modality" else {}
    same = same_filter_pairs(meta)
    if same:
        log.warning("%s: %s", folder, same)
    meta["weights_file"] = os.path.basename(weights_file)
    meta["weights_sha256"] = sha256_file(weights_file)
    meta["files"] = {os.path.relpath(os.path.join(r, f), folder): sha256_file(os.path.join(r, f))
                     for r, _, fs in os.walk(folder) for f in sorted(fs) if f not in (META_FILE, CARD_FILE)}
    return meta


def same_filter_pairs(meta: dict) -> str:
    """A warning line when two trained modality stems learned nearly the same input filter, else ''."""
    same = {k: v for k, v in (meta.get("stem_kernel_cosine") or {}).items() if v >= SAME_FILTER_COSINE}
    if not same:
        return ""
    return (f"the modality stems {', '.join(f'{k} ({v:.2f})' for k, v in same.items())} learned nearly the same "
            f"input filter (mean per-filter cosine >= {SAME_FILTER_COSINE}): with the 'modality' stem transfer these "
            f"channels enter the encoder as (almost) their average. Check a frozen encoder against a random one "
            f"before relying on it, or try the 'reinit' stem strategy.")


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def _citation(c) -> str:
    """One line of an nnssl citation entry ({type, name, apa_citations / bibtex_citations}) or a plain string."""
    if not isinstance(c, dict):
        return str(c)
    refs = c.get("apa_citations") or c.get("bibtex_citations") or []
    return f"{c.get('type', '?')} '{c.get('name', '?')}': " + " ".join(map(str, refs if isinstance(refs, list) else [refs]))


def render_model_card(meta: dict) -> str:
    """MODEL_CARD.md text from bundle.json metadata."""
    c, m, s, p, pf = (meta.get(k) or {} for k in ("corpus", "method", "schedule", "proxy_task",
                                                   "plans_and_fingerprint"))
    lines = ["# Model card: nnunet_mmpretrain encoder bundle", "",
             f"Created {meta.get('created')} by `{meta.get('command')}`.", "",
             "## Weights", f"- file: `{meta['weights_file']}`, SHA256 `{meta['weights_sha256']}`",
             f"- architecture: {meta.get('network_class_name')} ({meta.get('encoder_keys')} encoder tensors)",
             f"- stems: {meta.get('stem_origin')} ({', '.join(meta['modality_order']['stems'])}); trained: "
             f"{', '.join(meta['modality_order']['trained'])}", f"- licence: {meta.get('license')}", ""]
    if meta.get("imported_from"):
        imp = meta["imported_from"]
        lines += ["## Origin", f"- imported from an {imp.get('format')} checkpoint `{imp.get('file')}` "
                               f"({imp.get('arch_class_name')}); its one stem is every modality's stem",
                  *[f"- cite: {_citation(x)}" for x in imp.get("citations") or []],
                  *([f"- not kept: {sum(imp['dropped_tensors'].values())} tensors outside the encoder and stem "
                     f"({', '.join(imp['dropped_tensors'])})"] if imp.get("dropped_tensors") else []), ""]
    lines += ["## Corpus", f"- name: {_fmt(c.get('name'))} (dataset {_fmt(c.get('dataset'))})",
              f"- sources: {', '.join(c.get('sources') or {}) or 'n/a'}",
              f"- cases: {_fmt(c.get('case_count'))}; scans per modality: {_fmt(c.get('scans_per_modality'))}",
              f"- case list SHA256: {_fmt(c.get('case_list_sha256'))}", "",
              "## Method", f"- {_fmt(m.get('description'))}", f"- trainer: {_fmt(m.get('trainer'))}",
              f"- objective: `{json.dumps(m.get('objective'))}`",
              f"- settings: `{json.dumps(m.get('settings'))}`", "",
              "## Schedule", f"- checkpoint {_fmt(s.get('checkpoint'))}, epochs completed {_fmt(s.get('epochs_completed'))} "
              f"of {_fmt(s.get('planned_epochs'))} ({_fmt(s.get('iterations_per_epoch'))} iterations each, batch "
              f"{_fmt(s.get('batch_size'))}, patch {_fmt(s.get('patch_size'))}; {_fmt(s.get('wall_time_hours'))} h)",
              f"- learning rate {_fmt(s.get('initial_lr'))} -> {_fmt(s.get('final_lr'))}", "",
              "## Final proxy-task errors (validation, masked voxels)", "",
              "| view | masked MSE | patch-mean baseline | ratio | fill baseline | ratio |", "|---|---|---|---|---|---|"]
    for v in [x for x in ("template_view", "cross_modal_view", "joint_view") if x in p]:
        r = p[v] or {}
        lines.append(f"| {v} | {_fmt(r.get('masked_mse'))} | {_fmt(r.get('baseline_patch_mean'))} | "
                     f"{_fmt(r.get('ratio_to_patch_mean'))} | {_fmt(r.get('baseline_fill'))} | "
                     f"{_fmt(r.get('ratio_to_fill'))} |")
    cos = meta.get("stem_kernel_cosine") or {}
    if cos:
        lines += ["", "## Modality stems", "- mean per-filter cosine between the input kernels: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in cos.items())]
        warning = same_filter_pairs(meta)
        if warning:
            lines.append(f"- **warning**: {warning}")
    ax = meta.get("axis_order") or {}
    lines += ["", "## Plans and geometry",
              f"- plans {_fmt(pf.get('plans_name'))} / {_fmt(pf.get('configuration'))}: spacing "
              f"{_fmt(pf.get('spacing'))}, patch {_fmt(pf.get('patch_size'))}",
              f"- plans SHA256 {_fmt(pf.get('plans_sha256'))}; fingerprint SHA256 {_fmt(pf.get('fingerprint_sha256'))}",
              f"- modality order (vocabulary): {', '.join(meta['modality_order']['vocabulary'])}",
              f"- axes: transpose_forward {ax.get('transpose_forward')}, transpose_backward "
              f"{ax.get('transpose_backward')}",
              f"- template geometry: {'world grid of the corpus' if meta.get('template_geometry') else 'none'}", "",
              "## Versions", *[f"- {k}: {v}" for k, v in (meta.get("versions") or {}).items()],
              f"- code commit: {_fmt((meta.get('code') or {}).get('git_commit'))}", "",
              "Check the folder with `nnUNetv2_mmpretrain_export --verify FOLDER`.", ""]
    return "\n".join(lines)
