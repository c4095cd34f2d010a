"""Classification labels from a table (ADNI, ADHD-200, ABIDE, ...) -> nnU-Net raw dataset +
``classes.csv``.

Inputs: a CSV/TSV table with an id column and a label column, and a folder of images found
through one pattern per channel relative to that folder, with ``{id}`` standing for the id and
glob wildcards allowed, e.g. ``{id}.nii.gz``, ``{id}/anat/*_T1w.nii.gz``, ``**/{id}_mprage.nii``.

* Class names are mapped to integers: with ``class_map`` ({name: int}) only those classes are kept
  (rows of other classes are skipped with a reason); without, the distinct names are sorted
  (numerically when they all are numbers) and numbered 0..K-1. The mapping is written to
  dataset.json (``classification.classes``) and printed.
* Rows without an image, rows with an ambiguous image (several files match), duplicate ids and
  images (of the first pattern) without a row are reported as skipped. Ids must be valid case
  ids (letters, digits, ``_ . -``); ids with path separators or ``..`` are rejected.
* nnU-Net's planning needs a label file per case: by default a foreground mask of channel 0
  (Otsu threshold; ``mask='nonzero'`` for skull-stripped images) is written as label 1 -- a
  placeholder, not an annotation. ``mask='none'`` writes no labelsTr (the dataset then cannot be
  planned by nnU-Net as it is).
* ``classes.csv`` header: ``case,label,class``.
"""
from __future__ import annotations

import csv
import glob
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mmpretrain.conversion.common import (
    CaseSpec, ConversionError, ConversionSummary, DatasetInfo, ImageSpec, LabelSpec,
    convert_segmentation, dataset_folder, display, require_root, seg_image_dst, seg_label_dst,
    visible, report_summary)
from nnunet_mmpretrain.corpus.manifest import ManifestError, check_case_id

KIND = "CSV labels"
DEFAULT_ID = 540


def read_table(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
    if not os.path.isfile(path):
        raise ConversionError(f"label table {path} does not exist.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise ConversionError(f"label table {path} is empty.")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
            for r in reader]
    return cols, rows


def pattern_regex(pattern: str) -> "re.Pattern[str]":
    """Regex matching paths (relative, '/'-separated) that ``pattern`` describes; group 'id'."""
    out, seen_id = "", False
    for part in re.split(r"(\{id\}|\*\*/|\*|\?)", pattern):
        if part == "{id}":
            out += "(?P=id)" if seen_id else r"(?P<id>[^/]+?)"
            seen_id = True
        elif part == "**/":
            out += r"(?:.*/)?"
        elif part == "*":
            out += r"[^/]*"
        elif part == "?":
            out += r"[^/]"
        else:
            out += re.escape(part)
    return re.compile(out)


def class_numbers(names: Sequence[str]) -> Dict[str, int]:
    uniq = sorted(set(names))
    try:
        uniq = sorted(uniq, key=float)
    except ValueError:
        pass
    return {n: i for i, n in enumerate(uniq)}


def build_specs(root: str, rows: List[Dict[str, str]], id_column: str, label_column: str,
                patterns: Sequence[str], class_map: Optional[Mapping[str, int]], mask: str,
                summary_files: Dict[str, str]) -> Tuple[List[CaseSpec], Dict[str, int]]:
    labelled = [r for r in rows if r.get(label_column, "") != ""]
    if class_map is None:
        class_map = class_numbers([r[label_column] for r in labelled])
    specs: List[CaseSpec] = []
    seen: Dict[str, int] = {}
    for n, r in enumerate(rows, start=2):  # line numbers as in a spreadsheet (header = line 1)
        cid, cls = r.get(id_column, ""), r.get(label_column, "")
        key = cid or f"<row {n}>"
        if not cid:
            specs.append(CaseSpec(case_id=key, problem=f"row {n}: empty {id_column!r}"))
            continue
        if cid in seen:
            summary_files[f"row {n}"] = f"duplicate id {cid!r} (first on row {seen[cid]})"
            continue
        seen[cid] = n
        spec = CaseSpec(case_id=cid, info={"class": cls, "row": n})
        try:
            check_case_id(cid, f"row {n}")
        except ManifestError as e:
            spec.problem = str(e)
            specs.append(spec)
            continue
        if cls == "":
            spec.problem = f"row {n}: no value in {label_column!r}"
        elif cls not in class_map:
            spec.problem = f"row {n}: class {cls!r} not selected (classes: {', '.join(class_map)})"
        else:
            spec.info["label"] = int(class_map[cls])
        for i, pat in enumerate(patterns):
            g = os.path.join(root, pat.replace("{id}", glob.escape(cid)))
            hits = sorted(p for p in glob.glob(g, recursive=True) if os.path.isfile(p) and visible(os.path.basename(p)))
            if not hits and spec.problem is None:
                spec.problem = f"no image matches {g}"
            elif len(hits) > 1 and spec.problem is None:
                spec.problem = f"{len(hits)} images match {g} (ambiguous): {', '.join(hits[:3])}"
            spec.images.append(ImageSpec(src=hits[0] if hits else g, dst=seg_image_dst(cid, i),
                                         what=f"channel {i} image"))
        if mask != "none":
            spec.label = LabelSpec(src=spec.images[0].src, dst=seg_label_dst(cid), mask=mask)
        specs.append(spec)
    # images without a row
    rx = pattern_regex(patterns[0])
    ids = set(seen)
    for cur, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(cur, f), root).replace(os.sep, "/")
            m = rx.fullmatch(rel)
            if m and m.group("id") not in ids and visible(f):
                summary_files[os.path.join(cur, f)] = f"image without a row in the table (id {m.group('id')!r})"
    return specs, dict(class_map)


def convert(image_root: str, csv_path: str, id_column: str, label_column: str,
            patterns: Sequence[str] = ("{id}.nii.gz",), modalities: Optional[Sequence[str]] = None,
            class_map: Optional[Mapping[str, int]] = None, mask: str = "otsu",
            out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID, name: Optional[str] = None, *,
            link: bool = True, dry_run: bool = False, overwrite: bool = False, num_processes: int = 1,
            progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    """``patterns``: one per channel; ``modalities``: channel names (default T1 for one channel)."""
    root = require_root(image_root, "image")
    patterns = list(patterns)
    if not patterns or any("{id}" not in p for p in patterns):
        raise ConversionError(f"every image pattern must contain {{id}}, got {patterns}.")
    if any(os.path.isabs(p) or ".." in p.split("/") for p in patterns):
        raise ConversionError("image patterns are relative to the image folder and may not contain '..'.")
    modalities = list(modalities or (["T1"] if len(patterns) == 1 else []))
    if len(modalities) != len(patterns):
        raise ConversionError(f"give one modality per image pattern ({len(patterns)} pattern(s), "
                              f"{len(modalities)} modality name(s)).")
    if mask not in ("otsu", "nonzero", "none"):
        raise ConversionError(f"mask must be otsu, nonzero or none, got {mask!r}.")
    cols, rows = read_table(csv_path)
    for c in (id_column, label_column):
        if c not in cols:
            raise ConversionError(f"column {c!r} not in {csv_path} (columns: {', '.join(cols)}).")
    if not rows:
        raise ConversionError(f"{csv_path} has no data rows.")
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_\-]", "_", os.path.splitext(os.path.basename(csv_path))[0]) or "CSVLabels"
        if not name[0].isalnum():
            name = "CSV" + name
    folder = dataset_folder(out_dir, dataset_id, name)
    skipped_files: Dict[str, str] = {}
    specs, cmap = build_specs(root, rows, id_column, label_column, patterns,
                              dict(class_map) if class_map is not None else None, mask, skipped_files)
    classes = {str(v): k for k, v in sorted(cmap.items(), key=lambda kv: kv[1])}
    info = DatasetInfo(
        channel_names=[display(m) for m in modalities],
        labels={"background": 0, "foreground": 1} if mask != "none" else {"background": 0},
        description=f"classification dataset from {os.path.basename(csv_path)} (column {label_column!r}); "
                    + ("labelsTr hold a placeholder foreground mask (" + mask + "), not annotations."
                       if mask != "none" else "no labelsTr."),
        extra={"classification": {"file": "classes.csv", "classes": classes, "table": os.path.abspath(csv_path),
                                  "id_column": id_column, "label_column": label_column},
               "conversion": {"kind": "csv-labels", "source": root, "patterns": patterns, "mask": mask}})
    summary = convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                   num_processes=num_processes, progress=progress, print_summary=False,
                                   classes=(("case", "label", "class"),
                                            lambda s: (s.case_id, s.info["label"], s.info["class"])))
    summary.skipped_files.update(skipped_files)
    summary.notes.append("classes: " + ", ".join(f"{k} -> {v}" for k, v in sorted(cmap.items(), key=lambda kv: kv[1])))
    if mask == "none":
        summary.notes.append("no labelsTr written (mask none): nnU-Net cannot plan this dataset as it is.")
    if print_summary:
        report_summary(summary)
    return summary
