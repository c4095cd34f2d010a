"""Class labels of an nnU-Net raw dataset: ``classes.csv`` beside ``dataset.json``.

Format (what the converters and the phantom generator write)::

    case,label[,grade|class|...]      header; further columns are ignored
    grade_0000,1,high
    grade_0001,0,low

``label`` holds the class id (an integer) or a class *name*. The names come from
``dataset.json`` ``classification.classes`` (``{"0": "LGG", "1": "HGG"}``); a name there maps to
its id. Without that block the ids are the integers found (names are their strings), or, when the
labels are names, the sorted names numbered 0..K-1.

Where the file is looked up (first hit): ``$nnUNet_mmpretrain_classes``; ``$nnUNet_raw/DATASET/``
+ ``classification.file`` of dataset.json (default ``classes.csv``); the same name in
``$nnUNet_preprocessed/DATASET/``.

:func:`load_class_table` checks the table against the dataset's cases before any work; every
problem is a :class:`ClassLabelError` whose message is one line naming the file and the fix.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_mmpretrain.io_utils import read_csv_text

log = logging.getLogger(__name__)

ENV_CLASSES = "nnUNet_mmpretrain_classes"
DEFAULT_FILE = "classes.csv"
CASE_COLUMNS = ("case", "case_id", "id", "identifier")
LABEL_COLUMNS = ("label", "class_id")


class ClassLabelError(ValueError):
    """A problem with the class table; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class ClassTable:
    """Validated labels: ``labels[case] -> class id``; ``names[id] -> class name`` for ids 0..K-1."""
    path: str
    labels: Dict[str, int]
    names: Dict[int, str]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def counts(self) -> Dict[int, int]:
        out = {k: 0 for k in self.names}
        for v in self.labels.values():
            out[v] += 1
        return out

    def names_json(self) -> Dict[str, str]:
        return {str(k): v for k, v in sorted(self.names.items())}


def _few(items: Sequence[str], n: int = 5) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def declared_classes(dataset_json: Mapping) -> Optional[Dict[int, str]]:
    """``dataset.json`` ``classification.classes`` as {id: name}, or None when absent."""
    block = (dataset_json or {}).get("classification") or {}
    cl = block.get("classes")
    if not cl:
        return None
    return {int(k): str(v) for k, v in cl.items()}


def find_class_file(dataset_name: str, dataset_json: Mapping) -> str:
    """Path of the class table for ``dataset_name`` (see the module doc); raises when none exists."""
    env = os.environ.get(ENV_CLASSES)
    if env:
        if not os.path.isfile(env):
            raise ClassLabelError(f"{env} (from ${ENV_CLASSES}) does not exist: point {ENV_CLASSES} at the "
                                  f"dataset's classes.csv or unset it.")
        return env
    fname = ((dataset_json or {}).get("classification") or {}).get("file") or DEFAULT_FILE
    tried = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = os.environ.get(var)
        if root:
            p = os.path.join(root, dataset_name, fname)
            tried.append(p)
            if os.path.isfile(p):
                return p
    raise ClassLabelError(f"no class table for {dataset_name}: expected {tried[0] if tried else fname} "
                          f"(columns case,label); write it, or set {ENV_CLASSES}=FILE.")


def _read_rows(path: str) -> List[Dict[str, str]]:
    text, reader = read_csv_text(path)
    if reader is None:
        raise ClassLabelError(f"{path} is empty: write a header 'case,label' and one row per case.")
    cols = [c.strip().lower() for c in (reader.fieldnames or [])]
    case_col = next((c for c in CASE_COLUMNS if c in cols), None)
    label_col = next((c for c in LABEL_COLUMNS if c in cols), None)
    if case_col is None or label_col is None:
        raise ClassLabelError(f"{path} has columns {', '.join(cols) or '(none)'}; it needs a header 'case,label' "
                              f"(case id, class id or name): fix the header.")
    rows = []
    for r in reader:
        r = {(k or "").strip().lower(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
        if not any(r.values()):
            continue
        rows.append({"case": r.get(case_col, ""), "label": r.get(label_col, "")})
    if not rows:
        raise ClassLabelError(f"{path} has a header but no rows: add one row 'case,label' per case.")
    return rows


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def load_class_table(path: str, case_ids: Sequence[str], dataset_json: Optional[Mapping] = None) -> ClassTable:
    """Read and validate ``path`` against ``case_ids`` (the dataset's training cases).

    Refused: empty file or no rows, missing columns, empty or duplicate ids, empty labels, labels
    that are neither a declared id nor a declared name, cases without a row, rows for unknown cases,
    a declared class without cases, fewer than two classes.
    """
    if not os.path.isfile(path):
        raise ClassLabelError(f"{path} does not exist: write the class table (columns case,label).")
    rows = _read_rows(path)
    declared = declared_classes(dataset_json or {})
    seen: Dict[str, int] = {}
    raw: Dict[str, str] = {}
    for n, r in enumerate(rows, start=2):
        cid, lab = r["case"], r["label"]
        if not cid:
            raise ClassLabelError(f"{path} row {n} has no case id: fill it in or delete the row.")
        if cid in seen:
            raise ClassLabelError(f"{path} lists case {cid!r} twice (rows {seen[cid]} and {n}): keep one row per case.")
        if not lab:
            raise ClassLabelError(f"{path} row {n} (case {cid!r}) has no label: give its class id or name.")
        seen[cid] = n
        raw[cid] = lab
    if declared is not None:
        by_name = {v: k for k, v in declared.items()}
        names = dict(declared)
        labels = {}
        for cid, lab in raw.items():
            if _is_int(lab) and int(lab) in declared:
                labels[cid] = int(lab)
            elif lab in by_name:
                labels[cid] = by_name[lab]
            else:
                known = ", ".join(f"{k}={v}" for k, v in sorted(declared.items()))
                raise ClassLabelError(f"{path} row {seen[cid]} (case {cid!r}) has unknown class {lab!r}; dataset.json "
                                      f"declares {known}: fix the label or add the class to dataset.json "
                                      f"classification.classes.")
    elif all(_is_int(v) for v in raw.values()):
        ids = sorted({int(v) for v in raw.values()})
        if ids[0] < 0:
            raise ClassLabelError(f"{path} has negative class id {ids[0]}: use ids 0..K-1.")
        names = {i: str(i) for i in range(ids[-1] + 1)}
        labels = {c: int(v) for c, v in raw.items()}
    else:
        order = sorted(set(raw.values()))
        names = dict(enumerate(order))
        labels = {c: order.index(v) for c, v in raw.items()}
    cases = set(case_ids)
    missing = sorted(cases - set(labels))
    if missing:
        raise ClassLabelError(f"{path} has no row for {len(missing)} case(s) of the dataset ({_few(missing)}): add "
                              f"'case,label' rows for them (or remove the cases from the dataset).")
    extra = sorted(set(labels) - cases)
    if extra:
        raise ClassLabelError(f"{path} has rows for {len(extra)} case(s) that are not in the dataset ({_few(extra)}): "
                              f"delete those rows or check the case ids (no _0000 channel suffix, no file ending).")
    if names and sorted(names) != list(range(len(names))):
        raise ClassLabelError(f"{path}: class ids must be 0..K-1, got {sorted(names)}: renumber the classes.")
    counts = {k: 0 for k in names}
    for v in labels.values():
        counts[v] += 1
    present = [k for k, c in counts.items() if c]
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        raise ClassLabelError(f"{path} has a single class ({only!r}) among the dataset's {len(cases)} cases: "
                              f"classification needs at least two classes with cases.")
    empty = [names[k] for k, c in counts.items() if not c]
    if empty:
        raise ClassLabelError(f"{path}: class(es) {', '.join(map(repr, empty))} have no case: add cases, or remove the "
                              f"class from dataset.json classification.classes (ids must stay 0..K-1).")
    log.info("class table %s: %d cases, %s", path, len(labels),
             ", ".join(f"{names[k]}={c}" for k, c in sorted(counts.items())))
    return ClassTable(path=os.path.abspath(path), labels=labels, names=names)


def load_labels_for_plans(plans: dict, configuration: str, dataset_json: dict) -> ClassTable:
    """The class table of the plans' dataset, checked against the cases preprocessed for ``configuration``
    (what a trainer sees); raises :class:`ClassLabelError`."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    name = plans["dataset_name"]
    ident = PlansManager(plans).get_configuration(configuration).data_identifier
    folder = os.path.join(str(nnUNet_preprocessed), name, ident)
    if not os.path.isdir(folder):
        raise ClassLabelError(f"no preprocessed data at {folder}: preprocess configuration {configuration!r} of "
                              f"{name} first (nnUNetv2_mmpretrain_transfer_plans ... --preprocess or nnU-Net's "
                              f"preprocessing).")
    cases = infer_dataset_class(folder).get_identifiers(folder)
    return load_class_table(find_class_file(name, dataset_json), cases, dataset_json)
