"""Geometry and image I/O through SimpleITK: grids, reading, resampling, label mapping, atomic
writes (``.partial/`` then rename), hard links and copies."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from typing import Mapping, Optional, Tuple

import numpy as np

from nnunet_mmpretrain.conversion.paths import PARTIAL_DIR
from nnunet_mmpretrain.conversion.summary import CaseSkip

from nnunet_mmpretrain.geometry import GRID_TOL_MM, Grid  # noqa: F401 (one home; re-exported)
from nnunet_mmpretrain.io_utils import damaged_files  # noqa: F401 (one home; re-exported)


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


def check_complete(path: str) -> None:
    """CaseSkip naming ``path`` when a NIfTI file is truncated or its gzip data is corrupt."""
    from nnunet_mmpretrain.io_utils import nifti_damage
    if not os.path.isfile(path):
        raise CaseSkip(f"missing file {path}")
    why = nifti_damage(path)
    if why:
        raise CaseSkip(f"{path} {why}")


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


def map_labels(arr: np.ndarray, mapping: Mapping[int, int], where: str, dataset: str = "",
               hints: Optional[Mapping[int, str]] = None) -> np.ndarray:
    """Apply ``mapping`` (release value -> our value); CaseSkip naming ``where`` for values the
    mapping does not know (with the ``hints`` explaining such values) or non-integer values."""
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
        hint = "; ".join((hints or {})[v] for v in unknown if v in (hints or {}))
        raise CaseSkip(f"label file {where} holds value(s) {', '.join(map(str, unknown))} that "
                       f"{ds} does not define (expected {', '.join(map(str, sorted(mapping)))})"
                       + (f": {hint}." if hint else "."))
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


def _tmp_for(folder: str, final: str) -> str:
    d = os.path.join(folder, PARTIAL_DIR)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{uuid.uuid4().hex[:12]}_{os.path.basename(final)}")


def _commit(tmp: str, final: str) -> None:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(tmp, final)


def _write_failure(e: RuntimeError, tmp: str) -> BaseException:
    """SimpleITK reports a failed write as RuntimeError: an OSError when the disk is the cause."""
    from nnunet_mmpretrain.io_utils import diagnose_disk
    d = os.path.dirname(tmp)
    disk = diagnose_disk(d)
    if disk is not None:
        return OSError(disk.errno, disk.strerror, tmp)
    if not os.access(d, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), tmp)
    return e


def write_image(img, folder: str, final: str) -> None:
    sitk = _sitk()
    tmp = _tmp_for(folder, final)
    try:
        try:
            sitk.WriteImage(img, tmp, True)
        except RuntimeError as e:
            raise _write_failure(e, tmp) from None
        _commit(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def place_file(src: str, folder: str, final: str, link: bool) -> str:
    """Hard-link (or copy) ``src`` to ``final`` through a temporary name. Returns 'linked',
    'copied' or 'fallback' (link requested but impossible: copied)."""
    tmp = _tmp_for(folder, final)
    try:
        how = _link_or_copy(src, tmp, link)
        _commit(tmp, final)
    except OSError as e:
        if e.errno in _OUTPUT_ERRNOS:  # the output disk (full / read-only), not the source file
            raise OSError(e.errno, e.strerror, final) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return how


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _link_or_copy(src: str, tmp: str, link: bool) -> str:
    how = "copied"
    if link:
        try:
            os.link(src, tmp)
            return "linked"
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK,
                               errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            how = "fallback"
    shutil.copyfile(src, tmp)
    return how


def clear_partial(folder: str) -> None:
    shutil.rmtree(os.path.join(folder, PARTIAL_DIR), ignore_errors=True)
