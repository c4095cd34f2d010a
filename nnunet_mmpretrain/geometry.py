"""Where a preprocessed case sits on the corpus's canonical grid, and how a volume on that grid is
written back to the images' own world geometry.

nnU-Net preprocessing transposes each image (``transpose_forward``), crops it to its nonzero
bounding box and resamples it to the configuration's spacing. The canonical (template) grid is
the *uncropped* image in that preprocessed space: a case's crop starts at ``bbox_start * scale``
on it, with ``scale = original spacing / target spacing`` per (transposed) axis. For corpora whose
images share one grid (atlas-registered, as BraTS on SRI24) every case maps onto the same grid,
so a volume on it (a template, a corpus mean) overlays every case.

Axis order: arrays in nnU-Net's preprocessed order (transposed SimpleITK (z, y, x) order).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_path


#: two voxel grids are the same when sizes are equal and spacing / origin / direction agree to this
GRID_TOL_MM = 1e-3


def _fmt_values(v) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


@dataclass(frozen=True)
class Grid:
    """Voxel grid of a 3D image in SimpleITK (x, y, z) order; ``direction`` is the flat 3x3."""
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, img) -> "Grid":
        return cls(tuple(int(s) for s in img.GetSize()), tuple(float(s) for s in img.GetSpacing()),
                   tuple(float(o) for o in img.GetOrigin()),
                   tuple(float(d) for d in img.GetDirection()))

    def index_to_physical(self, idx: np.ndarray) -> np.ndarray:
        """(n, 3) continuous indices -> (n, 3) physical points."""
        d = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ d.T

    def physical_to_index(self, pts: np.ndarray) -> np.ndarray:
        d = np.asarray(self.direction).reshape(3, 3)
        return (np.linalg.solve(d, (pts - np.asarray(self.origin)).T).T) / np.asarray(self.spacing)

    def mismatch(self, other: "Grid", tol: float = GRID_TOL_MM) -> Optional[str]:
        """None when both describe the same voxel grid, else what differs."""
        if tuple(self.size) != tuple(other.size):
            return f"size {tuple(self.size)} vs {tuple(other.size)}"
        if not np.allclose(self.spacing, other.spacing):  # nnU-Net's own spacing test
            return f"spacing {_fmt_values(self.spacing)} vs {_fmt_values(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tol):
            return f"origin {_fmt_values(self.origin)} vs {_fmt_values(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            return "direction differs"
        return None


def grid_geometry(props: dict, transpose_forward: Sequence[int], target_spacing: Sequence[float]
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """(offset of the cropped, resampled case on the grid (3,), grid shape of the full image (3,)),
    in the preprocessed (transposed, resampled) voxel space. ``props`` is nnU-Net's per-case
    properties dict (``spacing``, ``bbox_used_for_cropping``, ``shape_before_cropping``)."""
    orig = np.array([props["spacing"][i] for i in transpose_forward], dtype=float)
    scale = orig / np.asarray(target_spacing, dtype=float)
    bbox_start = np.array([b[0] for b in props["bbox_used_for_cropping"]], dtype=float)
    full = np.array(props["shape_before_cropping"], dtype=float)
    return np.round(bbox_start * scale).astype(np.int64), np.round(full * scale).astype(np.int64)


def template_grid_shape(properties: Dict[str, dict], transpose_forward, target_spacing) -> List[int]:
    """The canonical grid: the largest full (uncropped) image of the corpus in preprocessed space."""
    shapes = np.stack([grid_geometry(p, transpose_forward, target_spacing)[1] for p in properties.values()])
    return [int(s) for s in shapes.max(0)]


@dataclass(frozen=True)
class GridGeometry:
    """World geometry of the canonical grid, taken from a reference case (a plain dict in
    checkpoints and bundles: :meth:`to_dict` / :meth:`from_dict`).

    Attributes:
        shape_before_cropping: the reference image's shape in nnU-Net's *transposed* order
            (as in its properties).
        transpose_backward: nnU-Net's permutation from preprocessed to SimpleITK array order.
        spacing, origin, direction: the reference image's SimpleITK geometry ((x, y, z) order,
            direction row-major 3x3).
    """

    shape_before_cropping: Tuple[int, ...]
    transpose_backward: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]

    @classmethod
    def from_case(cls, props: dict, transpose_backward: Sequence[int]) -> "GridGeometry":
        s = props["sitk_stuff"]
        return cls(tuple(int(v) for v in props["shape_before_cropping"]), tuple(int(v) for v in transpose_backward),
                   tuple(float(v) for v in s["spacing"]), tuple(float(v) for v in s["origin"]),
                   tuple(float(v) for v in s["direction"]))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "GridGeometry":
        return cls(**{k: tuple(v) for k, v in d.items()})

    def to_image(self, volume: np.ndarray):
        """A grid volume (GX, GY, GZ) in preprocessed order -> SimpleITK image on the reference
        image's world grid: resampled (linear) to ``shape_before_cropping``, transposed back,
        spacing / origin / direction set. It overlays the corpus images in a viewer."""
        import SimpleITK as sitk
        from scipy import ndimage
        vol = np.asarray(volume, dtype=np.float32)
        target = self.shape_before_cropping
        if tuple(vol.shape) != tuple(target):
            vol = ndimage.zoom(vol, [t / s for t, s in zip(target, vol.shape)], order=1, mode="nearest",
                               grid_mode=True)
            vol = _fit(vol, target)
        arr = np.ascontiguousarray(np.transpose(vol, self.transpose_backward), dtype=np.float32)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def _fit(vol: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Crop or zero-pad (at the end) to ``shape`` (zoom may be one voxel off)."""
    out = np.zeros(tuple(shape), vol.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(vol.shape, shape))
    out[sl] = vol[sl]
    return out


def write_grid_nifti(volume: np.ndarray, geometry: Optional[GridGeometry], path: str,
                     spacing: Optional[Sequence[float]] = None) -> str:
    """Write a grid volume as NIfTI (atomically). With ``geometry``: on the corpus images' world
    grid (:meth:`GridGeometry.to_image`). Without (a corpus not on one grid): the grid as it is,
    ``spacing`` per preprocessed axis, origin 0, identity direction (a position-free template has
    no place in the world)."""
    import SimpleITK as sitk
    if geometry is not None:
        img = geometry.to_image(volume)
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
        if spacing is not None:
            img.SetSpacing([float(s) for s in reversed(list(spacing))])
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, tmp, useCompression=True)
    return path
