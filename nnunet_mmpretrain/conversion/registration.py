"""Rigid registration of one image onto a case's reference image, with a sanity check.

Used for ISLES 2022, whose lesion masks live in DWI space while the FLAIR was acquired on its own
grid and, the organisers say, must be *registered* to the DWI before the masks apply to it:
scanner coordinates alone leave the patient's movement between the two acquisitions.

Method (SimpleITK's registration framework): a rigid (Euler 3D) transform, started at the
identity (the scanner coordinates) with its centre at the centre of the fixed image; Mattes
mutual information (the two contrasts differ); regular-step gradient descent with scales from
physical shifts; three resolution levels (shrink 4, 2, 1; smoothing 4, 2, 0 mm); random metric
sampling with a fixed seed. The moving image is then resampled onto the fixed grid (linear,
0 outside its field of view).

Sanity check (:meth:`RegistrationSettings.check`): the registration is accepted only when

* the metric (Mattes MI, lower is better) at the result is no worse than at the identity;
* the moved image covers the fixed image's anatomy: at least ``min_coverage`` of the fixed
  image's Otsu foreground (the DWI brain) lies inside the moved image's Otsu foreground (the
  FLAIR head), and not more than ``max_coverage_loss`` less than in scanner coordinates;
* the transform is plausible for two scans of one session: rotation <= ``max_rotation_deg``,
  translation <= ``max_translation_mm``.

A case that fails is skipped with a reason that gives these numbers (it is never written).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_write_text


@dataclass(frozen=True)
class RegistrationSettings:
    bins: int = 32
    sampling: float = 0.25
    iterations: int = 200
    shrink: Tuple[int, ...] = (4, 2, 1)
    smoothing_mm: Tuple[float, ...] = (4.0, 2.0, 0.0)
    seed: int = 20220
    min_coverage: float = 0.8
    max_coverage_loss: float = 0.05
    max_rotation_deg: float = 30.0
    max_translation_mm: float = 50.0

    def check(self, r: "RegistrationResult") -> Optional[str]:
        """None when ``r`` passes the sanity check, else what failed."""
        bad = []
        if not all(math.isfinite(v) for v in (r.metric_initial, r.metric_final, r.coverage_final)):
            bad.append("the metric cannot be computed (the images hardly overlap)")
        else:
            if r.metric_final > r.metric_initial + 1e-6:
                bad.append(f"Mattes MI got worse ({r.metric_initial:.4f} -> {r.metric_final:.4f})")
            if r.coverage_final < self.min_coverage:
                bad.append(f"only {r.coverage_final:.0%} of the reference foreground lies in the moved "
                           f"image's foreground (minimum {self.min_coverage:.0%})")
            if r.coverage_final < r.coverage_initial - self.max_coverage_loss:
                bad.append(f"foreground coverage fell from {r.coverage_initial:.0%} (scanner coordinates) "
                           f"to {r.coverage_final:.0%}")
        if r.rotation_deg > self.max_rotation_deg:
            bad.append(f"rotation {r.rotation_deg:.1f} deg > {self.max_rotation_deg:g}")
        if r.translation_mm > self.max_translation_mm:
            bad.append(f"translation {r.translation_mm:.1f} mm > {self.max_translation_mm:g}")
        return "; ".join(bad) or None


@dataclass
class RegistrationResult:
    """What one registration did: the metric, the foreground coverage and the head-mask Dice in
    scanner coordinates (initial) and after registration (final), the transform's size, the
    optimiser's stop."""
    metric_initial: float
    metric_final: float
    coverage_initial: float
    coverage_final: float
    dice_initial: float
    dice_final: float
    rotation_deg: float
    translation_mm: float
    iterations: int
    stop: str
    problem: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        return d

    def line(self) -> str:
        return (f"Mattes MI {self.metric_initial:.4f} -> {self.metric_final:.4f}, foreground coverage "
                f"{self.coverage_initial:.0%} -> {self.coverage_final:.0%}, rotation {self.rotation_deg:.1f} deg, "
                f"translation {self.translation_mm:.1f} mm")


def _sitk():
    import SimpleITK as sitk
    return sitk


def _method(settings: RegistrationSettings, multires: bool):
    sitk = _sitk()
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(settings.sampling, settings.seed)
    r.SetInterpolator(sitk.sitkLinear)
    if multires:
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                   numberOfIterations=settings.iterations,
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel(list(settings.shrink))
        r.SetSmoothingSigmasPerLevel(list(settings.smoothing_mm))
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def _metric(fixed, moving, transform, settings: RegistrationSettings) -> float:
    r = _method(settings, multires=False)
    r.SetInitialTransform(transform, inPlace=False)
    try:
        return float(r.MetricEvaluate(fixed, moving))
    except RuntimeError:  # no overlap to sample (the moving image is elsewhere): no metric
        return float("nan")


def _resample(moving, fixed, transform):
    sitk = _sitk()
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _otsu(img) -> float:
    sitk = _sitk()
    f = sitk.OtsuThresholdImageFilter()
    f.Execute(img)
    return float(f.GetThreshold())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 0.0


def _coverage(ref: np.ndarray, other: np.ndarray) -> float:
    n = int(ref.sum())
    return int(np.logical_and(ref, other).sum()) / n if n else 0.0


def register_rigid(fixed, moving, settings: RegistrationSettings = RegistrationSettings()):
    """Register ``moving`` onto ``fixed`` (SimpleITK images). Returns (moving resampled onto the
    fixed grid with the found transform, :class:`RegistrationResult` with ``problem`` set when
    the sanity check fails)."""
    sitk = _sitk()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    r = _method(settings, multires=True)
    r.SetInitialTransform(initial, inPlace=False)
    try:
        found = r.Execute(fixed, moving)
        stop, iterations = r.GetOptimizerStopConditionDescription(), int(r.GetOptimizerIteration())
    except RuntimeError as e:  # e.g. too few samples in the overlap: reported, not written
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        found, stop, iterations = initial, f"failed: {(lines[-1] if lines else type(e).__name__)[:160]}", 0
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(found).GetNthTransform(0)) \
        if found.GetName() == "CompositeTransform" else sitk.Euler3DTransform(found)
    moved = _resample(moving, fixed, euler)
    identity = _resample(moving, fixed, initial)
    fg = sitk.GetArrayViewFromImage(fixed) > _otsu(fixed)
    thr = _otsu(moving)
    fg_identity = sitk.GetArrayViewFromImage(identity) > thr
    fg_moved = sitk.GetArrayViewFromImage(moved) > thr
    res = RegistrationResult(
        metric_initial=_metric(fixed, moving, initial, settings),
        metric_final=_metric(fixed, moving, euler, settings),
        coverage_initial=_coverage(fg, fg_identity), coverage_final=_coverage(fg, fg_moved),
        dice_initial=_dice(fg, fg_identity), dice_final=_dice(fg, fg_moved),
        rotation_deg=math.degrees(_rotation_angle(euler)),
        translation_mm=float(np.linalg.norm(euler.GetTranslation())),
        iterations=iterations, stop=stop)
    failed = f"the optimiser stopped with an ITK error ({stop[len('failed: '):]})" if stop.startswith("failed") else None
    res.problem = "; ".join(p for p in (failed, settings.check(res)) if p) or None
    return moved, res


def _rotation_angle(t) -> float:
    m = np.array(t.GetMatrix()).reshape(3, 3)
    return float(np.arccos(np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0)))


TABLE_NAME = "registration.csv"
TABLE_COLUMNS = ("case", "image", "metric_initial", "metric_final", "coverage_initial", "coverage_final",
                 "dice_initial", "dice_final", "rotation_deg", "translation_mm", "iterations", "stop")


def write_table(folder: str, case_info: Dict[str, Dict[str, Any]], finished: Iterable[str]) -> Optional[str]:
    """Merge this run's registration metrics into ``folder/registration.csv`` (one row per
    registered image of a finished case; rows of cases converted by earlier runs are kept)."""
    path = os.path.join(folder, TABLE_NAME)
    rows: Dict[Tuple[str, str], Dict[str, Any]] = {}
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = {(r["case"], r["image"]): r for r in csv.DictReader(f)}
    for case, info in case_info.items():
        for image, metrics in info.get("registration", {}).items():
            rows[(case, image)] = dict(metrics, case=case, image=image)
    keep = set(finished)
    rows = {k: v for k, v in rows.items() if k[0] in keep}
    if not rows:
        return None
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for k in sorted(rows):
        w.writerow(rows[k])
    atomic_write_text(buf.getvalue(), path)
    return path
