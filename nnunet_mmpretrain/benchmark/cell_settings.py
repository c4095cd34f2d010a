"""The run settings of one benchmark cell, recorded with the run.

The runner writes ``mmpretrain_cell.json`` into the cell's fold folder (beside nnU-Net's
checkpoints) before it starts ``nnUNetv2_train``; the benchmark trainers (:mod:`.trainers`) read
it from their own output folder, so a cell resumed by hand with plain
``nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerMMBench... -p PLANS --c`` continues with its
own schedule, split and seed. The file::

    {"format": "nnunet_mmpretrain.cell/1", "cell": NAME, "trainer": ...,
     "schedule": {"epochs": ..., "iterations": ..., ...},      # Schedule fields
     "split": {"train": [case ids], "val": [case ids]},          # the split itself (self-contained)
     "split_file": PATH, "split_sha256": ...,                    # where it came from
     "seed": INT, "bundle": PATH or null, "stem": NAME or null, "freeze_encoder": BOOL}

Environment variables still override a recorded value (``$nnUNet_mmpretrain_bench_schedule`` JSON,
``$nnUNet_mmpretrain_bench_split`` split file, ``$nnUNet_mmpretrain_bench_seed``,
``$nnUNet_mmpretrain_bundle``, ``$nnUNet_mmpretrain_stem``), each with a warning naming both values.
The trainers store the settings they used in the checkpoint and refuse (one line, exit code 2) to
resume a checkpoint whose :data:`COMPARED` settings differ.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Mapping, Optional, Tuple

from nnunet_mmpretrain.io_utils import atomic_write_json

FILE = "mmpretrain_cell.json"
FORMAT = "nnunet_mmpretrain.cell/1"
#: the key under which the trainers keep the settings in a checkpoint's ``init_args``
CHECKPOINT_KEY = "mmpretrain_cell"
ENV_SCHEDULE = "nnUNet_mmpretrain_bench_schedule"
ENV_SPLIT = "nnUNet_mmpretrain_bench_split"
ENV_SEED = "nnUNet_mmpretrain_bench_seed"
ENV_BUNDLE = "nnUNet_mmpretrain_bundle"
ENV_STEM = "nnUNet_mmpretrain_stem"
#: settings that must match to resume a checkpoint (the bundle is not compared: on a resume the
#: weights come from the checkpoint, and the bundle's path changes when folders move)
COMPARED = ("schedule", "split_sha256", "seed", "stem", "freeze_encoder")
#: environment variables that would override a cell's recorded settings: the runner never passes them on
OVERRIDES = (ENV_SCHEDULE, ENV_SPLIT, ENV_SEED, ENV_BUNDLE, ENV_STEM)


class CellSettingsError(ValueError):
    """A cell settings file or override that cannot be used (one line naming the file and the fix)."""


def split_sha256(split: Optional[Mapping]) -> Optional[str]:
    """SHA-256 of a split's content (train and val lists, canonical JSON); None for no split."""
    if split is None:
        return None
    canon = json.dumps({"train": list(split["train"]), "val": list(split["val"])}, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def make(name: str, trainer: str, schedule: dict, split_file: Optional[str], seed: int, bundle: Optional[str],
         stem: Optional[str], freeze_encoder: bool) -> dict:
    """The settings of a cell (what the runner writes); the split is read from ``split_file``
    (None: nnU-Net's own split, e.g. fold ``all`` of the positive control's training)."""
    split = None if split_file is None else _read_split(split_file)
    return {"format": FORMAT, "cell": name, "trainer": trainer, "schedule": dict(schedule), "split": split,
            "split_file": None if split_file is None else os.path.abspath(split_file), "split_sha256": split_sha256(split),
            "seed": int(seed), "bundle": None if bundle is None else os.path.abspath(bundle), "stem": stem,
            "freeze_encoder": bool(freeze_encoder)}


def differences(a: Optional[Mapping], b: Optional[Mapping]) -> List[str]:
    """The :data:`COMPARED` keys whose values differ between two settings dicts."""
    a, b = a or {}, b or {}
    return [k for k in COMPARED if a.get(k) != b.get(k)]


def write(fold_dir: str, settings: dict) -> None:
    """Write ``settings`` into ``fold_dir`` (atomically); an existing file with other
    :data:`COMPARED` settings raises :class:`CellSettingsError` and is left as it is."""
    path = os.path.join(fold_dir, FILE)
    if os.path.isfile(path):
        old = read(fold_dir)
        diff = differences(old, settings)
        if diff:
            raise CellSettingsError(f"{path}: this cell was started with other settings ({', '.join(diff)}); use a "
                                    f"new output folder or delete {os.path.dirname(path)}")
        if old == settings:
            return
    os.makedirs(fold_dir, exist_ok=True)
    atomic_write_json(settings, path)


def write_for_cell(fold_dir: str, cell, schedule: dict, split_file: str, bundle: Optional[str]) -> None:
    """Record a benchmark cell's settings (its name, trainer, seed, stem and freezing from ``cell``,
    a :class:`~nnunet_mmpretrain.benchmark.runner.Cell`) in its fold folder."""
    write(fold_dir, make(cell.name, cell.trainer, schedule, split_file, cell.seed, bundle, cell.method.stem,
                         cell.method.kind.endswith("_frozen")))


def read(fold_dir: str) -> Optional[dict]:
    """The recorded settings of the cell whose fold folder is ``fold_dir``, or None."""
    path = os.path.join(fold_dir, FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise CellSettingsError(f"{path}: cannot read the cell settings ({type(e).__name__}: {e}); restore the "
                                f"file or run the cell again in a new folder") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CellSettingsError(f"{path}: not a cell settings file (format {FORMAT!r} expected); restore it or run "
                                f"the cell again in a new folder")
    return d


def _read_split(path: str) -> dict:
    try:
        with open(path) as f:
            split = json.load(f)
        return {"train": [str(c) for c in split["train"]], "val": [str(c) for c in split["val"]]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CellSettingsError(f"{path}: not a split file with 'train' and 'val' case lists ({type(e).__name__}); "
                                f"fix it or unset {ENV_SPLIT}") from None


def resolve(recorded: Optional[dict], environ: Mapping[str, str]) -> Tuple[Dict, List[str]]:
    """The settings a trainer uses: ``recorded`` (or nothing) with environment overrides applied.

    Returns (settings, warnings): one warning per environment variable that replaces a recorded
    value or sets one that nothing recorded."""
    s = {k: (recorded or {}).get(k) for k in ("schedule", "split", "split_file", "split_sha256", "seed", "bundle",
                                               "stem", "freeze_encoder")}
    where = f"the cell's {FILE}" if recorded else "no recorded cell settings"
    notes: List[str] = []

    def override(key: str, env: str, value, shown=None):
        if s[key] != value:
            notes.append(f"OVERRIDE: ${env} sets {key} = {shown if shown is not None else value} "
                         f"(instead of {s[key] if recorded else 'nnU-Net default'}, from {where})")
        s[key] = value

    raw = environ.get(ENV_SCHEDULE)
    if raw:
        try:
            sched = json.loads(raw)
            assert isinstance(sched, dict)
        except (ValueError, AssertionError):
            raise CellSettingsError(f"${ENV_SCHEDULE} = {raw!r} is not a JSON object of schedule fields; fix or "
                                    f"unset it") from None
        override("schedule", ENV_SCHEDULE, sched)
    if environ.get(ENV_SPLIT):
        split = _read_split(environ[ENV_SPLIT])
        if split_sha256(split) != s["split_sha256"]:
            override("split_sha256", ENV_SPLIT, split_sha256(split), shown=environ[ENV_SPLIT])
        s.update(split=split, split_file=os.path.abspath(environ[ENV_SPLIT]), split_sha256=split_sha256(split))
    if environ.get(ENV_SEED, "") != "":
        try:
            override("seed", ENV_SEED, int(environ[ENV_SEED]))
        except ValueError:
            raise CellSettingsError(f"${ENV_SEED} = {environ[ENV_SEED]!r} is not an integer; fix or unset it") from None
    if environ.get(ENV_BUNDLE):
        override("bundle", ENV_BUNDLE, os.path.abspath(environ[ENV_BUNDLE]))
    if environ.get(ENV_STEM):
        override("stem", ENV_STEM, environ[ENV_STEM])
    return s, notes
