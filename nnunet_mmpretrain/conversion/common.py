"""Shared machinery of the dataset converters.

Every converter does the same three things: it *discovers* the cases of a public release (pure
path work, no image is read), describes each case as a :class:`CaseSpec` (which source file goes
to which output file, how), and hands the list to :func:`convert_segmentation` (nnU-Net raw
dataset) or :func:`convert_corpus` (pretraining corpus with a ``manifest.json``). This module
implements everything after discovery:

* **Naming and safety**: case ids are checked with :func:`~nnunet_mmpretrain.corpus.manifest.check_case_id`
  (letters, digits, ``_ . -``; no separators, no ``..``) and every output path is verified to lie
  inside the output dataset folder before anything is written.
* **Resumable, idempotent runs**: a case is finished when all its output files exist; finished
  cases are skipped. Every file is written under ``<dataset>/.partial/`` and renamed into place,
  so a killed run never leaves a half-written file under its final name (nnU-Net would otherwise
  pick up a truncated ``*_0000.nii.gz``). ``.partial/`` is cleared at the start of each run.
* **Images** are hard-linked (``link=True``; falls back to a copy across file systems or where
  links are refused) or copied when they are already 3D ``.nii.gz`` on the reference grid; they are
  rewritten through SimpleITK when they must change (``.nii`` -> ``.nii.gz``, one volume of a 4D
  file, resampling onto the reference grid by physical coordinates).
* **Labels** are always read and rewritten through SimpleITK with an explicit value mapping
  (values the mapping does not know make the case skip with a reason naming the file). The label
  must lie on the reference image's voxel grid; its header is written with the reference image's
  geometry (they agree to within :data:`GRID_TOL_MM`, this only removes float noise).
* A :class:`ConversionSummary` (converted / skipped with reasons) is printed and returned.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import re
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.corpus.manifest import (CorpusCase, CorpusManifest, ManifestError,
                                               check_case_id, load_manifest, save_manifest,
                                               MANIFEST_NAME)
from nnunet_mmpretrain.io_utils import atomic_write_json, atomic_write_text

FILE_ENDING = ".nii.gz"
PARTIAL_DIR = ".partial"
ALREADY_DONE = "already converted (all its output files exist)"
#: two voxel grids are the same when sizes are equal and spacing / origin / direction agree to this
GRID_TOL_MM = 1e-3

#: BraTS-2023 label convention used for every brain-tumour dataset we write (1 necrosis /
#: non-enhancing core, 2 edema, 3 enhancing) and its nnU-Net regions; the same form as the
#: phantom datasets in :mod:`nnunet_mmpretrain.synthetic.datasets`.
BRATS_LABELS: Dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                                "enhancing tumor": [3]}
BRATS_REGIONS_CLASS_ORDER = [2, 1, 3]
#: channel order of every BraTS-like dataset we write (canonical modality names)
BRATS_CHANNELS = ("t1", "t1c", "t2", "flair")
#: release label value -> our value, for releases that use 4 for enhancing tumour
BRATS_421_MAP = {0: 0, 1: 1, 2: 2, 4: 3}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class ConversionError(Exception):
    """A problem with the whole conversion (bad arguments, missing release, no cases). The CLI
    prints its message as one line."""


class CaseSkip(Exception):
    """A problem with one case; the case is skipped and the message becomes its reason."""


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
@dataclass
class ConversionSummary:
    """What a conversion did. ``skipped`` maps case id -> reason and includes the cases that were
    already finished (reason :data:`ALREADY_DONE`); ``skipped_files`` lists source files that were
    ignored (unknown modality, image without a CSV row, ...)."""
    kind: str
    output: str
    dry_run: bool = False
    converted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    skipped_files: Dict[str, str] = field(default_factory=dict)
    files: Dict[str, int] = field(default_factory=lambda: {
        "linked": 0, "copied": 0, "link_fallback_copies": 0, "rewritten": 0, "resampled": 0,
        "labels": 0})
    notes: List[str] = field(default_factory=list)

    @property
    def already_done(self) -> List[str]:
        return [c for c, r in self.skipped.items() if r == ALREADY_DONE]

    @property
    def problems(self) -> Dict[str, str]:
        """Skipped cases other than the already finished ones."""
        return {c: r for c, r in self.skipped.items() if r != ALREADY_DONE}

    @property
    def finished(self) -> int:
        """Cases present in the output after this run (converted now or before)."""
        return len(self.converted) + len(self.already_done)

    def report(self, max_lines: int = 25) -> str:
        verb = "would convert" if self.dry_run else "converted"
        lines = [f"{self.kind} -> {self.output}" + ("  [dry run: nothing written]" if self.dry_run else ""),
                 f"  {verb} {len(self.converted)} case(s), skipped {len(self.already_done)} already "
                 f"converted, skipped {len(self.problems)} with problems"]
        if not self.dry_run and any(self.files.values()):
            f = self.files
            lines.append(f"  files: {f['linked']} hard-linked, {f['copied']} copied"
                         + (f" ({f['link_fallback_copies']} because hard links were not possible)"
                            if f["link_fallback_copies"] else "")
                         + f", {f['rewritten']} rewritten, {f['resampled']} resampled, "
                           f"{f['labels']} label files written")
        for title, items in (("skipped", self.problems), ("skipped file", self.skipped_files)):
            for i, (k, r) in enumerate(sorted(items.items())):
                if i == max_lines:
                    lines.append(f"  ... and {len(items) - max_lines} more {title} entries")
                    break
                lines.append(f"  {title} {k}: {r}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# paths, names, discovery helpers
# --------------------------------------------------------------------------------------------
def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConversionError(f"invalid dataset name {name!r}: use letters, digits, '_' and '-' only.")
    return name


def resolve_raw_dir(out_dir: Optional[str]) -> str:
    out = out_dir or os.environ.get("nnUNet_raw")
    if not out:
        raise ConversionError("no output folder: pass -o OUT_RAW_DIR or set nnUNet_raw.")
    return os.path.abspath(out)


def dataset_folder(out_dir: Optional[str], dataset_id: int, name: str) -> str:
    """``OUT/DatasetXXX_Name``; refuses an id that another dataset folder in OUT already uses."""
    raw = resolve_raw_dir(out_dir)
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset ids are 1..999 in nnU-Net, got {dataset_id}.")
    check_dataset_name(name)
    folder_name = dataset_folder_name(dataset_id, name)
    if os.path.isdir(raw):
        prefix = f"Dataset{dataset_id:03d}_"
        others = sorted(d for d in os.listdir(raw) if d.startswith(prefix) and d != folder_name
                        and os.path.isdir(os.path.join(raw, d)))
        if others:
            raise ConversionError(f"dataset id {dataset_id} is already used by {others[0]} in {raw}: "
                                  f"choose another -d ID (nnU-Net needs unique ids).")
    elif os.path.exists(raw):
        raise ConversionError(f"output folder {raw} is not a directory.")
    return os.path.join(raw, folder_name)


def safe_join(folder: str, rel: str) -> str:
    """``folder/rel``, refusing anything that would resolve outside ``folder``."""
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise CaseSkip(f"refusing to write {rel!r}: outside the output folder.")
    base = os.path.realpath(folder)
    p = os.path.realpath(os.path.join(folder, rel))
    if os.path.commonpath([base, p]) != base:
        raise CaseSkip(f"refusing to write {rel!r}: it resolves outside the output folder {folder}.")
    return os.path.join(folder, rel)


def require_root(root: str, what: str) -> str:
    if not root:
        raise ConversionError(f"no {what} release folder given.")
    if not os.path.exists(root):
        raise ConversionError(f"{what} release folder {root} does not exist.")
    if not os.path.isdir(root):
        raise ConversionError(f"{what} release folder {root} is not a directory.")
    return os.path.abspath(root)


def visible(name: str) -> bool:
    """Skip hidden entries and macOS AppleDouble files ('._BRATS_001.nii.gz' in the MSD tarball)."""
    return not name.startswith(".")


def nifti_stem(filename: str) -> Optional[str]:
    """'a_t1.nii.gz' -> 'a_t1'; None when the file is not NIfTI."""
    for ext in (".nii.gz", ".nii"):
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)]
    return None


def nifti_file(folder: str, stem: str) -> Optional[str]:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (None when neither)."""
    for ext in (".nii.gz", ".nii"):
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def find_dirs(root: str, name_re: "re.Pattern[str] | Callable[[str], bool]", max_depth: int = 4) -> List[str]:
    """Directories under ``root`` (root included) whose name matches, sorted; matches are not
    descended into; hidden folders are ignored."""
    match = name_re.fullmatch if hasattr(name_re, "fullmatch") else name_re
    out = []
    root = os.path.abspath(root)
    if match(os.path.basename(root)):
        return [root]
    base_depth = root.rstrip(os.sep).count(os.sep)
    for cur, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        if cur.count(os.sep) - base_depth >= max_depth:
            dirs[:] = []
            continue
        keep = []
        for d in dirs:
            if match(d):
                out.append(os.path.join(cur, d))
            else:
                keep.append(d)
        dirs[:] = keep
    return sorted(out)


def find_dirs_containing(root: str, predicate: Callable[[str], bool], max_depth: int = 4) -> List[str]:
    """Directories under ``root`` (root included) for which ``predicate(path)`` holds; not
    descended into once they match."""
    out = []
    root = os.path.abspath(root)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for cur, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        if predicate(cur):
            out.append(cur)
            dirs[:] = []
        elif cur.count(os.sep) - base_depth >= max_depth:
            dirs[:] = []
    return sorted(out)


def display(modality: str) -> str:
    """dataset.json channel name: the vocabulary's display name, or the name as given."""
    return mod.display_name(modality) if mod.is_known(modality) else modality


# --------------------------------------------------------------------------------------------
# case description
# --------------------------------------------------------------------------------------------
@dataclass
class ImageSpec:
    """One output image. ``channel``: volume index in a 4D source. ``on_mismatch`` says what to do
    when the source is not on the case's reference grid: 'skip' the case, 'resample' it onto the
    reference grid (linear, by physical coordinates) or 'keep' it as it is (no check)."""
    src: str
    dst: str
    channel: Optional[int] = None
    on_mismatch: str = "skip"
    what: str = ""  # human name for messages ("T1ce image")


@dataclass
class LabelSpec:
    """The output label: ``mapping`` (release value -> our value) applied to ``src``, or a
    foreground ``mask`` ('otsu' | 'nonzero') computed from the image ``src`` (classification
    datasets without annotations)."""
    src: str
    dst: str
    mapping: Optional[Dict[int, int]] = None
    mask: Optional[str] = None
    dataset: str = ""


@dataclass
class CaseSpec:
    case_id: str
    images: List[ImageSpec] = field(default_factory=list)
    label: Optional[LabelSpec] = None
    reference: int = 0  # index of the image whose grid the others (and the label) must match
    problem: Optional[str] = None  # found during discovery: the case is skipped with this reason
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> List[str]:
        return [i.dst for i in self.images] + ([self.label.dst] if self.label else [])


def seg_image_dst(case_id: str, channel: int) -> str:
    return f"imagesTr/{case_id}_{channel:04d}{FILE_ENDING}"


def seg_label_dst(case_id: str) -> str:
    return f"labelsTr/{case_id}{FILE_ENDING}"


def corpus_image_dst(case_id: str, modality: str) -> str:
    return f"images/{case_id}_{modality}{FILE_ENDING}"


def missing_files_problem(files: Mapping[str, Tuple[Optional[str], str]]) -> Optional[str]:
    """``files``: what -> (found path or None, expected path). Reason naming the first missing one."""
    missing = [(w, exp) for w, (p, exp) in files.items() if p is None]
    if not missing:
        return None
    w, exp = missing[0]
    more = f" (and {len(missing) - 1} more missing file(s))" if len(missing) > 1 else ""
    return f"missing {w}: {exp}{more}"


def multimodal_seg_case(case_id: str, channels: Sequence[Tuple[str, Optional[str], str]],
                        label: Optional[Tuple[Optional[str], str]], mapping: Optional[Dict[int, int]],
                        dataset: str, on_mismatch: str = "skip") -> CaseSpec:
    """The common 'one file per modality + a segmentation file' case.

    ``channels``: (modality, found path or None, expected path) in output channel order;
    ``label``: (found path or None, expected path) or None for no label."""
    files = {f"{display(m)} image": (p, exp) for m, p, exp in channels}
    if label is not None:
        files["segmentation"] = label
    spec = CaseSpec(case_id=case_id, problem=missing_files_problem(files))
    spec.images = [ImageSpec(src=p or exp, dst=seg_image_dst(case_id, i), what=f"{display(m)} image",
                             on_mismatch="skip" if i == 0 else on_mismatch)
                   for i, (m, p, exp) in enumerate(channels)]
    if label is not None:
        spec.label = LabelSpec(src=label[0] or label[1], dst=seg_label_dst(case_id), mapping=mapping,
                               dataset=dataset)
    return spec


# --------------------------------------------------------------------------------------------
# geometry and image I/O (SimpleITK)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    def mismatch(self, other: "Grid", tol: float = GRID_TOL_MM) -> Optional[str]:
        """None when both describe the same voxel grid, else what differs."""
        if tuple(self.size) != tuple(other.size):
            return f"size {tuple(self.size)} vs {tuple(other.size)}"
        if not np.allclose(self.spacing, other.spacing):  # nnU-Net's own spacing test
            return f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tol):
            return f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            return "direction differs"
        return None


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


def _sitk():
    import SimpleITK as sitk
    return sitk


def read_header(path: str):
    """SimpleITK ImageFileReader with the header read (no voxels). CaseSkip when unreadable."""
    sitk = _sitk()
    if not os.path.isfile(path):
        raise CaseSkip(f"missing file {path}")
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise CaseSkip(f"cannot read {path}: {_first_line(e)}") from None
    return r


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "ERROR" in ln or "rror" in ln] or lines or [type(e).__name__]
    return useful[-1][:200]


def image_grid(path: str, channel: Optional[int] = None) -> Tuple[Grid, Optional[int]]:
    """Grid of a 3D image or of one volume of a 4D image. Returns (grid, channel to extract)."""
    r = read_header(path)
    dim = r.GetDimension()
    size, spacing, origin, direction = r.GetSize(), r.GetSpacing(), r.GetOrigin(), r.GetDirection()
    if r.GetNumberOfComponents() != 1:
        raise CaseSkip(f"{path} has {r.GetNumberOfComponents()} components per voxel (expected a "
                       f"scalar image).")
    if dim == 4 and channel is None and size[3] == 1:
        channel = 0  # a 4D file holding a single volume: treat as 3D
    if channel is not None:
        if dim != 4:
            raise CaseSkip(f"{path} is {dim}D, expected a 4D file with one volume per channel.")
        if not 0 <= channel < size[3]:
            raise CaseSkip(f"{path} holds {size[3]} volume(s), channel {channel} requested.")
        d = direction
        return Grid(tuple(size[:3]), tuple(spacing[:3]), tuple(origin[:3]),
                    tuple(d[0:3]) + tuple(d[4:7]) + tuple(d[8:11])), channel
    if dim != 3:
        extra = f" ({size[3]} volumes)" if dim == 4 else ""
        raise CaseSkip(f"{path} is {dim}D{extra}, expected a 3D image.")
    return Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction)), None


def load_image(path: str, channel: Optional[int] = None, cache: Optional[dict] = None):
    sitk = _sitk()
    key = path
    if cache is not None and key in cache:
        img = cache[key]
    else:
        try:
            img = sitk.ReadImage(path)
        except RuntimeError as e:
            raise CaseSkip(f"cannot read {path}: {_first_line(e)}") from None
        if cache is not None:
            cache[key] = img
    if channel is not None:
        size = list(img.GetSize())
        size[3] = 0
        img = sitk.Extract(img, size, [0, 0, 0, int(channel)])
    return img


def resample_onto(img, grid: Grid, linear: bool = True):
    """Resample ``img`` onto ``grid`` by physical coordinates (identity transform), float32 for
    linear interpolation; voxels outside the source become 0."""
    sitk = _sitk()
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in grid.size])
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetTransform(sitk.Transform())
    f.SetDefaultPixelValue(0)
    if linear:
        f.SetInterpolator(sitk.sitkLinear)
        f.SetOutputPixelType(sitk.sitkFloat32)
    else:
        f.SetInterpolator(sitk.sitkNearestNeighbor)
        f.SetOutputPixelType(img.GetPixelID())
    return f.Execute(img)


def map_labels(arr: np.ndarray, mapping: Mapping[int, int], where: str, dataset: str = "") -> np.ndarray:
    """Apply ``mapping`` (release value -> our value); CaseSkip naming ``where`` for values the
    mapping does not know or non-integer values."""
    if arr.dtype.kind == "f":
        r = np.rint(arr)
        if not np.allclose(arr, r, atol=1e-3):
            raise CaseSkip(f"label file {where} holds non-integer values.")
        arr = r.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise CaseSkip(f"label file {where} has unsupported voxel type {arr.dtype}.")
    vals = np.unique(arr)
    unknown = [int(v) for v in vals if int(v) not in mapping]
    if unknown:
        ds = f"the {dataset} label set" if dataset else "the label mapping"
        raise CaseSkip(f"label file {where} holds value(s) {', '.join(map(str, unknown))} that "
                       f"{ds} does not define (expected {', '.join(map(str, sorted(mapping)))}).")
    out = np.zeros(arr.shape, dtype=np.uint8)
    for v in vals:
        t = int(mapping[int(v)])
        if t:
            out[arr == v] = t
    return out


def foreground_mask(img, how: str) -> np.ndarray:
    """A placeholder foreground label for datasets without annotations ('otsu' or 'nonzero')."""
    sitk = _sitk()
    arr = sitk.GetArrayFromImage(img)
    if how == "nonzero":
        return (arr != 0).astype(np.uint8)
    if how == "otsu":
        f = sitk.OtsuThresholdImageFilter()
        f.Execute(sitk.Cast(img, sitk.sitkFloat32))
        m = (arr > f.GetThreshold()).astype(np.uint8)
        return m if m.any() else (arr != 0).astype(np.uint8)
    raise ValueError(f"unknown mask mode {how!r} (otsu, nonzero)")


# --------------------------------------------------------------------------------------------
# writing (atomic: .partial/ then rename)
# --------------------------------------------------------------------------------------------
def _tmp_for(folder: str, final: str) -> str:
    d = os.path.join(folder, PARTIAL_DIR)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{uuid.uuid4().hex[:12]}_{os.path.basename(final)}")


def _commit(tmp: str, final: str) -> None:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(tmp, final)


def write_image(img, folder: str, final: str) -> None:
    sitk = _sitk()
    tmp = _tmp_for(folder, final)
    try:
        sitk.WriteImage(img, tmp, True)
        _commit(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def place_file(src: str, folder: str, final: str, link: bool) -> str:
    """Hard-link (or copy) ``src`` to ``final`` through a temporary name. Returns 'linked',
    'copied' or 'fallback' (link requested but impossible: copied)."""
    tmp = _tmp_for(folder, final)
    how = "copied"
    try:
        if link:
            try:
                os.link(src, tmp)
                how = "linked"
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                                   errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                how = "fallback"
        if how != "linked":
            shutil.copyfile(src, tmp)
        _commit(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return how


def clear_partial(folder: str) -> None:
    shutil.rmtree(os.path.join(folder, PARTIAL_DIR), ignore_errors=True)


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    case_id: str
    ok: bool
    reason: str = ""
    counts: Dict[str, int] = field(default_factory=dict)


def execute_case(spec: CaseSpec, folder: str, link: bool) -> CaseResult:
    """Check a case completely (headers, grids, label values), then write it. Any problem skips
    the case with a reason; files of the case written in this attempt are removed again."""
    counts = {"linked": 0, "copied": 0, "link_fallback_copies": 0, "rewritten": 0, "resampled": 0,
              "labels": 0}
    written: List[str] = []
    try:
        finals = [safe_join(folder, d) for d in spec.outputs]
        # --- plan images (headers only)
        grids = [image_grid(i.src, i.channel) for i in spec.images]
        ref_grid = grids[spec.reference][0] if grids else None
        actions = []
        for im, (grid, channel) in zip(spec.images, grids):
            resample = False
            if im.on_mismatch != "keep" and ref_grid is not None:
                diff = grid.mismatch(ref_grid)
                if diff and im.on_mismatch == "resample":
                    resample = True
                elif diff:
                    raise CaseSkip(f"{im.what or 'image'} {im.src} is not on the grid of "
                                   f"{spec.images[spec.reference].src}: {diff}")
            direct = channel is None and not resample and im.src.endswith(FILE_ENDING)
            actions.append((im, channel, resample, direct))
        # --- label (read fully, checked and mapped before anything is written)
        label_img = None
        if spec.label is not None:
            sitk = _sitk()
            lab = spec.label
            if lab.mask:
                base = load_image(lab.src, image_grid(lab.src)[1])
                arr = foreground_mask(base, lab.mask)
                ref_info = base
            else:
                lgrid, lchan = image_grid(lab.src)
                if ref_grid is not None:
                    diff = lgrid.mismatch(ref_grid)
                    if diff:
                        raise CaseSkip(f"label file {lab.src} is not on the image grid of "
                                       f"{spec.images[spec.reference].src}: {diff}")
                src_img = load_image(lab.src, lchan)
                arr = map_labels(sitk.GetArrayFromImage(src_img), lab.mapping or {}, lab.src, lab.dataset)
                ref_info = src_img
            label_img = sitk.GetImageFromArray(arr)
            label_img.SetSpacing(ref_grid.spacing if ref_grid else ref_info.GetSpacing())
            label_img.SetOrigin(ref_grid.origin if ref_grid else ref_info.GetOrigin())
            label_img.SetDirection(ref_grid.direction if ref_grid else ref_info.GetDirection())
        # --- write
        cache: dict = {}
        for (im, channel, resample, direct), final in zip(actions, finals):
            if direct:
                how = place_file(im.src, folder, final, link)
                counts["linked" if how == "linked" else "copied"] += 1
                if how == "fallback":
                    counts["link_fallback_copies"] += 1
            else:
                img = load_image(im.src, channel, cache)
                if resample:
                    img = resample_onto(img, ref_grid, linear=True)
                    counts["resampled"] += 1
                else:
                    counts["rewritten"] += 1
                write_image(img, folder, final)
            written.append(final)
        if label_img is not None:
            write_image(label_img, folder, finals[-1])
            written.append(finals[-1])
            counts["labels"] += 1
        return CaseResult(spec.case_id, True, counts=counts)
    except CaseSkip as e:
        _remove(written)
        return CaseResult(spec.case_id, False, str(e), counts)
    except Exception as e:  # an unexpected failure of one case must not end a long conversion
        _remove(written)
        return CaseResult(spec.case_id, False, f"failed: {type(e).__name__}: {_first_line(e)}", counts)


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def _execute_job(args) -> CaseResult:
    return execute_case(*args)


# --------------------------------------------------------------------------------------------
# many cases
# --------------------------------------------------------------------------------------------
def run_cases(specs: Sequence[CaseSpec], folder: str, summary: ConversionSummary, *, link: bool = True,
              dry_run: bool = False, force: bool = False, num_processes: int = 1,
              progress: bool = True, desc: str = "converting") -> List[CaseSpec]:
    """Convert ``specs`` into ``folder``; fills ``summary``; returns the finished specs (converted
    now or earlier) in input order."""
    from tqdm import tqdm

    # case ids: validity and uniqueness (a problem-free case wins over a broken one of the same id)
    valid: Dict[str, CaseSpec] = {}
    for s in sorted(specs, key=lambda s: s.problem is not None):
        try:
            check_case_id(s.case_id)
        except ManifestError as e:
            summary.skipped[s.case_id] = str(e)
            s.problem = str(e)
            continue
        if s.case_id in valid:
            first = valid[s.case_id]
            src = os.path.dirname(s.images[0].src) if s.images else "?"
            prev = os.path.dirname(first.images[0].src) if first.images else "?"
            s.problem = f"duplicate case id (kept the case from {prev}, this one is from {src})"
            s.info["duplicate"] = True
            summary.skipped.setdefault(s.case_id + f" ({src})", s.problem)
            continue
        valid[s.case_id] = s
    todo: List[CaseSpec] = []
    for s in specs:
        if s.info.get("duplicate") or s.case_id not in valid or valid[s.case_id] is not s:
            continue
        if s.problem:
            summary.skipped[s.case_id] = s.problem
            continue
        try:
            finals = [safe_join(folder, d) for d in s.outputs]
        except CaseSkip as e:
            summary.skipped[s.case_id] = str(e)
            continue
        if not force and finals and all(os.path.isfile(f) for f in finals):
            summary.skipped[s.case_id] = ALREADY_DONE
            continue
        todo.append(s)

    if dry_run:
        summary.converted.extend(s.case_id for s in todo)
        done = set(summary.converted) | set(summary.already_done)
        return [s for s in specs if s.case_id in done and valid.get(s.case_id) is s]

    os.makedirs(folder, exist_ok=True)
    clear_partial(folder)
    results: Dict[str, CaseResult] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="case", disable=not progress or not todo)
    try:
        if num_processes > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=num_processes, mp_context=get_context("spawn")) as ex:
                futs = [ex.submit(_execute_job, (s, folder, link)) for s in todo]
                for f in as_completed(futs):
                    r = f.result()
                    results[r.case_id] = r
                    bar.update(1)
        else:
            for s in todo:
                results[s.case_id] = execute_case(s, folder, link)
                bar.update(1)
    finally:
        bar.close()
        clear_partial(folder)
    for s in todo:
        r = results[s.case_id]
        for k, v in r.counts.items():
            summary.files[k] = summary.files.get(k, 0) + v
        if r.ok:
            summary.converted.append(s.case_id)
        else:
            summary.skipped[s.case_id] = r.reason
    if summary.files.get("link_fallback_copies"):
        summary.notes.append(f"{summary.files['link_fallback_copies']} file(s) were copied because "
                             f"hard links were not possible (different file systems?).")
    done = set(summary.converted) | set(summary.already_done)
    return [s for s in specs if s.case_id in done and valid.get(s.case_id) is s]


# --------------------------------------------------------------------------------------------
# nnU-Net raw datasets
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetInfo:
    """dataset.json content besides the counts."""
    channel_names: Sequence[str]
    labels: Dict[str, Any]
    regions_class_order: Optional[List[int]] = None
    description: str = ""
    reference: str = ""
    licence: str = "see the release's licence"
    extra: Dict[str, Any] = field(default_factory=dict)


def prepare_dataset_folder(folder: str, overwrite: bool, dry_run: bool, summary: ConversionSummary) -> None:
    if overwrite and os.path.isdir(folder):
        if dry_run:
            summary.notes.append(f"--overwrite: would remove {folder} and convert every case again.")
        else:
            shutil.rmtree(folder)


def write_dataset_json(folder: str, info: DatasetInfo, num_training: int, name: str) -> str:
    dj: Dict[str, Any] = {
        "channel_names": {str(i): n for i, n in enumerate(info.channel_names)},
        "labels": info.labels,
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": info.description,
        "reference": info.reference,
        "licence": info.licence,
    }
    if info.regions_class_order is not None:
        dj["regions_class_order"] = list(info.regions_class_order)
    dj.update(info.extra)
    p = os.path.join(folder, "dataset.json")
    atomic_write_json(dj, p)
    return p


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    atomic_write_text(buf.getvalue(), path)


def convert_segmentation(kind: str, specs: Sequence[CaseSpec], folder: str, info: DatasetInfo, *,
                         link: bool = True, dry_run: bool = False, overwrite: bool = False,
                         num_processes: int = 1, progress: bool = True,
                         classes: Optional[Tuple[Sequence[str], Callable[[CaseSpec], Sequence[Any]]]] = None,
                         print_summary: bool = True) -> ConversionSummary:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, dataset.json) from ``specs``.

    ``classes``: optional (csv header, row function) for a ``classes.csv`` listing the finished
    cases (classification datasets)."""
    summary = ConversionSummary(kind=kind, output=folder, dry_run=dry_run)
    if not specs:
        raise ConversionError(f"no {kind} cases found.")
    prepare_dataset_folder(folder, overwrite, dry_run, summary)
    finished = run_cases(specs, folder, summary, link=link, dry_run=dry_run, force=overwrite,
                         num_processes=num_processes, progress=progress, desc=os.path.basename(folder))
    if not dry_run:
        if finished:
            _note_stale_cases(folder, {s.case_id for s in finished}, summary)
            name = os.path.basename(folder).split("_", 1)[1]
            write_dataset_json(folder, info, len(finished), name)
            if classes is not None:
                header, row = classes
                write_csv(os.path.join(folder, "classes.csv"), header, (row(s) for s in finished))
        else:
            summary.notes.append("no case could be converted: dataset.json was not written.")
    if print_summary:
        print(summary.report())
    return summary


def _note_stale_cases(folder: str, expected: set, summary: ConversionSummary) -> None:
    d = os.path.join(folder, "imagesTr")
    if not os.path.isdir(d):
        return
    found = {f[: -len(FILE_ENDING) - 5] for f in os.listdir(d) if f.endswith(FILE_ENDING)}
    stale = sorted(found - expected)
    if stale:
        summary.notes.append(f"imagesTr holds {len(stale)} case(s) this run did not produce (e.g. "
                             f"{stale[0]}): numTraining will not match; re-run with --overwrite.")


# --------------------------------------------------------------------------------------------
# pretraining corpora
# --------------------------------------------------------------------------------------------
def corpus_case_spec(case_id: str, images: Sequence[Tuple[str, str]], source: str, subject: str = "",
                     session: str = "", reference: Optional[str] = None,
                     problem: Optional[str] = None) -> CaseSpec:
    """``images``: (canonical modality, source path). With ``reference`` (a modality) the other
    images are resampled onto its grid; without, every image keeps its own grid."""
    mods = [m for m, _ in images]
    specs = []
    ref_idx = 0
    for i, (m, p) in enumerate(images):
        if reference is not None:
            pol = "skip" if m == reference else "resample"
            if m == reference:
                ref_idx = i
        else:
            pol = "keep"
        specs.append(ImageSpec(src=p, dst=corpus_image_dst(case_id, m), on_mismatch=pol,
                               what=f"{display(m)} image"))
    if reference is not None and reference not in mods and problem is None:
        problem = f"no {display(reference)} image to resample onto"
    return CaseSpec(case_id=case_id, images=specs, reference=ref_idx, problem=problem,
                    info={"source": source, "subject": subject or case_id, "session": session,
                          "modalities": mods})


def convert_corpus(kind: str, specs: Sequence[CaseSpec], folder: str, sources: Dict[str, dict], *,
                   atlas_registered: "str | bool" = "auto", link: bool = True, dry_run: bool = False,
                   overwrite: bool = False, num_processes: int = 1, progress: bool = True,
                   print_summary: bool = True) -> ConversionSummary:
    """Write (or extend) a pretraining corpus folder: ``images/`` and ``manifest.json``.

    A corpus folder may hold several sources: cases of other sources already in its manifest are
    kept, so converting BraTS, IXI and UCSF-PDGM with the same ``-d``/``--name`` builds one
    multi-source corpus. ``atlas_registered``: True/False, or 'auto' (True when every scan of
    the corpus lies on one voxel grid)."""
    summary = ConversionSummary(kind=kind, output=folder, dry_run=dry_run)
    if not specs:
        raise ConversionError(f"no {kind} cases found.")
    these = set(sources) | {s.info.get("source") for s in specs}
    old = None
    mpath = os.path.join(folder, MANIFEST_NAME)
    if os.path.isfile(mpath):
        try:
            old = load_manifest(mpath)
        except (ManifestError, ValueError) as e:
            raise ConversionError(f"the existing manifest in {folder} cannot be read ({e}); move it "
                                  f"away or pass --overwrite.") from None
    kept: List[CorpusCase] = []
    if old is not None:
        others = [c for c in old.cases if c.source not in these]
        if overwrite:
            mine = [c for c in old.cases if c.source in these]
            if dry_run:
                summary.notes.append(f"--overwrite: would remove {len(mine)} case(s) of source(s) "
                                     f"{', '.join(sorted(these))} and convert them again.")
            else:
                for c in mine:
                    for m in c.images:
                        p = old.path(c, m)
                        try:
                            if os.path.commonpath([os.path.realpath(folder), os.path.realpath(p)]) == \
                                    os.path.realpath(folder):
                                os.remove(p)
                        except OSError:
                            pass
        kept = others
        taken = {c.case_id: c.source for c in others}
        for s in specs:
            if s.case_id in taken and s.problem is None:
                s.problem = (f"case id already in the corpus from source {taken[s.case_id]!r} "
                             f"(use --case-prefix)")
    elif overwrite and os.path.isdir(folder):
        if dry_run:
            summary.notes.append(f"--overwrite: would remove {folder} and convert every case again.")
        else:
            shutil.rmtree(folder)
    finished = run_cases(specs, folder, summary, link=link, dry_run=dry_run, force=overwrite,
                         num_processes=num_processes, progress=progress, desc=os.path.basename(folder))
    if not dry_run:
        new_cases = [CorpusCase(case_id=s.case_id,
                                images={m: corpus_image_dst(s.case_id, m) for m in s.info["modalities"]},
                                subject=s.info.get("subject") or s.case_id,
                                session=s.info.get("session", ""), source=s.info["source"])
                     for s in finished]
        cases = kept + new_cases
        if not cases:
            summary.notes.append("no case could be converted: manifest.json was not written.")
        else:
            all_sources = dict(old.sources) if old is not None else {}
            all_sources.update(sources)
            used = {c.source for c in cases}
            all_sources = {k: v for k, v in all_sources.items() if k in used}
            name = os.path.basename(folder).split("_", 1)[1]
            manifest = CorpusManifest(name=name, cases=cases, sources=all_sources, root=folder)
            if atlas_registered == "auto":
                manifest.atlas_registered = _one_grid(manifest)
            else:
                manifest.atlas_registered = bool(atlas_registered)
            save_manifest(manifest, folder)
            c = manifest.counts()
            summary.notes.append(f"manifest: {c['cases']} case(s), {c['scans']} scan(s) "
                                 f"{c['scans_per_modality']}, atlas_registered="
                                 f"{manifest.atlas_registered}")
    if print_summary:
        print(summary.report())
    return summary


def _one_grid(manifest: CorpusManifest) -> bool:
    first = None
    for c in manifest.cases:
        for m in c.images:
            try:
                g, _ = image_grid(manifest.path(c, m))
            except CaseSkip:
                return False
            if first is None:
                first = g
            elif g.mismatch(first, tol=1e-2):
                return False
    return first is not None


def verify_nnunet_dataset(folder: str, num_processes: int = 1, fork: bool = False) -> None:
    """nnU-Net's own ``verify_dataset_integrity`` on a converted dataset (raises on problems).

    ``fork=True`` runs nnU-Net's worker pool with the 'fork' start method instead of 'spawn'
    (the spawned workers re-import nnU-Net and torch, ~8 s per call on 2 cores); used by the tests.
    """
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi
    if not fork:
        vdi.verify_dataset_integrity(folder, num_processes=num_processes)
        return
    import multiprocessing
    import types
    orig = vdi.multiprocessing
    vdi.multiprocessing = types.SimpleNamespace(get_context=lambda method=None: multiprocessing.get_context("fork"))
    try:
        vdi.verify_dataset_integrity(folder, num_processes=num_processes)
    finally:
        vdi.multiprocessing = orig
