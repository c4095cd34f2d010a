"""Validation of a pretraining corpus before any preprocessing work is spent on it.

:func:`validate_corpus` opens every file of every case (one case at a time, in parallel over cases
when asked) and checks that it

* exists and is read by SimpleITK (corrupt or unsupported files are named with SimpleITK's reason),
  and, for NIfTI, is complete: a ``.nii.gz`` is decompressed to its end (a truncated or corrupt gzip
  stream is an error; SimpleITK would fill the missing voxels with zeros) and holds as many bytes
  as its header announces,
* is one scalar 3D volume (a 4D series, a 2D slice or a vector image is reported with its shape and
  the fix: one 3D file per modality),
* has no NaN / Inf voxels (for floating-point NIfTI files the raw data is scanned with nibabel, since
  SimpleITK's NIfTI reader silently turns NaN / Inf into 0) and is not constant (an all-zero image
  has no foreground to learn from),
* shares one voxel grid with the other modalities of its case (size, spacing, origin, direction).

Grids are compared against the case's **reference modality**: ``t1`` when the case has one (the
anatomical reference of most protocols, and IXI's highest-resolution scan), otherwise the first of
the case's modalities in vocabulary order (:data:`nnunet_mmpretrain.modalities.MODALITIES`). With
``resample_to_first=True`` differing grids are not an error: the report lists, per case, which
modalities must be resampled onto the reference grid and :func:`nnunet_mmpretrain.corpus.loading.load_case_on_common_grid` does it
(linear interpolation by physical coordinates, 0 outside the moving image) for the preprocessing
stage. Images that do not overlap the reference grid at all are still an error.

Tolerances (loose enough for float32 header round-off): equal sizes, spacings within
:data:`SPACING_RTOL` (relative), origins within :data:`ORIGIN_RTOL` + :data:`ORIGIN_ATOL_MM` mm,
direction cosines within :data:`DIRECTION_ATOL`. Checks across cases (the same scan under two ids,
spacing outliers, scans off an atlas grid): :mod:`~nnunet_mmpretrain.corpus.consistency`.
Single-modality cases are valid (counted in :attr:`ValidationReport.single_modality_cases`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.content_hash import array_hash
from nnunet_mmpretrain.corpus import consistency
from nnunet_mmpretrain.corpus.manifest import CorpusManifest
from nnunet_mmpretrain.geometry import Grid
from nnunet_mmpretrain.io_utils import nifti_damage
from nnunet_mmpretrain.parallel import single_threaded_pool

log = logging.getLogger(__name__)


#: relative tolerance on voxel spacing
SPACING_RTOL = 1e-3
#: relative and absolute (mm) tolerance on the image origin
ORIGIN_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-3
#: absolute tolerance on direction cosines
DIRECTION_ATOL = 1e-3

ON_ERROR_CHOICES = ("stop", "skip")

_FIX_SKIP = ("Fix: re-run with --skip-bad (validate_corpus(..., on_error='skip')) to leave these "
             "cases out, or fix / remove the files listed above and validate again.")


class CorpusValidationError(ValueError):
    """Some corpus files cannot be used; the message lists each with its reason and the fix."""

    def __init__(self, message: str, report: Optional["ValidationReport"] = None):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Outcome of :func:`validate_corpus`.

    ``ok`` lists usable cases (manifest order); ``bad`` maps each unusable case to its
    ``(path, reason)`` problems; ``resample`` maps a case to the modalities that must be resampled
    onto its reference modality's grid (only with ``resample_to_first=True``; ``reference`` names
    that modality per case).
    """
    ok: List[str] = field(default_factory=list)
    bad: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)
    resample: Dict[str, List[str]] = field(default_factory=dict)
    modalities_per_case: Dict[str, List[str]] = field(default_factory=dict)
    single_modality_cases: List[str] = field(default_factory=list)
    reference: Dict[str, str] = field(default_factory=dict)
    corpus_name: str = "corpus"
    resample_to_first: bool = False

    @property
    def num_cases(self) -> int:
        return len(self.modalities_per_case)

    def scans_per_modality(self, only_ok: bool = True) -> Dict[str, int]:
        cases = self.ok if only_ok else list(self.modalities_per_case)
        out: Dict[str, int] = {}
        for c in cases:
            for m in self.modalities_per_case.get(c, []):
                out[m] = out.get(m, 0) + 1
        return {m: out[m] for m in mod.MODALITIES if m in out}

    def bad_lines(self) -> List[str]:
        """One line per problem: ``case: path: reason``."""
        return [f"  {cid}: {path}: {reason}" for cid, probs in self.bad.items()
                for path, reason in probs]

    def summary(self) -> str:
        per_mod = ", ".join(f"{m} {n}" for m, n in self.scans_per_modality().items()) or "none"
        lines = [
            f"corpus '{self.corpus_name}': {self.num_cases} cases checked, {len(self.ok)} ok, "
            f"{len(self.bad)} bad, {len(self.single_modality_cases)} with a single modality, "
            f"{len(self.resample)} to resample onto a common grid",
            f"  usable scans per modality: {per_mod}",
        ]
        if self.resample:
            lines.append("  resampling planned (modality -> reference grid):")
            lines += [f"    {cid}: {', '.join(ms)} -> {self.reference.get(cid, '?')}"
                      for cid, ms in self.resample.items()]
        if self.bad:
            lines.append("  unusable files:")
            lines += ["  " + ln for ln in self.bad_lines()]
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """Raise :class:`CorpusValidationError` when a case is bad or no case is usable."""
        if not self.ok:
            detail = ("\n".join(self.bad_lines()) + "\n") if self.bad else ""
            raise CorpusValidationError(
                f"no usable cases in corpus '{self.corpus_name}': all {self.num_cases} cases have "
                f"unusable files.\n{detail}Fix the files listed above (leaving bad cases out "
                f"would leave nothing to pretrain on).", self)
        if self.bad:
            raise CorpusValidationError(
                f"corpus '{self.corpus_name}': {len(self.bad)} of {self.num_cases} cases have "
                f"unusable files:\n" + "\n".join(self.bad_lines()) + "\n" + _FIX_SKIP, self)

    def to_dict(self) -> dict:
        """JSON-ready form (for writing the report beside the preprocessed corpus)."""
        return {"corpus": self.corpus_name, "resample_to_first": self.resample_to_first,
                "ok": list(self.ok),
                "bad": {c: [{"path": p, "reason": r} for p, r in v] for c, v in self.bad.items()},
                "resample": {c: list(v) for c, v in self.resample.items()},
                "reference": dict(self.reference),
                "modalities_per_case": {c: list(v) for c, v in self.modalities_per_case.items()},
                "single_modality_cases": list(self.single_modality_cases)}


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------
def reference_modality(modalities: Iterable[str]) -> str:
    """The modality whose grid a case is compared against / resampled onto: ``t1`` when present,
    else the first in vocabulary order."""
    ms = mod.sort_modalities(modalities)
    if not ms:
        raise ValueError("a case without modalities has no reference modality")
    return "t1" if "t1" in ms else ms[0]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _shape(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def grid_differences(grid: Grid, ref: Grid, name: str = "image", ref_name: str = "reference") -> List[str]:
    """Human-readable differences between two grids beyond the module tolerances (empty: same)."""
    out = []
    if grid.size != ref.size:
        out.append(f"{name} size {_shape(grid.size)} vs {ref_name} {_shape(ref.size)}")
    if not np.allclose(grid.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0.0):
        out.append(f"{name} spacing {_fmt(grid.spacing)} vs {ref_name} {_fmt(ref.spacing)}")
    if not np.allclose(grid.origin, ref.origin, rtol=ORIGIN_RTOL, atol=ORIGIN_ATOL_MM):
        out.append(f"{name} origin {_fmt(grid.origin)} vs {ref_name} {_fmt(ref.origin)}")
    if not np.allclose(grid.direction, ref.direction, rtol=0.0, atol=DIRECTION_ATOL):
        out.append(f"{name} direction {_fmt(grid.direction)} vs {ref_name} {_fmt(ref.direction)}")
    return out


def overlap_fraction(grid: Grid, ref: Grid) -> float:
    """Fraction of the reference grid's extent covered by the bounding box of ``grid`` (0: the
    two images do not overlap in physical space, resampling would give an empty image)."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    idx = corners * np.asarray(grid.size, dtype=float) - 0.5
    in_ref = ref.physical_to_index(grid.index_to_physical(idx))
    lo = np.maximum(in_ref.min(axis=0), -0.5)
    hi = np.minimum(in_ref.max(axis=0), np.asarray(ref.size, dtype=float) - 0.5)
    ext = np.clip(hi - lo, 0.0, None)
    return float(np.prod(ext / np.asarray(ref.size, dtype=float)))


# --------------------------------------------------------------------------------------------
# per image / per case checks (top level so the spawn pool can pickle them)
# --------------------------------------------------------------------------------------------
def _sitk_reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR" in ln:
            return ln.split("ERROR:", 1)[-1].strip()
    return lines[-1] if lines else type(e).__name__


def _layout_problem(dim: int, size: Sequence[int], components: int) -> Optional[str]:
    if dim == 4:
        return (f"is 4D (shape {_shape(size)}); expected one 3D volume per modality — split it into "
                f"one file per channel")
    if dim != 3:
        return (f"is {dim}D (shape {_shape(size)}); expected one 3D volume per modality"
                + (" (a single slice cannot be used)" if dim == 2 else ""))
    if components != 1:
        return (f"has {components} components per voxel (vector / RGB image, shape {_shape(size)}); "
                f"expected one scalar 3D volume per modality — split it into one file per channel")
    if min(size) < 1:
        return f"is empty (shape {_shape(size)})"
    return None


def _nifti_nonfinite(path: str) -> Optional[Tuple[int, int]]:
    """(NaN, Inf) voxel counts of a floating-point NIfTI file as stored on disk, None for other
    files. SimpleITK's NIfTI reader turns NaN / Inf into 0, so they are only seen in the raw data
    (other readers, nnU-Net's NibabelIO among them, would pass them on)."""
    low = path.lower()
    if not (low.endswith(".nii") or low.endswith(".nii.gz")):
        return None
    try:
        import nibabel as nib
        img = nib.load(path)
        if not np.issubdtype(img.get_data_dtype(), np.floating):
            return None
        data = np.asanyarray(img.dataobj)
    except Exception:  # unreadable for nibabel: SimpleITK's verdict stands
        return None
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    del data, img
    return n_nan, n_inf


def inspect_image(path: str, hashes: Optional[dict] = None) -> Tuple[Optional[Grid], List[str]]:
    """Check one image file; returns its grid (None when unusable) and the problems found;
    ``hashes[path]`` receives the content hash of a readable image."""
    import SimpleITK as sitk
    if not os.path.exists(path):
        return None, ["file not found"]
    if os.path.isdir(path):
        return None, ["is a folder, not an image file"]
    damage = nifti_damage(path)  # SimpleITK reads zeros where a .nii.gz is cut short
    if damage:
        return None, [damage]
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        return None, [f"cannot be read by SimpleITK (corrupt or unsupported format): {_sitk_reason(e)}"]
    layout = _layout_problem(reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
    if layout:  # decided from the header: no voxels loaded
        return None, [layout]
    try:
        img = reader.Execute()
    except RuntimeError as e:
        return None, [f"cannot be read by SimpleITK (corrupt or truncated data): {_sitk_reason(e)}"]
    grid = Grid.of(img)
    problems = []
    arr = sitk.GetArrayViewFromImage(img)
    if hashes is not None:
        hashes[path] = array_hash(arr.T)
    n_vox = int(arr.size)
    nonfinite: Optional[Tuple[int, int]] = None
    vals = arr
    if np.issubdtype(arr.dtype, np.floating):
        fin = np.isfinite(arr)
        if not fin.all():
            n_nan = int(np.isnan(arr).sum())
            nonfinite = (n_nan, int(n_vox - fin.sum() - n_nan))
            vals = arr[fin]
        del fin
    constant = None if vals.size == 0 else (vals.min() == vals.max(), float(vals.max()))
    del arr, vals, img  # one image in memory at a time
    if nonfinite is None:
        nonfinite = _nifti_nonfinite(path)
    if nonfinite is not None and sum(nonfinite):
        problems.append(f"has {nonfinite[0]} NaN and {nonfinite[1]} Inf voxels (of {n_vox}); "
                        f"replace them (e.g. with 0) or leave the case out")
    if constant is None:
        problems.append("has no finite voxels")
    elif constant[0]:
        problems.append("is all zero (no foreground)" if constant[1] == 0 else
                        f"is constant (every voxel = {constant[1]:.6g}; no foreground)")
    return grid, problems


def _check_case(job) -> dict:
    """Worker: job = (case_id, [(modality, path)], reference modality, resample_to_first)."""
    case_id, items, ref, resample_to_first = job
    problems: List[Tuple[str, str]] = []
    grids: Dict[str, Grid] = {}
    paths = dict(items)
    seen: Dict[str, str] = {}
    hashes: Dict[str, str] = {}
    for m, p in items:
        key = os.path.normcase(os.path.realpath(p))
        if key in seen:
            problems.append((p, f"{m} is the same file as {seen[key]}; each modality needs its own image"))
            continue
        seen[key] = m
        grid, probs = inspect_image(p, hashes)
        problems += [(p, f"{m}: {r}") for r in probs]
        if grid is not None:
            grids[m] = grid
    resample: List[str] = []
    if ref in grids:
        for m, g in grids.items():
            if m == ref:
                continue
            diffs = grid_differences(g, grids[ref], m, ref)
            if not diffs:
                continue
            if not resample_to_first:
                problems.append((paths[m], "; ".join(diffs) + f": {m} and {ref} are not on one grid. "
                                 f"Pass resample_to_first=True (CLI: --resample) to resample {m} onto "
                                 f"{ref}'s grid (unregistered corpora such as IXI need this), or "
                                 f"register the images first"))
            elif overlap_fraction(g, grids[ref]) <= 0.0:
                problems.append((paths[m], f"{m} does not overlap {ref} in physical space ("
                                 + "; ".join(diffs) + f"): resampling onto {ref}'s grid would give "
                                 f"an empty image; check the files' origin / direction"))
            else:
                resample.append(m)
    return {"case_id": case_id, "problems": problems, "resample": mod.sort_modalities(resample),
            "images": [(m, p, hashes[p]) for m, p in items if p in hashes], "grids": grids}


# ---- public entry points -------------------------------------------------------------------
def validate_corpus(manifest: CorpusManifest, resample_to_first: bool = False, on_error: str = "stop",
                    num_processes: int = 1, progress: bool = True, allow_duplicates: bool = False) -> ValidationReport:
    """Check every case of ``manifest`` (module docstring; ``allow_duplicates``: one scan under two
    ids is not a problem).

    All cases are always checked, so every problem is reported at once. ``on_error="stop"`` then
    raises :class:`CorpusValidationError` listing every bad file; ``"skip"`` prints a warning
    summary to stderr and returns a report whose ``ok`` leaves the bad cases out (it raises too
    when no case is left). Cases are checked in a spawn pool when ``num_processes > 1``; one case's
    images are held in memory at a time per worker.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    report = ValidationReport(corpus_name=manifest.name, resample_to_first=bool(resample_to_first))
    if not manifest.cases:
        raise CorpusValidationError(f"corpus '{manifest.name}' lists no cases: nothing to validate.",
                                    report)
    jobs = []
    for case in manifest.cases:
        ms = case.modalities
        report.modalities_per_case[case.case_id] = ms
        if len(ms) == 1:
            report.single_modality_cases.append(case.case_id)
        ref = reference_modality(ms)
        report.reference[case.case_id] = ref
        jobs.append((case.case_id, [(m, manifest.path(case, m)) for m in ms], ref,
                     bool(resample_to_first)))

    desc = f"validating {manifest.name}"
    n_proc = max(1, min(int(num_processes), len(jobs)))
    if n_proc == 1:
        results = [_check_case(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    else:
        with single_threaded_pool(n_proc) as pool:
            results = list(tqdm(pool.imap(_check_case, jobs), total=len(jobs), desc=desc,
                                disable=not progress))

    consistency.add_problems(manifest, results, report.reference, allow_duplicates)
    for res in results:
        cid = res["case_id"]
        if res["problems"]:
            report.bad[cid] = res["problems"]
        else:
            report.ok.append(cid)
            if res["resample"]:
                report.resample[cid] = res["resample"]

    if on_error == "stop" or not report.ok:
        report.raise_if_bad()
    elif report.bad:
        log.warning("WARNING: leaving %d bad case(s) out (on_error='skip'):\n%s", len(report.bad), report.summary())
    return report


def filtered_manifest(manifest: CorpusManifest, report: ValidationReport) -> CorpusManifest:
    """A copy of ``manifest`` holding only the report's ok cases (manifest order kept)."""
    ok = set(report.ok)
    return replace(manifest, cases=[c for c in manifest.cases if c.case_id in ok])
