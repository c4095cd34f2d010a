"""Benchmark suites and pretraining presets (JSON under ``plans/``): schema and validation.

A suite (``plans/NAME.json``)::

    {
      "format": "nnunet_mmpretrain.suite/1",
      "name": "phantom-smoke", "description": "...",
      "phantoms": {"seg_id": 990, "corpus_id": 992, "num_train": 6, "num_test": 0,     # optional: data made
                   "corpus_cases": 3, "spacing": 3.0, "seed": 0},                     # under the output folder
      "corpus": {"dataset": 992, "planner": "ResEncM",                                # the pretraining corpus
                 "add_config": {"name": "3d_bench", "patch": [32, 32, 32], "features": [8, 16, 32, 64], "batch": 2}},
      "plans": "mmPretrainPlans", "configuration": "3d_bench",                       # every cell, every method
      "datasets": [{"id": 990, "name": "PhantomBraTS", "task": "segmentation", "test": false,
                    "regions": {"(1, 2, 3)": "whole tumor"}, "patient_regex": null, "convert": "hint"}],
      "num_folds": 3, "folds": [0], "seeds": [0, 1],
      "label_fractions": [1.0],          # and/or "labelled_cases": [4, 8] (training cases only)
      "schedule": {"epochs": 2, "iterations": 4, "val_iterations": 1},    # training.schedules.Schedule
      "presets": {"cpu-smoke": "presets/cpu-smoke.json"},                 # name -> file (plans/) or inline
      "methods": {"scratch": {"finetune": "scratch"},
                  "pretrained_frozen": {"finetune": "pretrained_frozen", "pretraining": "cpu-smoke",
                                        "stem": "modality", "compare_to": ["random_frozen"]},
                  "random_frozen": {"finetune": "random_frozen", "labelled_cases": [4]},  # only these budgets
                  "scratch_long": {"finetune": "scratch", "schedule": {"epochs": 60}}},  # overrides the schedule
      "references": [{"dataset": 525, "fraction": 1.0, "method": "pretrained", "region": "mean",
                      "value": 76.80, "metric": "Dice %", "source": "BrainMVP (CVPR 2025)"}],
      "device": "cpu", "env": {"nnUNet_n_proc_DA": "0"},           # for the nnUNetv2_train runs only
      "missing_modality": {"methods": ["pretrained"], "channels": [0, 3],  # optional, see missing.py
                           "fills": ["template", "zero"], "bundle_preset": null}
    }

A preset (``plans/presets/NAME.json``): ``{"format": "nnunet_mmpretrain.preset/1", "name": ...,
"trainer": "nnUNetTrainerMMPretrain", "plans": "mmPretrainPlans", "configuration": "3d_fullres",
"train_args": ["-num_gpus", "4"], "description": ...}``.

Every problem raises :class:`SuiteError` with one line ``FILE: KEY: problem; fix``.
"""
from __future__ import annotations

import importlib.resources
import json
import os
import re
from typing import Dict, List, Optional

from nnunet_mmpretrain.benchmark.model import (KINDS, SCHEDULE_KEYS, STEMS, TASKS, DatasetSpec,
                                               LabelBudget, Method, Preset, Suite, SuiteError)
from nnunet_mmpretrain.synthetic.sites import SITES

SUITE_FORMAT = "nnunet_mmpretrain.suite/1"
PRESET_FORMAT = "nnunet_mmpretrain.preset/1"


def _plans_dir() -> str:
    """The shipped suites and presets: package data ``nnunet_mmpretrain/plans`` (in a checkout a
    link to the top-level ``plans/`` folder, in a wheel a copy), read through importlib.resources."""
    folder = importlib.resources.files("nnunet_mmpretrain") / "plans"
    if folder.is_dir():
        return str(folder)
    # a checkout whose link became a plain file (e.g. git on Windows without symlinks)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "plans")


PLANS_DIR = _plans_dir()


def resolve_suite_path(name_or_path: str) -> str:
    """``phantom-smoke`` -> ``PLANS_DIR/phantom-smoke.json``; a path is returned as given."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    cand = os.path.join(PLANS_DIR, name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if os.path.isfile(cand):
        return cand
    known = sorted(f[:-5] for f in os.listdir(PLANS_DIR) if f.endswith(".json")) if os.path.isdir(PLANS_DIR) else []
    raise SuiteError(f"{name_or_path}: no such suite file; use a JSON path or one of {', '.join(known) or '(none)'} "
                     f"(in {PLANS_DIR})")


class _Checker:
    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, msg: str):
        raise SuiteError(f"{self.path}: {key}: {msg}")

    def keys(self, d, key: str, known, required=()):
        if not isinstance(d, dict):
            self.fail(key or "(top level)", f"expected a JSON object, got {type(d).__name__}")
        for k in d:
            if k not in known:
                self.fail(f"{key}.{k}" if key else k, f"unknown key; known keys: {', '.join(sorted(known))}")
        for k in required:
            if k not in d:
                self.fail(f"{key}.{k}" if key else k, "missing required key")

    def typed(self, v, key: str, types, what: str):
        if not isinstance(v, types) or isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(key, f"expected {what}, got {json.dumps(v)}")
        return v

    def int_list(self, v, key: str, minimum: int = 0) -> List[int]:
        if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum
                                                       for x in v):
            self.fail(key, f"expected a non-empty list of integers >= {minimum}, got {json.dumps(v)}")
        if len(set(v)) != len(v):
            self.fail(key, f"duplicate entries in {json.dumps(v)}")
        return list(v)


def _method_budgets(m: dict, budgets: List[LabelBudget], c: "_Checker", key: str) -> Optional[List[str]]:
    """A method's own ``labelled_cases`` / ``label_fractions``: the subset of the suite's budgets it
    runs at (e.g. ablations at the smallest budget only); None (every budget) when it names none."""
    own = [(k, LabelBudget(kind, float(v))) for k, kind in (("labelled_cases", "cases"), ("label_fractions", "fraction"))
           for v in c.typed(m.get(k, []), f"{key}.{k}", list, "a list")]
    for k, b in (kb for kb in own if kb[1].tag not in {x.tag for x in budgets}):
        c.fail(f"{key}.{k}", f"{b.label} is not a label budget of the suite ({', '.join(x.label for x in budgets)})")
    if not own and ("labelled_cases" in m or "label_fractions" in m):
        c.fail(key, "an empty labelled_cases / label_fractions list leaves the method no cell; remove the key")
    return [b.tag for _, b in own] or None


def _schedule(sched, c: "_Checker", key: str, required=()) -> dict:
    c.keys(sched, key, set(SCHEDULE_KEYS), required=required)
    for k in set(sched) & {"epochs", "iterations", "val_iterations", "save_every"}:
        if c.typed(sched[k], f"{key}.{k}", int, "a positive integer") < 1:
            c.fail(f"{key}.{k}", "must be at least 1")
    return dict(sched)


def load_preset(path: str, name: str) -> Preset:
    c = _Checker(path)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SuiteError(f"{path}: cannot read the preset ({e}); fix the file or the suite's presets entry")
    return _parse_preset(d, c, "", name, path)


def _parse_preset(d, c: _Checker, key: str, name: str, source: str) -> Preset:
    c.keys(d, key, {"format", "name", "description", "trainer", "plans", "configuration", "train_args", "supervised"},
           required=("trainer",))
    if d.get("format", PRESET_FORMAT) != PRESET_FORMAT:
        c.fail(f"{key}.format".lstrip("."), f"expected {PRESET_FORMAT!r}")
    tr = c.typed(d["trainer"], f"{key}.trainer".lstrip("."), str, "a trainer class name")
    if not tr.startswith("nnUNetTrainer"):
        c.fail(f"{key}.trainer".lstrip("."), f"{tr!r} is not an nnU-Net trainer class name (nnUNetTrainer...)")
    args = d.get("train_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        c.fail(f"{key}.train_args".lstrip("."), "expected a list of strings (extra nnUNetv2_train arguments)")
    sup = d.get("supervised")
    if sup is not None:
        k = f"{key}.supervised".lstrip(".")
        c.keys(sup, k, {"dataset", "schedule", "seed"}, required=("dataset", "schedule"))
        c.typed(sup["dataset"], f"{k}.dataset", int, "the id of the labelled pool dataset")
        sup = {"dataset": sup["dataset"], "seed": c.typed(sup.get("seed", 0), f"{k}.seed", int, "an integer seed"),
               "schedule": _schedule(sup["schedule"], c, f"{k}.schedule", required=("epochs", "iterations"))}
    return Preset(name=name, trainer=tr, plans=d.get("plans", ""), configuration=d.get("configuration", ""),
                  train_args=list(args), description=d.get("description", ""), source=source, supervised=sup)


PHANTOM_KINDS = {
    "brats": ({"kind", "seg_id", "corpus_id", "num_train", "num_test", "corpus_cases", "spacing", "seed", "pool_id",
               "pool_train"}, {"num_train": 1, "num_test": 0, "corpus_cases": 1, "pool_train": 1}),
    "sites": ({"kind", "seg_id", "corpus_id", "pool_id", "site_cases", "pool_cases", "corpus_cases", "spacing", "seed"},
              {}),
}


def check_phantoms(ph, c: "_Checker", corpus_id: int) -> None:
    """The ``phantoms`` block: kind ``brats`` (default; the demo's phantoms) or ``sites`` (the
    multi-site phantoms: labelled cases, a labelled pool and a corpus, counts per site)."""
    c.keys(ph, "phantoms", set().union(*(k for k, _ in PHANTOM_KINDS.values())), required=("seg_id", "corpus_id"))
    kind = ph.get("kind", "brats")
    if kind not in PHANTOM_KINDS:
        c.fail("phantoms.kind", f"unknown kind {kind!r}; use one of {', '.join(PHANTOM_KINDS)}")
    known, minimum = PHANTOM_KINDS[kind]
    c.keys(ph, "phantoms", known, required=("seg_id", "corpus_id") + (("pool_id",) if kind == "sites" else ()))
    ids = [k for k in ("seg_id", "corpus_id", "pool_id") if k in ph]
    for k in ids:
        if not 1 <= c.typed(ph[k], f"phantoms.{k}", int, "a dataset id") <= 999:
            c.fail(f"phantoms.{k}", f"dataset ids are 1..999 in nnU-Net, got {ph[k]}")
    if len({ph[k] for k in ids}) != len(ids):
        c.fail("phantoms", f"the dataset ids {', '.join(f'{k}={ph[k]}' for k in ids)} must differ")
    for k, lo in minimum.items():
        if k in ph and c.typed(ph[k], f"phantoms.{k}", int, f"an integer >= {lo}") < lo:
            c.fail(f"phantoms.{k}", f"must be at least {lo}, got {ph[k]}")
    if kind == "sites":
        for k in ("site_cases", "pool_cases", "corpus_cases"):
            for site, n in c.typed(ph.get(k, {}), f"phantoms.{k}", dict, "an object site -> count").items():
                if site not in SITES:
                    c.fail(f"phantoms.{k}.{site}", f"unknown site; known: {', '.join(sorted(SITES))}")
                if c.typed(n, f"phantoms.{k}.{site}", int, "a count >= 0") < 0:
                    c.fail(f"phantoms.{k}.{site}", f"must be at least 0, got {n}")
    if "spacing" in ph and not (isinstance(ph["spacing"], (int, float)) and 0.5 <= ph["spacing"] <= 8):
        c.fail("phantoms.spacing", f"expected a voxel size of 0.5-8 mm, got {json.dumps(ph['spacing'])}")
    if ph["corpus_id"] != corpus_id:
        c.fail("phantoms.corpus_id", f"{ph['corpus_id']} differs from corpus.dataset {corpus_id}")


TOP_KEYS = {"format", "name", "description", "phantoms", "corpus", "plans", "configuration", "datasets", "num_folds",
            "folds", "seeds", "label_fractions", "labelled_cases", "schedule", "presets", "methods", "references",
            "device", "env", "split_seed", "missing_modality", "notes", "controls"}


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite (name under ``plans/`` or a path); presets are resolved."""
    path = resolve_suite_path(name_or_path)
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise SuiteError(f"{path}: not valid JSON ({e}); fix the file")
    return parse_suite(d, path)


def parse_suite(d: dict, path: str) -> Suite:
    c = _Checker(path)
    c.keys(d, "", TOP_KEYS, required=("name", "datasets", "folds", "seeds", "schedule", "methods", "corpus"))
    if d.get("format", SUITE_FORMAT) != SUITE_FORMAT:
        c.fail("format", f"expected {SUITE_FORMAT!r}, got {d.get('format')!r}")
    name = c.typed(d["name"], "name", str, "a string")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        c.fail("name", f"{name!r}: use letters, digits, '_', '.', '-'")
    num_folds = c.typed(d.get("num_folds", 5), "num_folds", int, "an integer >= 2")
    if num_folds < 2:
        c.fail("num_folds", f"must be at least 2, got {num_folds}")
    folds = c.int_list(d["folds"], "folds")
    if max(folds) >= num_folds:
        c.fail("folds", f"fold {max(folds)} does not exist with num_folds {num_folds}")
    seeds = c.int_list(d["seeds"], "seeds")
    if len(folds) * len(seeds) < 2:
        c.fail("seeds", "a single run per method gives no spread; use at least 2 seeds or folds")

    budgets: List[LabelBudget] = []
    for f_i, f in enumerate(d.get("label_fractions", [])):
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
            c.fail(f"label_fractions[{f_i}]", f"expected a fraction in (0, 1], got {json.dumps(f)}")
        budgets.append(LabelBudget("fraction", float(f)))
    if "labelled_cases" in d:
        budgets += [LabelBudget("cases", n) for n in c.int_list(d["labelled_cases"], "labelled_cases", 1)]
    if not budgets:
        budgets = [LabelBudget("fraction", 1.0)]
    if len({b.tag for b in budgets}) != len(budgets):
        c.fail("label_fractions", "duplicate label budgets")

    sched = _schedule(d["schedule"], c, "schedule", required=("epochs", "iterations", "val_iterations"))

    corpus = d["corpus"]
    c.keys(corpus, "corpus", {"dataset", "planner", "add_config", "args"}, required=("dataset",))
    c.typed(corpus["dataset"], "corpus.dataset", int, "a dataset id")
    configuration = c.typed(d.get("configuration", "3d_fullres"), "configuration", str, "a configuration name")
    if "add_config" in corpus:
        c.keys(corpus["add_config"], "corpus.add_config", {"name", "patch", "features", "batch"}, required=("name",))
        if corpus["add_config"]["name"] != configuration:
            c.fail("corpus.add_config.name", f"{corpus['add_config']['name']!r} differs from configuration "
                                             f"{configuration!r}; the cells train on the added configuration")
    plans = c.typed(d.get("plans", "mmPretrainPlans"), "plans", str, "a plans identifier")

    phantoms = d.get("phantoms")
    if phantoms is not None:
        check_phantoms(phantoms, c, corpus["dataset"])

    datasets = []
    for i, ds in enumerate(c.typed(d["datasets"], "datasets", list, "a list")):
        k = f"datasets[{i}]"
        c.keys(ds, k, {"id", "name", "task", "test", "regions", "patient_regex", "convert", "notes", "unseen"},
               required=("id",))
        task = ds.get("task", "segmentation")
        if task not in TASKS:
            c.fail(f"{k}.task", f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        unseen = ds.get("unseen")
        if unseen is not None:
            try:
                re.compile(c.typed(unseen, f"{k}.unseen", str, "a regular expression of case ids"))
            except re.error as e:
                c.fail(f"{k}.unseen", f"not a regular expression ({e})")
        rx = ds.get("patient_regex")
        if rx is not None:
            try:
                if re.compile(rx).groups < 1:
                    c.fail(f"{k}.patient_regex", "needs one group that captures the patient id")
            except re.error as e:
                c.fail(f"{k}.patient_regex", f"not a regular expression ({e})")
        datasets.append(DatasetSpec(id=c.typed(ds["id"], f"{k}.id", int, "a dataset id"), name=ds.get("name", ""),
                                    task=task, test=bool(ds.get("test", False)), regions=dict(ds.get("regions", {})),
                                    patient_regex=rx, convert=ds.get("convert", ""), unseen_regex=unseen))
    if not datasets:
        c.fail("datasets", "no datasets")
    if len({x.id for x in datasets}) != len(datasets):
        c.fail("datasets", "a dataset id is listed twice")

    presets: Dict[str, Preset] = {}
    for pname, spec in c.typed(d.get("presets", {}), "presets", dict, "an object name -> file or preset").items():
        if isinstance(spec, str):
            p = spec if os.path.isabs(spec) else os.path.join(PLANS_DIR, spec)
            if not os.path.isfile(p):
                p2 = os.path.join(os.path.dirname(path), spec)
                if not os.path.isfile(p2):
                    c.fail(f"presets.{pname}", f"no preset file {spec!r} (looked in {PLANS_DIR})")
                p = p2
            presets[pname] = load_preset(p, pname)
        else:
            presets[pname] = _parse_preset(spec, c, f"presets.{pname}", pname, path)
        pr = presets[pname]
        for attr, want in (("plans", plans), ("configuration", configuration)):
            got = getattr(pr, attr)
            if got and got != want:
                raise SuiteError(f"{pr.source}: {attr}: preset {pname!r} uses {got!r} but suite {path} fine-tunes "
                                 f"with {want!r}; the encoder must fit the fine-tuning {attr}")
            setattr(pr, attr, want)

    methods: Dict[str, Method] = {}
    for mname, m in c.typed(d["methods"], "methods", dict, "an object name -> method").items():
        k = f"methods.{mname}"
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", mname):
            c.fail(k, "method names use letters, digits, '_' and '-' only")
        c.keys(m, k, {"finetune", "trainer", "pretraining", "stem", "compare_to", "description", "labelled_cases",
                      "label_fractions", "schedule"}, required=("finetune",))
        kind = m["finetune"]
        if kind not in KINDS:
            c.fail(f"{k}.finetune", f"unknown method {kind!r}; use one of {', '.join(KINDS)}")
        pre = m.get("pretraining")
        needs = KINDS[kind][1]
        if needs and not pre:
            c.fail(f"{k}.pretraining", f"{kind} needs a pretraining preset (one of: {', '.join(presets) or 'none defined'})")
        if pre and not needs and not m.get("trainer"):
            c.fail(f"{k}.pretraining", f"{kind} does not use a pretrained encoder; remove the key")
        if pre and pre not in presets:
            c.fail(f"{k}.pretraining", f"unknown preset {pre!r}; define it under presets (known: "
                                       f"{', '.join(presets) or 'none'})")
        stem = m.get("stem")
        if stem is not None and stem not in STEMS:
            c.fail(f"{k}.stem", f"unknown stem strategy {stem!r}; use one of {', '.join(STEMS)}")
        tr = m.get("trainer")
        if tr is not None and not (isinstance(tr, str) and tr.startswith("nnUNetTrainer")):
            c.fail(f"{k}.trainer", f"{tr!r} is not an nnU-Net trainer class name")
        methods[mname] = Method(mname, kind, tr, pre, stem, list(m.get("compare_to", [])),
                                _method_budgets(m, budgets, c, k), _schedule(m.get("schedule", {}), c, f"{k}.schedule"))
    if "scratch" not in methods:
        c.fail("methods", "needs a 'scratch' method: every delta is measured against it")
    for m in methods.values():
        for b in m.compare_to:
            if b not in methods or b == m.name:
                c.fail(f"methods.{m.name}.compare_to", f"{b!r} is not another method of this suite")

    controls = d.get("controls")
    if controls is not None:
        c.keys(controls, "controls", {"positive", "random", "min_gap"}, required=("positive", "random"))
        for k in ("positive", "random"):
            if controls[k] not in methods:
                c.fail(f"controls.{k}", f"{controls[k]!r} is not a method of this suite")
        gap = controls.get("min_gap", 5.0)
        if not isinstance(gap, (int, float)) or isinstance(gap, bool) or gap < 0:
            c.fail("controls.min_gap", f"expected a number of Dice points >= 0, got {json.dumps(gap)}")
    refs = c.typed(d.get("references", []), "references", list, "a list")
    for i, r in enumerate(refs):
        c.keys(r, f"references[{i}]", {"dataset", "fraction", "method", "region", "value", "metric", "source", "label"},
               required=("dataset", "value", "source"))
    mm = d.get("missing_modality")
    if mm is not None:
        from nnunet_mmpretrain.benchmark.missing import check_spec
        check_spec(mm, c, methods, presets)
    device = d.get("device", "cpu")
    if device not in ("cpu", "cuda", "mps"):
        c.fail("device", f"unknown device {device!r}; use cpu, cuda or mps")
    env = c.typed(d.get("env", {}), "env", dict, "an object of environment variables")
    return Suite(name=name, path=path, description=d.get("description", ""), datasets=datasets, folds=folds,
                 num_folds=num_folds, seeds=seeds, budgets=budgets, schedule=dict(sched), methods=methods,
                 presets=presets, corpus=dict(corpus), plans=plans, configuration=configuration, phantoms=phantoms,
                 references=refs, device=device, env={k: str(v) for k, v in env.items()},
                 split_seed=int(d.get("split_seed", 12345)), missing_modality=mm, raw=d)
