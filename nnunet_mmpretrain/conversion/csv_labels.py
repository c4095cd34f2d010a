"""Classification labels from a table (ADNI, ADHD-200, ABIDE, ...) -> nnU-Net raw dataset +
``classes.csv``.

Inputs: a CSV/TSV table with an id column and a label column, and a folder of images found
through one pattern per channel relative to that folder, with ``{id}`` standing for the id and
glob wildcards allowed, e.g. ``{id}.nii.gz``, ``{id}/anat/*_T1w.nii.gz``, ``**/{id}_mprage.nii``.

* Class names are mapped to integers: with ``class_map`` ({name: int}) only those classes are kept
  (rows of other classes are skipped with a reason); without, the distinct names are sorted
  (numerically when they all are numbers) and numbered 0..K-1. The mapping is written to
  dataset.json (``classification.classes``) and printed.
* Rows without an image, ids with several rows or several matching images (visits: choose one
  with ``visit`` = 'first' | 'last' | a value of ``visit_column``; ``{visit}`` in a pattern puts
  the chosen row's visit value into the path) and images (of the first pattern) without a row are
  reported as skipped. Ids must be valid case
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

from nnunet_mmpretrain.conversion import visits
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
    for part in re.split(r"(\{[^{}/]+\}|\*\*/|\*|\?)", pattern):
        if part == "{id}":
            out += "(?P=id)" if seen_id else r"(?P<id>[^/]+?)"
            seen_id = True
        elif part.startswith("{") and part.endswith("}"):  # {visit}, {COLUMN}
            out += r"[^/]*?"
        elif part == "**/":
            out += r"(?:.*/)?"
        elif part == "*":
            out += r"[^/]*"
        elif part == "?":
            out += r"[^/]"
        else:
            out += re.escape(part)
    return re.compile(out)


PLACEHOLDER_RE = re.compile(r"\{([^{}/]+)\}")


def fill_pattern(pattern: str, case_id: str, row: Dict[str, str], visit_column: Optional[str]) -> str:
    """``{id}``, ``{visit}`` (the visit column) and ``{COLUMN}`` (any column of the chosen row)
    replaced by their values, glob-escaped."""
    def value(m: "re.Match[str]") -> str:
        k = m.group(1)
        v = case_id if k == "id" else row.get(visit_column or "", "") if k == "visit" else row.get(k, "")
        return glob.escape(v)
    return PLACEHOLDER_RE.sub(value, pattern)


def class_numbers(names: Sequence[str]) -> Dict[str, int]:
    uniq = sorted(set(names))
    try:
        uniq = sorted(uniq, key=float)
    except ValueError:
        pass
    return {n: i for i, n in enumerate(uniq)}


def build_specs(root: str, rows: List[Dict[str, str]], id_column: str, label_column: str,
                patterns: Sequence[str], class_map: Optional[Mapping[str, int]], mask: str,
                summary_files: Dict[str, str], visit: Optional[str] = None,
                visit_column: Optional[str] = None) -> Tuple[List[CaseSpec], Dict[str, int]]:
    """One case per id; ``visit`` / ``visit_column``: the rule choosing one visit of a subject
    with several rows or images (:mod:`~nnunet_mmpretrain.conversion.visits`)."""
    specs: List[CaseSpec] = []
    groups: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
    for n, r in enumerate(rows, start=2):  # line numbers as in a spreadsheet (header = line 1)
        cid = r.get(id_column, "")
        if not cid:
            specs.append(CaseSpec(case_id=f"<row {n}>", problem=f"row {n}: empty {id_column!r}"))
            continue
        groups.setdefault(cid, []).append((n, r))
    chosen: Dict[str, Tuple[Optional[Tuple[int, Dict[str, str]]], Optional[str]]] = {
        cid: visits.choose_row(g, visit, visit_column, cid) for cid, g in groups.items()}
    if class_map is None:
        class_map = class_numbers([nr[1][label_column] for nr, _ in chosen.values()
                                   if nr is not None and nr[1].get(label_column, "") != ""])
    for cid, (nr, why) in chosen.items():
        n, r = nr if nr is not None else (groups[cid][0][0], {})
        cls = r.get(label_column, "")
        spec = CaseSpec(case_id=cid, info={"class": cls, "row": n, "visit": r.get(visit_column or "", "")})
        specs.append(spec)
        try:
            check_case_id(cid, f"row {n}")
        except ManifestError as e:
            spec.problem = str(e)
            continue
        if why:
            spec.problem = why
        elif cls == "":
            spec.problem = f"row {n}: no value in {label_column!r}"
        elif cls not in class_map:
            spec.problem = f"row {n}: class {cls!r} not selected (classes: {', '.join(class_map)})"
        else:
            spec.info["label"] = int(class_map[cls])
        for i, pat in enumerate(patterns):
            g = os.path.join(root, fill_pattern(pat, cid, r, visit_column))
            hits = sorted(p for p in glob.glob(g, recursive=True) if os.path.isfile(p) and visible(os.path.basename(p)))
            src, problem = visits.choose_image(hits, visit, bool(set(PLACEHOLDER_RE.findall(pat)) - {"id"}), g,
                                                 len(groups[cid]) > 1)
            if spec.problem is None:
                spec.problem = problem
            spec.images.append(ImageSpec(src=src or (hits[0] if hits else g), dst=seg_image_dst(cid, i),
                                         what=f"channel {i} image"))
        if mask != "none":
            spec.label = LabelSpec(src=spec.images[0].src, dst=seg_label_dst(cid), mask=mask)
    seen = set(groups)
    # images without a row
    rx = pattern_regex(patterns[0])
    ids = seen
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
            visit: Optional[str] = None, visit_column: Optional[str] = None,
            link: bool = True, dry_run: bool = False, overwrite: bool = False, num_processes: int = 1,
            progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    """``patterns``: one per channel (``{id}``, optionally ``{visit}``); ``modalities``: channel
    names (default T1 for one channel); ``visit``: None (several visits of an id are ambiguous),
    'first', 'last' or a value of ``visit_column`` (:mod:`~nnunet_mmpretrain.conversion.visits`)."""
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
    for c in (id_column, label_column) + ((visit_column,) if visit_column else ()):
        if c not in cols:
            raise ConversionError(f"column {c!r} not in {csv_path} (columns: {', '.join(cols)}).")
    if visit is not None and visit not in visits.RULES and not visit_column:
        raise ConversionError(f"--visit {visit} selects rows by their visit value: name the column holding it "
                              f"with --visit-column (columns: {', '.join(cols)}).")
    if any("{visit}" in p for p in patterns) and not visit_column:
        raise ConversionError("a pattern with {visit} needs --visit-column (the column whose value replaces it).")
    unknown = sorted({k for p in patterns for k in PLACEHOLDER_RE.findall(p)} - {"id", "visit"} - set(cols))
    if unknown:
        raise ConversionError(f"pattern placeholder(s) {', '.join('{' + k + '}' for k in unknown)} name no column "
                              f"of {csv_path} (use {{id}}, {{visit}} or a column: {', '.join(cols)}).")
    if not rows:
        raise ConversionError(f"{csv_path} has no data rows.")
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_\-]", "_", os.path.splitext(os.path.basename(csv_path))[0]) or "CSVLabels"
        if not name[0].isalnum():
            name = "CSV" + name
    folder = dataset_folder(out_dir, dataset_id, name)
    skipped_files: Dict[str, str] = {}
    specs, cmap = build_specs(root, rows, id_column, label_column, patterns,
                              dict(class_map) if class_map is not None else None, mask, skipped_files,
                              visit, visit_column)
    classes = {str(v): k for k, v in sorted(cmap.items(), key=lambda kv: kv[1])}
    info = DatasetInfo(
        channel_names=[display(m) for m in modalities],
        labels={"background": 0, "foreground": 1} if mask != "none" else {"background": 0},
        description=f"classification dataset from {os.path.basename(csv_path)} (column {label_column!r}); "
                    + ("labelsTr hold a placeholder foreground mask (" + mask + "), not annotations."
                       if mask != "none" else "no labelsTr."),
        extra={"classification": {"file": "classes.csv", "classes": classes, "table": os.path.abspath(csv_path),
                                  "id_column": id_column, "label_column": label_column},
               "conversion": {"kind": "csv-labels", "source": root, "patterns": patterns, "mask": mask,
                              **({"visit": visit, "visit_column": visit_column} if visit or visit_column else {})}})
    summary = convert_segmentation(KIND, specs, folder, info, link=link, dry_run=dry_run, overwrite=overwrite,
                                   num_processes=num_processes, progress=progress, print_summary=False,
                                   classes=(("case", "label", "class"),
                                            lambda s: (s.case_id, s.info["label"], s.info["class"])))
    summary.skipped_files.update(skipped_files)
    summary.notes.append("classes: " + ", ".join(f"{k} -> {v}" for k, v in sorted(cmap.items(), key=lambda kv: kv[1])))
    if visit is not None:
        summary.notes.append(f"one visit per id: {visit}" + (f" by {visit_column}" if visit_column else
                                                           " in table order"))
    if mask == "none":
        summary.notes.append("no labelsTr written (mask none): nnU-Net cannot plan this dataset as it is.")
    if print_summary:
        report_summary(summary)
    return summary
