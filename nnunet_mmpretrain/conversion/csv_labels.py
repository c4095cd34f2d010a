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

import glob
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mmpretrain.conversion import visits
from nnunet_mmpretrain.conversion.common import (
    CLASSIFICATION, CaseSpec, ConversionError, ConversionSummary, ConvertOptions, ImageSpec, LabelSpec, Plan,
    Release, Setting, display, seg_image_dst, seg_label_dst, visible)
from nnunet_mmpretrain.corpus.manifest import ManifestError, check_case_id
from nnunet_mmpretrain.io_utils import read_csv_text

KIND = "CSV labels"
DEFAULT_ID = 540
DEFAULT_PATTERNS = ("{id}.nii.gz",)


def read_table(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
    if not os.path.isfile(path):
        raise ConversionError(f"label table {path} does not exist.")
    text, reader = read_csv_text(path)
    if reader is None:
        raise ConversionError(f"label table {path} is empty.")
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


def parse_class_map(text: Optional[str]) -> Optional[Dict[str, int]]:
    """``'CN=0,MCI=1'`` -> {'CN': 0, 'MCI': 1} (the ``--class-map`` option); None stays None."""
    if text is None:
        return None
    out: Dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConversionError(f"--class-map takes NAME=INT pairs separated by commas, got {item!r}.")
        k, v = item.rsplit("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise ConversionError(f"--class-map: {v!r} is not an integer (in {item!r}).") from None
    if not out:
        raise ConversionError("--class-map is empty.")
    return out


def _check_patterns(patterns: List[str], modalities: List[str], mask: str) -> None:
    """One line (ConversionError) for image patterns, channel names or a mask that cannot work."""
    if not patterns or any("{id}" not in p for p in patterns):
        raise ConversionError(f"every image pattern must contain {{id}}, got {patterns}.")
    if any(os.path.isabs(p) or ".." in p.split("/") for p in patterns):
        raise ConversionError("image patterns are relative to the image folder and may not contain '..'.")
    if len(modalities) != len(patterns):
        raise ConversionError(f"give one modality per image pattern ({len(patterns)} pattern(s), "
                              f"{len(modalities)} modality name(s)).")
    if mask not in ("otsu", "nonzero", "none"):
        raise ConversionError(f"mask must be otsu, nonzero or none, got {mask!r}.")


def _check_columns(csv_path: str, cols: List[str], rows: list, columns: Sequence[str], patterns: List[str],
                   visit: Optional[str], visit_column: Optional[str]) -> None:
    """One line (ConversionError) for columns, a visit rule or placeholders the table does not have."""
    for c in columns:
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


def plan(root: str, csv_path: str, id_column: str, label_column: str, patterns: Optional[Sequence[str]] = None,
         modalities: Optional[Sequence[str]] = None, class_map: Optional[Mapping[str, int]] = None,
         mask: str = "otsu", visit: Optional[str] = None, visit_column: Optional[str] = None) -> Plan:
    """Cases, ``classes.csv`` rows and dataset.json content from the table and the image folder.
    ``patterns``: one per channel (``{id}``, optionally ``{visit}``; default ``{id}.nii.gz``);
    ``modalities``: channel names (default T1 for one channel); ``visit``: None (several visits of
    an id are ambiguous), 'first', 'last' or a value of ``visit_column``
    (:mod:`~nnunet_mmpretrain.conversion.visits`)."""
    patterns = list(patterns or DEFAULT_PATTERNS)
    modalities = list(modalities or (["T1"] if len(patterns) == 1 else []))
    _check_patterns(patterns, modalities, mask)
    cols, rows = read_table(csv_path)
    _check_columns(csv_path, cols, rows, (id_column, label_column) + ((visit_column,) if visit_column else ()),
                   patterns, visit, visit_column)
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", os.path.splitext(os.path.basename(csv_path))[0]) or "CSVLabels"
    skipped_files: Dict[str, str] = {}
    specs, cmap = build_specs(root, rows, id_column, label_column, patterns,
                              dict(class_map) if class_map is not None else None, mask, skipped_files,
                              visit, visit_column)
    numbered = sorted(cmap.items(), key=lambda kv: kv[1])
    notes = ["classes: " + ", ".join(f"{k} -> {v}" for k, v in numbered)]
    if visit is not None:
        notes.append(f"one visit per id: {visit}" + (f" by {visit_column}" if visit_column else " in table order"))
    if mask == "none":
        notes.append("no labelsTr written (mask none): nnU-Net cannot plan this dataset as it is.")
    return Plan(
        specs, empty=f"no rows in {csv_path}.", name=name if name[0].isalnum() else "CSV" + name,
        channels=[display(m) for m in modalities], skipped_files=skipped_files, notes=notes,
        label_json={"background": 0, "foreground": 1} if mask != "none" else {"background": 0},
        description=f"classification dataset from {os.path.basename(csv_path)} (column {label_column!r}); "
                    + ("labelsTr hold a placeholder foreground mask (" + mask + "), not annotations."
                       if mask != "none" else "no labelsTr."),
        extra={"classification": {"file": "classes.csv", "classes": {str(v): k for k, v in numbered},
                                  "table": os.path.abspath(csv_path), "id_column": id_column,
                                  "label_column": label_column}},
        conversion={"patterns": patterns, "mask": mask,
                    **({"visit": visit, "visit_column": visit_column} if visit or visit_column else {})},
        classes=(("case", "label", "class"), lambda s: (s.case_id, s.info["label"], s.info["class"])))


def _text(flag: str, help: str, **cli) -> Setting:
    """A setting given on the command line as ``flag`` (the keyword is the flag's name)."""
    return Setting(flag[2:].replace("-", "_"), cli.pop("default", None), (flag,), help, cli=cli)


RELEASE = Release(
    kind="csv-labels", title=KIND, output=CLASSIFICATION, plan=plan, default_id=DEFAULT_ID,
    default_name="<csv file name>", root_word="image",
    help="classification labels from a CSV (ADNI, ADHD-200, ABIDE, ...) + an image folder",
    root_help="folder holding the images (the --pattern paths are relative to it)",
    settings=(
        Setting("csv_path", None, ("--csv",), "label table (CSV or TSV with a header row)", cli={"required": True}),
        _text("--id-column", "column with the subject / image id", required=True),
        _text("--label-column", "column with the class", required=True),
        Setting("patterns", None, ("--pattern",), "image path relative to RELEASE_ROOT with {id} and glob "
                "wildcards, one per channel (repeatable; default '{id}.nii.gz')", cli={"action": "append"}),
        Setting("modalities", None, ("--modality",), "channel name per --pattern (repeatable; default T1)",
                cli={"action": "append"}),
        Setting("class_map", None, ("--class-map",), "keep and number these classes, e.g. 'CN=0,MCI=1' (default: "
                "all classes, sorted, 0..K-1)", parse=parse_class_map),
        _text("--mask", "placeholder foreground label written to labelsTr (default otsu)", default="otsu",
              choices=("otsu", "nonzero", "none")),
        _text("--visit", "one visit per id when the table has several rows (or the pattern several images) per "
              "id: the first, the last (by --visit-column, else table order; images by path), or the row whose "
              "--visit-column equals VALUE (e.g. bl)", metavar="first|last|VALUE"),
        _text("--visit-column", "column holding the visit (VISCODE, EXAMDATE, ...); its value replaces {visit} "
              "in --pattern", metavar="COLUMN")))


def convert(image_root: str, csv_path: str, id_column: str, label_column: str,
            patterns: Sequence[str] = DEFAULT_PATTERNS, modalities: Optional[Sequence[str]] = None,
            class_map: Optional[Mapping[str, int]] = None, mask: str = "otsu", out_dir: Optional[str] = None,
            dataset_id: int = DEFAULT_ID, name: Optional[str] = None, *, options: Optional[ConvertOptions] = None,
            **settings: Any) -> ConversionSummary:
    """:meth:`Release.convert <nnunet_mmpretrain.conversion.release.Release.convert>` of
    :data:`RELEASE` with the table's arguments first (see :func:`plan`); ``settings``: ``visit``,
    ``visit_column`` and the :class:`ConvertOptions` fields."""
    return RELEASE.convert(image_root, out_dir, dataset_id, name, options=options, csv_path=csv_path,
                           id_column=id_column, label_column=label_column, patterns=patterns,
                           modalities=modalities, class_map=class_map, mask=mask, **settings)
