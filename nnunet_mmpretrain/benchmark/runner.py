"""The benchmark runner: every cell of a suite through the real nnU-Net commands.

A *cell* is one (dataset, label budget, fold, seed, method). Its folder ``OUT/cells/NAME/`` holds::

    cell.json           the settings (trainer, plans, schedule, split file and its SHA-256, bundle)
    nnUNet_results/     the cell's own nnU-Net results folder (cells never collide)
    test/summary.json   nnUNetv2_evaluate_folder on imagesTs (datasets with "test": true)
    train.log           output of the commands
    done.json           written last: the cell is finished and is never run or overwritten again

A cell runs ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS [--c]`` after writing its
split, seed, schedule, bundle, stem and freezing into the fold folder (``mmpretrain_cell.json``,
:mod:`.cell_settings`), where the trainers (:mod:`.trainers`) read them; nnU-Net's own validation writes
``fold_K/validation/summary.json`` (per-case Dice). A crashed cell resumes from its latest
checkpoint (``--c``) on the next run. Paired cells (same dataset, budget, fold and seed, different
methods) share one split file ``OUT/splits/DXXX/foldK_BUDGET_seedS.json``.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from nnunet_mmpretrain.benchmark import cell_settings
from nnunet_mmpretrain.benchmark import prepare as prep
from nnunet_mmpretrain.benchmark.prepare import BenchmarkError, Folders, StepFailed
from nnunet_mmpretrain.benchmark.model import DatasetSpec, LabelBudget, Method, Suite
from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger("nnunet_mmpretrain.benchmark")


@dataclass
class Cell:
    name: str
    dataset: DatasetSpec
    budget: LabelBudget
    fold: int
    seed: int
    method: Method
    trainer: str

    @property
    def split_name(self) -> str:
        return os.path.join(f"D{self.dataset.id:03d}", f"fold{self.fold}_{self.budget.tag}_seed{self.seed}.json")


def build_cells(suite: Suite) -> List[Cell]:
    """All cells, ordered so that the methods of one (budget, fold, seed) run one after another."""
    cells = []
    for ds in suite.datasets:
        for b in suite.budgets:
            for fold in suite.folds:
                for seed in suite.seeds:
                    for m in suite.methods.values():
                        if m.budgets is not None and b.tag not in m.budgets:
                            continue                  # the method runs at its own budgets only
                        name = f"D{ds.id:03d}_{b.tag}_fold{fold}_seed{seed}_{m.name}"
                        cells.append(Cell(name, ds, b, fold, seed, m, m.trainer_for(ds.task)))
    return cells


#: suite keys whose change makes finished results of an output folder stale (methods, budgets, folds and seeds
#: may be added; a method or preset that exists in both must be unchanged)
RESULT_KEYS = ("phantoms", "corpus", "plans", "configuration", "datasets", "num_folds", "split_seed", "schedule", "env",
               "controls")


def changed_settings(old: dict, new: dict) -> List[str]:
    """Names of the settings that differ between the suite recorded in an output folder and now."""
    out = [k for k in RESULT_KEYS if old.get(k) != new.get(k)]
    for group in ("methods", "resolved_presets"):
        a, b = old.get(group) or {}, new.get(group) or {}
        for name in sorted(set(a) & set(b)):
            strip = lambda d: {k: v for k, v in d.items() if k not in ("description", "source")}  # noqa: E731
            if strip(a[name]) != strip(b[name]):
                out.append(f"{group.replace('resolved_', '')}.{name}")
    return out


def select(cells: List[Cell], patterns: Optional[List[str]], suite: Suite) -> List[Cell]:
    if not patterns:
        return cells
    out = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not out:
        raise BenchmarkError(f"{suite.path}: --cell {' '.join(patterns)}: no cell matches; list them with --dry-run "
                             f"(e.g. {cells[0].name})")
    return out


#: the file nnU-Net (segmentation) / the classifier trainer writes when a fold is validated
RESULT_FILES = {"segmentation": os.path.join("validation", "summary.json"), "classification": "summary.json"}


def _score(task: str, path: str) -> str:
    with open(path) as fh:
        s = json.load(fh)
    if task == "classification":
        return f"validation accuracy {s['metrics']['accuracy']:.3f}"
    return f"validation mean Dice {s['foreground_mean']['Dice']:.3f}"


def fold_dir(f: Folders, cell: Cell, ds_name: str, suite: Suite) -> str:
    return os.path.join(f.cells, cell.name, "nnUNet_results", ds_name,
                        f"{cell.trainer}__{suite.plans}__{suite.configuration}", f"fold_{cell.fold}")


class Runner:
    """Prepare, guard and run the selected cells of a suite; see the module docstring."""

    def __init__(self, suite: Suite, out: str, device: Optional[str] = None, dry_run: bool = False):
        self.suite, self.dry_run = suite, dry_run
        self.device = device or suite.device
        self.f = prep.folders_for(suite, out)
        self.env = prep.base_env(suite, self.f)
        self._corpus_index = None
        self._pool_index: dict = {}       # labelled pools of supervised presets
        self._eval_hashes: dict = {}      # evaluation image hashes, shared by all cells of the run

    # ----------------------------------------------------------------------------- checks
    def check_trainers(self, cells: List[Cell]) -> List[Cell]:
        """Unknown segmentation or pretraining trainer -> BenchmarkError; classification cells
        whose trainer does not exist yet are left out with a warning (the hook for them)."""
        keep, seen = [], {}
        for c in cells:
            if c.trainer not in seen:
                seen[c.trainer] = prep.trainer_exists(c.trainer)
            if seen[c.trainer]:
                keep.append(c)
            elif c.dataset.task == "classification":
                log.warning("cell %s left out: classification trainer %s is not available yet", c.name, c.trainer)
            else:
                raise BenchmarkError(f"{self.suite.path}: methods.{c.method.name}: trainer {c.trainer!r} not found by "
                                     f"nnUNetv2_train; fix the name or add the trainer to nnunet_mmpretrain_ext")
        for name in sorted({p for c in keep for p in self.suite.presets_for(c.method)}):
            p = self.suite.presets[name]
            if not prep.trainer_exists(p.trainer):
                raise BenchmarkError(f"{p.source}: trainer: pretraining trainer {p.trainer!r} of preset {name!r} not "
                                     f"found by nnUNetv2_train; fix the name or add the trainer")
        return keep

    def dataset_name(self, ds: DatasetSpec) -> str:
        name = prep.dataset_folder(self.f.raw, ds.id)
        if self.dry_run and not name and self.suite.phantoms is not None:   # made by the first step of a real run
            return f"Dataset{ds.id:03d}_{ds.name or 'Phantom'}"
        if not name or not os.path.isfile(os.path.join(self.f.raw, name, "dataset.json")):
            i = self.suite.datasets.index(ds)
            hint = ds.convert or "convert or copy it into $nnUNet_raw"
            raise BenchmarkError(f"{self.suite.path}: datasets[{i}]: no Dataset{ds.id:03d}_* with a dataset.json in "
                                 f"{self.f.raw}; {hint}")
        return name

    def case_ids(self, ds: DatasetSpec, sub: str = "imagesTr") -> List[str]:
        folder = os.path.join(self.f.raw, self.dataset_name(ds), sub)
        with open(os.path.join(self.f.raw, self.dataset_name(ds), "dataset.json")) as fh:
            ending = json.load(fh).get("file_ending", ".nii.gz")
        tail = "_0000" + ending
        return sorted(x[: -len(tail)] for x in os.listdir(folder) if x.endswith(tail)) if os.path.isdir(folder) else []

    def split_for(self, cell: Cell) -> dict:
        from nnunet_mmpretrain.benchmark.splits import cell_split, check_patient_disjoint
        ds, s = cell.dataset, self.suite
        ids = self.case_ids(ds)
        unseen = [c for c in ids if ds.unseen_regex and re.match(ds.unseen_regex, c)]
        try:
            sp = cell_split([c for c in ids if c not in unseen], s.num_folds, cell.fold, cell.budget.kind,
                            cell.budget.value, ds.id, cell.seed, ds.patient_regex, s.split_seed)
        except ValueError as e:
            raise BenchmarkError(f"{s.path}: datasets[{s.datasets.index(ds)}]: {e}")
        if ds.unseen_regex:          # evaluation-only cases (unseen sites) join every fold's validation
            if not unseen:
                raise BenchmarkError(f"{s.path}: datasets[{s.datasets.index(ds)}].unseen: no case id matches "
                                     f"{ds.unseen_regex!r}; fix the pattern or remove the key")
            sp = dict(sp, val=sorted(sp["val"] + unseen), unseen=sorted(unseen))
        check_patient_disjoint(sp, ds.patient_regex)
        return sp

    def write_split(self, cell: Cell, split: dict) -> str:
        """Write the split file once; refuse when an existing one differs (results depend on it)."""
        from nnunet_mmpretrain.benchmark.splits import split_bytes
        path = os.path.join(self.f.splits, cell.split_name)
        data = split_bytes(split)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                if fh.read() != data:
                    raise BenchmarkError(f"{path}: the split differs from the one computed now (data or suite changed); "
                                         f"use a new --out folder")
            return path
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
        return path

    def guard(self, cell: Cell, split: dict) -> None:
        """Leakage guard for cells that use a pretrained encoder."""
        if not cell.method.pretraining:
            return
        from nnunet_mmpretrain.benchmark.leakage import corpus_index, dataset_case_images, dataset_index, find_leaks
        sup = self.suite.presets[cell.method.pretraining].supervised
        if sup:                        # the encoder was trained with labels on a pool dataset: guard against it
            pool = prep.dataset_folder(self.f.raw, sup["dataset"])
            if not pool:
                raise BenchmarkError(f"{self.suite.path}: presets: no labelled pool Dataset{sup['dataset']:03d}_* in "
                                     f"{self.f.raw}; convert or make it first")
            if pool not in self._pool_index:
                cache = None if self.dry_run else os.path.join(self.f.out, "leakage", f"{pool}_hashes.json")
                self._pool_index[pool] = dataset_index(os.path.join(self.f.raw, pool), cache)
            index = self._pool_index[pool]
        elif self._corpus_index is None:
            cname = prep.dataset_folder(self.f.raw, self.suite.corpus["dataset"])
            if not cname or not os.path.isfile(os.path.join(self.f.raw, cname, "manifest.json")):
                raise BenchmarkError(f"{self.suite.path}: corpus.dataset: no corpus Dataset"
                                     f"{self.suite.corpus['dataset']:03d}_*/manifest.json in {self.f.raw}; "
                                     f"convert the corpus first (nnUNetv2_mmpretrain_convert corpus-...)")
            cache = None if self.dry_run else os.path.join(self.f.out, "leakage", "corpus_hashes.json")
            self._corpus_index = corpus_index(os.path.join(self.f.raw, cname), cache)
        if not sup:
            index = self._corpus_index
        raw_ds = os.path.join(self.f.raw, self.dataset_name(cell.dataset))
        images = dataset_case_images(raw_ds, split["val"], "imagesTr")
        if cell.dataset.test:
            images.update(dataset_case_images(raw_ds, self.case_ids(cell.dataset, "imagesTs"), "imagesTs"))
        leaks = find_leaks(images, index, cell.dataset.patient_regex, self._eval_hashes)
        if leaks:
            raise BenchmarkError(f"cell {cell.name}: {len(leaks)} evaluation case(s) are in the pretraining corpus "
                                 f"{index.name} ({'; '.join(leaks[:3])}{'; ...' if len(leaks) > 3 else ''})"
                                 f"; remove them from the corpus manifest and pretrain again, or from the evaluation")

    # ----------------------------------------------------------------------------- running
    def cell_settings(self, cell: Cell, split_file: str, bundle: Optional[str]) -> dict:
        s = self.suite
        pre = s.presets[cell.method.pretraining] if cell.method.pretraining else None
        return {"name": cell.name, "suite": s.name, "dataset": cell.dataset.id, "dataset_name": self.dataset_name(cell.dataset),
                "task": cell.dataset.task, "budget": {"kind": cell.budget.kind, "value": cell.budget.value,
                                                      "tag": cell.budget.tag, "label": cell.budget.label},
                "fold": cell.fold, "seed": cell.seed, "method": cell.method.name, "kind": cell.method.kind,
                "trainer": cell.trainer, "plans": s.plans, "configuration": s.configuration,
                "schedule": s.schedule_for(cell.method),
                "split_file": os.path.relpath(split_file, self.f.out), "split_sha256": sha256_file(split_file),
                "pretraining": None if pre is None else {"preset": pre.name, "trainer": pre.trainer},
                "bundle": bundle, "stem": cell.method.stem, "device": self.device}

    def run_cell(self, cell: Cell, split_file: str, bundle: Optional[str], tag: str) -> Optional[float]:
        """Run one cell (train + nnU-Net validation [+ test]); returns seconds, None when skipped."""
        s, folder = self.suite, os.path.join(self.f.cells, cell.name)
        if os.path.isfile(os.path.join(folder, "done.json")):
            log.info("%s %s: finished earlier, skipped", tag, cell.name)
            return None
        ds_name = self.dataset_name(cell.dataset)
        settings = self.cell_settings(cell, split_file, bundle) if not self.dry_run else None
        meta = os.path.join(folder, "cell.json")
        if settings and os.path.isfile(meta):
            with open(meta) as fh:
                old = json.load(fh)
            diff = [k for k in ("trainer", "plans", "configuration", "schedule", "split_sha256", "pretraining", "stem")
                    if old.get(k) != settings[k]]
            if diff:
                raise BenchmarkError(f"{meta}: this unfinished cell was started with other settings ({', '.join(diff)}); "
                                     f"use a new --out folder or delete {folder}")
        elif settings:
            atomic_write_json(settings, meta)
        results = os.path.join(folder, "nnUNet_results")
        fd = fold_dir(self.f, cell, ds_name, s)
        try:
            if settings:
                cell_settings.write_for_cell(fd, cell, settings["schedule"], split_file, bundle)
        except cell_settings.CellSettingsError as e:
            raise BenchmarkError(str(e)) from None
        # the trainer reads the cell's settings from its fold folder; no override from the caller's shell
        extra = {"nnUNet_results": results}
        env = {k: v for k, v in dict(prep.train_env(s, self.env), **extra).items() if k not in cell_settings.OVERRIDES}
        t0 = time.time()
        logf = os.path.join(folder, "train.log")
        summ = os.path.join(fd, RESULT_FILES[cell.dataset.task])
        if not os.path.isfile(summ):
            cmd = ["nnUNetv2_train", cell.dataset.id, s.configuration, cell.fold, "-tr", cell.trainer, "-p", s.plans,
                   "-device", self.device]
            if any(os.path.isfile(os.path.join(fd, c)) for c in ("checkpoint_final.pth", "checkpoint_latest.pth")):
                cmd.append("--c")
                log.info("%s %s: resuming from its checkpoint", tag, cell.name)
            prep.run_step(f"{tag} {cell.name}", cmd, env, logf, self.dry_run, extra)
        if cell.dataset.test and cell.dataset.task == "segmentation":
            self.evaluate_test(cell, ds_name, env, logf, tag)
        if self.dry_run:
            return 0.0
        if not os.path.isfile(summ):
            raise StepFailed(f"{tag} {cell.name}: the training wrote no {summ}; see {logf}")
        score, secs = _score(cell.dataset.task, summ), time.time() - t0
        atomic_write_json({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(secs, 1),
                           "validation_summary": os.path.relpath(summ, folder), "score": score},
                          os.path.join(folder, "done.json"))
        log.info("%s %s: done in %.0f s (%s)", tag, cell.name, secs, score)
        return secs

    def evaluate_test(self, cell: Cell, ds_name: str, env: Dict[str, str], logf: str, tag: str) -> None:
        """nnUNetv2_predict on imagesTs + nnUNetv2_evaluate_folder against labelsTs."""
        s, raw = self.suite, os.path.join(self.f.raw, ds_name)
        out = os.path.join(self.f.cells, cell.name, "test")
        if os.path.isfile(os.path.join(out, "summary.json")):
            return
        if not self.dry_run and not os.path.isdir(os.path.join(raw, "labelsTs")):
            raise StepFailed(f"{tag} {cell.name}: the suite asks for a test evaluation but {raw} has no labelsTs; "
                             f"set \"test\": false for this dataset or add the test labels")
        pred = os.path.join(out, "predictions")
        cmd = ["nnUNetv2_predict", "-i", os.path.join(raw, "imagesTs"), "-o", pred, "-d", cell.dataset.id, "-c",
               s.configuration, "-f", cell.fold, "-tr", cell.trainer, "-p", s.plans, "-device", self.device,
               "-npp", "1", "-nps", "1"]
        if not s.schedule_for(cell.method).get("mirroring", False):
            cmd.append("--disable_tta")
        prep.run_step(f"{tag} {cell.name} test prediction", cmd, env, logf, self.dry_run)
        model = os.path.dirname(fold_dir(self.f, cell, ds_name, s))
        prep.run_step(f"{tag} {cell.name} test evaluation",
                      ["nnUNetv2_evaluate_folder", os.path.join(raw, "labelsTs"), pred, "-djfile",
                       os.path.join(model, "dataset.json"), "-pfile", os.path.join(model, "plans.json"), "-o",
                       os.path.join(out, "summary.json"), "-np", "1"], env, logf, self.dry_run)

    def fold_dir(self, cell: Cell, ds_name: str) -> str:
        return fold_dir(self.f, cell, ds_name, self.suite)

    def missing(self, cell: Cell, split_file: str, bundle: Optional[str], tag: str) -> None:
        """Missing-modality evaluations of a finished cell (:mod:`.missing`)."""
        from nnunet_mmpretrain.benchmark.missing import run_missing
        if os.path.isfile(split_file):
            with open(split_file) as fh:
                split = json.load(fh)
        elif self.dry_run:
            split = {"val": []}              # data not made yet: the commands are still listed
        else:
            raise StepFailed(f"{tag} {cell.name}: no split file {split_file}")
        env = dict(prep.train_env(self.suite, self.env), nnUNet_results=os.path.join(self.f.cells, cell.name,
                                                                                      "nnUNet_results"))
        env[cell_settings.ENV_SPLIT] = split_file
        run_missing(self, cell, self.dataset_name(cell.dataset), split, env,
                    os.path.join(self.f.cells, cell.name, "missing.log"), tag, bundle)

    def run(self, patterns: Optional[List[str]] = None) -> int:
        """Prepare, guard, run the cells, write the leaderboard; returns the exit code (0 / 1)."""
        s, f = self.suite, self.f
        cells = self.check_trainers(select(build_cells(s), patterns, s))
        log.info("suite %s: %d cell(s) selected, output %s%s", s.name, len(cells), f.out,
                 " (dry run: nothing is run or written)" if self.dry_run else "")
        if not self.dry_run:
            os.makedirs(f.out, exist_ok=True)
            record = s.raw | {"resolved_presets": {k: vars(v) for k, v in s.presets.items()}}
            path = os.path.join(f.out, "suite.json")
            if os.path.isfile(path):
                with open(path) as fh:
                    changed = changed_settings(json.load(fh), record)
                if changed:
                    raise BenchmarkError(f"{path}: the suite's {', '.join(changed)} changed since the results here were "
                                         f"made; use a new --out folder (or restore the suite)")
            atomic_write_json(record, path)
        prep.make_data(s, f, self.env, self.dry_run)
        data_ready = not (self.dry_run and s.phantoms is not None and not prep.dataset_folder(f.raw, s.phantoms["seg_id"]))
        splits: Dict[str, str] = {}
        if data_ready:
            for c in cells:                      # splits and the leakage guard before any training
                sp = self.split_for(c)
                self.guard(c, sp)
                splits[c.name] = self.write_split(c, sp) if not self.dry_run else os.path.join(f.splits, c.split_name)
                log.debug("%s: %d training, %d validation cases", c.name, len(sp["train"]), len(sp["val"]))
        prep.plan_corpus(s, f, self.env, self.dry_run)
        bundles = {p: prep.pretrain(s, f, self.env, p, self.device, self.dry_run)
                   for p in sorted({p for c in cells for p in s.presets_for(c.method)})}
        for ds in {c.dataset.id: c.dataset for c in cells}.values():
            prep.transfer(s, f, self.env, ds.id, self.dry_run)
        failed, t_start, ran = [], time.time(), 0
        for i, c in enumerate(cells):
            tag = f"[{i + 1}/{len(cells)}]"
            split_file = splits.get(c.name, os.path.join(f.splits, c.split_name))
            try:
                secs = self.run_cell(c, split_file, bundles.get(c.method.pretraining), tag)
                if s.missing_modality:
                    self.missing(c, split_file, bundles.get(c.method.pretraining), tag)
            except StepFailed as e:
                log.error("%s", e)
                failed.append(c.name)
                continue
            if secs is not None and not self.dry_run:
                ran += 1
                left = len(cells) - i - 1
                eta = (time.time() - t_start) / ran * left
                log.info("%s progress: %d/%d cells, about %.0f min left", tag, i + 1, len(cells), eta / 60)
        if self.dry_run:
            return 0
        from nnunet_mmpretrain.benchmark.leaderboard import write_leaderboard
        md = write_leaderboard(f.out)
        log.info("leaderboard: %s", md)
        if failed:
            log.error("%d cell(s) failed: %s; run the same command again to resume them", len(failed), ", ".join(failed))
            return 1
        return 0
