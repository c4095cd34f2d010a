"""Data preparation of a suite, as the console commands a user would type (each skipped when done).

1. phantoms (suites with a ``phantoms`` block): ``nnUNetv2_mmpretrain_make_phantoms``
2. corpus plans: ``nnUNetv2_mmpretrain_plan_and_preprocess -d CORPUS [--add-config ...]``
3. per pretraining preset, in ``OUT/pretraining/PRESET/``:
   ``nnUNetv2_train CORPUS CONFIG all -tr PRETRAINER -p PLANS [--c]`` and
   ``nnUNetv2_mmpretrain_export .../checkpoint_final.pth -o OUT/pretraining/PRESET/bundle``
4. per dataset: ``nnUNetv2_mmpretrain_transfer_plans -s CORPUS -t DATASET -c CONFIG --preprocess``
   (one set of plans for every method: scratch trains the same topology as the pretrained encoder)
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from nnunet_mmpretrain.benchmark import cell_settings
from nnunet_mmpretrain.benchmark.model import Suite
from nnunet_mmpretrain.training.lookup import ext_trainer_folder, ext_trainer_value

log = logging.getLogger("nnunet_mmpretrain.benchmark")


class BenchmarkError(RuntimeError):
    """Bad input or state the user must fix: one line, exit code 2."""


class StepFailed(RuntimeError):
    """A command exited with an error (its log names the cause); exit code 1."""


@dataclass
class Folders:
    out: str
    raw: str
    preprocessed: str

    @property
    def cells(self) -> str:
        return os.path.join(self.out, "cells")

    @property
    def splits(self) -> str:
        return os.path.join(self.out, "splits")

    @property
    def leaderboard(self) -> str:
        return os.path.join(self.out, "leaderboard")

    def pretraining(self, preset: str) -> str:
        return os.path.join(self.out, "pretraining", preset)

    def bundle(self, preset: str) -> str:
        return os.path.join(self.pretraining(preset), "bundle")


def folders_for(suite: Suite, out: str) -> Folders:
    """Phantom suites keep their nnU-Net raw/preprocessed folders under ``out``; others use the
    user's ``$nnUNet_raw`` / ``$nnUNet_preprocessed``."""
    out = os.path.abspath(out)
    if suite.phantoms is not None:
        return Folders(out, os.path.join(out, "nnUNet_raw"), os.path.join(out, "nnUNet_preprocessed"))
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.environ.get(var):
            raise BenchmarkError(f"{suite.path}: datasets: {var} is not set; export it (the suite uses your own data)")
    return Folders(out, os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"])


def base_env(suite: Suite, f: Folders) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=f.raw, nnUNet_preprocessed=f.preprocessed)
    env.setdefault("nnUNet_results", os.path.join(f.out, "nnUNet_results_unused"))
    env["nnUNet_extTrainer"] = ext_trainer_value(env.get("nnUNet_extTrainer"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def train_env(suite: Suite, env: Dict[str, str]) -> Dict[str, str]:
    """The environment of ``nnUNetv2_train`` runs: ``env`` + the suite's ``env`` block (e.g.
    ``nnUNet_n_proc_DA=0``, which nnU-Net's planner would not accept)."""
    return dict(env, **suite.env)


def dataset_folder(raw_or_pre: str, dataset_id: int) -> Optional[str]:
    """``DatasetXXX_Name`` for an id in an nnU-Net folder, or None."""
    if not os.path.isdir(raw_or_pre):
        return None
    hits = sorted(d for d in os.listdir(raw_or_pre) if d.startswith(f"Dataset{dataset_id:03d}_"))
    return hits[0] if hits else None


def show(cmd: List[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run_step(label: str, cmd: List[str], env: Dict[str, str], log_file: str, dry_run: bool,
             env_show: Optional[Dict[str, str]] = None) -> float:
    """Run ``cmd`` (output appended to ``log_file``); print it first; raise StepFailed on error."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env_show or {}).items())
    log.info("%s: %s%s", label, prefix + " " if prefix else "", show(cmd))
    if dry_run:
        return 0.0
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    t = time.time()
    with open(log_file, "a") as lf:
        lf.write(f"\n$ {show(cmd)}\n")
        lf.flush()
        rc = subprocess.run([str(c) for c in cmd], env=env, stdout=lf, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise StepFailed(f"{label} failed (exit {rc}); see {log_file}; run the suite again to resume")
    return time.time() - t


def _plans_has(plans_file: str, config: str) -> bool:
    try:
        with open(plans_file) as fh:
            return config in json.load(fh)["configurations"]
    except (OSError, ValueError, KeyError):
        return False


def make_data(suite: Suite, f: Folders, env: Dict[str, str], dry_run: bool) -> None:
    """Step 1: the phantom datasets (only for suites with a ``phantoms`` block). A dataset counts
    as made only when its last file (dataset.json / manifest.json, written after every image) is
    there; a half-made one (a killed run) is made again."""
    ph = suite.phantoms
    if ph is None:
        return
    sites = ph.get("kind", "brats") == "sites"
    done = [(ph["seg_id"], "dataset.json"), (ph["corpus_id"], "manifest.json")]
    if "pool_id" in ph:
        done.append((ph["pool_id"], "dataset.json"))
    if all(dataset_folder(f.raw, i) and os.path.isfile(os.path.join(f.raw, dataset_folder(f.raw, i), last))
           for i, last in done):
        return
    if sites:
        spec = lambda d: ",".join(f"{k}={v}" for k, v in sorted(d.items()))  # noqa: E731
        cmd = ["nnUNetv2_mmpretrain_make_phantoms", "--raw-dir", f.raw, "--what", "sites,sites-pool,sites-corpus",
               "--seg-id", ph["seg_id"], "--pool-id", ph["pool_id"], "--corpus-id", ph["corpus_id"], "--overwrite",
               "--site-cases", spec(ph.get("site_cases", {})), "--pool-cases", spec(ph.get("pool_cases", {})),
               "--site-corpus", spec(ph.get("corpus_cases", {}))]
        keys = ("spacing", "seed")
    else:
        cmd = ["nnUNetv2_mmpretrain_make_phantoms", "--raw-dir", f.raw, "--what",
               "seg,corpus,pool" if "pool_id" in ph else "seg,corpus", "--seg-id", ph["seg_id"], "--corpus-id",
               ph["corpus_id"], "--overwrite"]
        keys = ("num_train", "num_test", "corpus_cases", "spacing", "seed", "pool_id", "pool_train")
    for k in keys:
        if k in ph:
            cmd += ["--" + k.replace("_", "-"), ph[k]]
    run_step("data", cmd, env, os.path.join(f.out, "logs", "prepare.log"), dry_run)


def plan_corpus(suite: Suite, f: Folders, env: Dict[str, str], dry_run: bool) -> None:
    """Step 2: corpus validation, fingerprint, plans (+ the suite's added configuration)."""
    c = suite.corpus
    name = dataset_folder(f.preprocessed, c["dataset"])
    if name and _plans_has(os.path.join(f.preprocessed, name, suite.plans + ".json"), suite.configuration):
        return
    cmd = ["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", c["dataset"]]
    if c.get("planner"):
        cmd += ["-pl", c["planner"]]
    ac = c.get("add_config")
    if ac:
        cmd += ["--add-config", ac["name"]]
        for k in ("patch", "features"):
            if k in ac:
                cmd += [f"--{k}", *ac[k]]
        if "batch" in ac:
            cmd += ["--batch", ac["batch"]]
    cmd += list(c.get("args", []))
    run_step("corpus plans", cmd, env, os.path.join(f.out, "logs", "prepare.log"), dry_run)


def pretrain(suite: Suite, f: Folders, env: Dict[str, str], preset_name: str, device: str, dry_run: bool) -> str:
    """Step 3: pretraining + bundle export for one preset; returns the bundle folder. A
    ``supervised`` preset (the positive control) trains its trainer with labels on its pool
    dataset (given the suite's plans first) and exports that encoder instead."""
    p = suite.presets[preset_name]
    bundle = f.bundle(preset_name)
    if os.path.isfile(os.path.join(bundle, "encoder_bundle.pt")):
        return bundle
    results = os.path.join(f.pretraining(preset_name), "nnUNet_results")
    e = {k: v for k, v in dict(train_env(suite, env), nnUNet_results=results).items()
         if k not in cell_settings.OVERRIDES}
    data_id = p.supervised["dataset"] if p.supervised else suite.corpus["dataset"]
    if p.supervised:
        transfer(suite, f, env, data_id, dry_run)
    name = dataset_folder(f.raw, data_id) or f"Dataset{data_id:03d}_NAME"
    fold = os.path.join(results, name, f"{p.trainer}__{p.plans}__{p.configuration}", "fold_all")
    if p.supervised and not dry_run:   # schedule and seed recorded with the run, read by the benchmark trainer
        try:
            cell_settings.write(fold, cell_settings.make(f"{preset_name} (positive control)", p.trainer,
                                                         p.supervised["schedule"], None, p.supervised.get("seed", 0),
                                                         None, None, False))
        except cell_settings.CellSettingsError as e:   # a finished pool run with other settings: one line
            raise BenchmarkError(str(e)) from None
    show_env = {"nnUNet_results": results}
    logf = os.path.join(f.pretraining(preset_name), "pretraining.log")
    final = os.path.join(fold, "checkpoint_final.pth")
    if not os.path.isfile(final):
        cmd = ["nnUNetv2_train", data_id, p.configuration, "all", "-tr", p.trainer, "-p", p.plans,
               "-device", device, *p.train_args]
        if os.path.isfile(os.path.join(fold, "checkpoint_latest.pth")):
            cmd.append("--c")
        run_step(f"pretraining {preset_name}", cmd, e, logf, dry_run, show_env)
    run_step(f"export {preset_name}", ["nnUNetv2_mmpretrain_export", final, "-o", bundle], e, logf, dry_run)
    return bundle


def transfer(suite: Suite, f: Folders, env: Dict[str, str], dataset_id: int, dry_run: bool) -> None:
    """Step 4: the dataset gets the pretraining topology (same plans for every method). Done only
    when every raw training case has its preprocessed file (a killed preprocessing is redone)."""
    name = dataset_folder(f.preprocessed, dataset_id)
    if name:
        pf = os.path.join(f.preprocessed, name, suite.plans + ".json")
        if _plans_has(pf, suite.configuration):
            with open(pf) as fh:
                ident = json.load(fh)["configurations"][suite.configuration].get("data_identifier", "")
            if ident and _preprocessed_complete(os.path.join(f.preprocessed, name, ident), f.raw, dataset_id):
                return
    cmd = ["nnUNetv2_mmpretrain_transfer_plans", "-s", suite.corpus["dataset"], "-t", dataset_id, "-sp", suite.plans,
           "-c", suite.configuration, "--preprocess"]
    run_step(f"plans for dataset {dataset_id}", cmd, env, os.path.join(f.out, "logs", "prepare.log"), dry_run)


def _preprocessed_complete(folder: str, raw: str, dataset_id: int) -> bool:
    """Every labelled case of the raw dataset has nnU-Net's per-case ``.pkl`` (written after its
    arrays) in ``folder``."""
    if not os.path.isdir(folder):
        return False
    rname = dataset_folder(raw, dataset_id)
    labels = os.path.join(raw, rname, "labelsTr") if rname else ""
    if not os.path.isdir(labels):
        return True          # nothing to compare with (a user's dataset elsewhere): trust the folder
    cases = {x.split(".")[0] for x in os.listdir(labels) if not x.startswith(".")}
    done = {x[:-4] for x in os.listdir(folder) if x.endswith(".pkl")}
    return cases <= done


def trainer_exists(name: str) -> bool:
    """Whether nnUNetv2_train can find ``name`` (our shim first, then nnU-Net's own trainers)."""
    import contextlib
    import io
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    folder = ext_trainer_folder()
    try:          # nnU-Net's own lookup in our shim folder (the benchmark never imports the shim itself)
        with contextlib.redirect_stdout(io.StringIO()):
            if recursive_find_python_class(folder, name, None, cleanup_imports_from_base_folder=True) is not None:
                return True
    except ImportError as e:   # a broken shim breaks nnUNetv2_train too: say so
        raise BenchmarkError(f"the trainer shim nnunet_mmpretrain_ext/mmpretrain_trainers.py does not import ({e}); "
                             f"fix the import before benchmarking")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return recursive_find_trainer_class_by_name(name) is not None
        except Exception:
            return False
