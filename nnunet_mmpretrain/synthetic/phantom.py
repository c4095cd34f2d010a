"""BraTS-like multi-modal brain phantoms made from the ICBM 2009a maps that nilearn ships.

Anatomy: the ICBM 2009a (symmetric) T1 template and its GM / WM probability maps, loaded from the
nilearn wheel (no download); CSF = brain mask - GM - WM. Each case is the atlas anatomy under a
random affine + smooth elastic deformation (sizes in mm), optionally with a tumour:

* a tumour core of radius ``r`` (mm) with a lumpy boundary: an inner necrotic / cystic part
  (label 1) and a shell that is *enhancing* (label 3) in high-grade tumours and non-enhancing
  (label 1) in low-grade ones,
* edema (label 2) around the core that spreads along white matter,

labels in BraTS-2023 convention (1 non-enhancing core / necrosis, 2 edema, 3 enhancing). Images
come from per-tissue signal models for T1, T1ce, T2, FLAIR and PD, a smooth multiplicative bias
field, a per-case gain and Rician noise inside the brain; the background is 0 (skull-stripped, as
BraTS). High- and low-grade tumours look identical in every modality but T1ce, so the grade can only
be read from the contrast-enhanced channel.

All arrays are indexed (x, y, z) in RAS+ voxel order with the affine returned by :func:`atlas_grid`.
Every case is reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

#: relative signal of each tissue per modality (arbitrary units, WM T1 ~ 0.85)
SIGNAL: Dict[str, Dict[str, float]] = {
    #          csf   gm    wm    edema necro shell enh
    "t1":    dict(csf=0.20, gm=0.58, wm=0.85, edema=0.50, necrosis=0.25, shell=0.45, enhancing=0.45),
    "t1c":   dict(csf=0.22, gm=0.60, wm=0.86, edema=0.52, necrosis=0.26, shell=0.47, enhancing=1.15),
    "t2":    dict(csf=1.00, gm=0.55, wm=0.35, edema=0.82, necrosis=0.95, shell=0.68, enhancing=0.68),
    "flair": dict(csf=0.10, gm=0.62, wm=0.45, edema=0.98, necrosis=0.40, shell=0.78, enhancing=0.78),
    "pd":    dict(csf=0.92, gm=0.80, wm=0.66, edema=0.88, necrosis=0.90, shell=0.82, enhancing=0.82),
}
PHANTOM_MODALITIES = tuple(SIGNAL)


@dataclass(frozen=True)
class Atlas:
    """Atlas anatomy on the output grid (x, y, z), RAS+."""
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray          # float brain mask in [0, 1]
    affine: np.ndarray        # 4x4 voxel -> RAS mm of the output grid
    spacing: float


def _nilearn_maps():
    """ICBM 2009a T1, GM, WM and brain mask at 1 mm as (arrays, affine), from nilearn's wheel."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets
        t1 = datasets.load_mni152_template(resolution=1)
        gm = datasets.load_mni152_gm_template(resolution=1)
        wm = datasets.load_mni152_wm_template(resolution=1)
        mask = datasets.load_mni152_brain_mask(resolution=1)
    arrs = [np.asarray(im.get_fdata(), dtype=np.float32) for im in (t1, gm, wm, mask)]
    return arrs, np.asarray(t1.affine, dtype=np.float64)


@lru_cache(maxsize=4)
def atlas_grid(spacing: float = 2.0, margin_mm: float = 16.0) -> Atlas:
    """The atlas resampled to an isotropic ``spacing`` grid cropped to the brain (+ margin)."""
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    (t1, gm, wm, mask), aff = _nilearn_maps()
    mask = (mask > 0.5).astype(np.float32)
    idx = np.argwhere(mask > 0)
    lo_mm = aff[:3, :3] @ idx.min(0) + aff[:3, 3]
    hi_mm = aff[:3, :3] @ idx.max(0) + aff[:3, 3]
    lo_mm, hi_mm = np.minimum(lo_mm, hi_mm) - margin_mm, np.maximum(lo_mm, hi_mm) + margin_mm
    shape = np.ceil((hi_mm - lo_mm) / spacing).astype(int) + 1
    out_aff = np.diag([spacing, spacing, spacing, 1.0])
    out_aff[:3, 3] = lo_mm
    coords = _grid_mm(shape, out_aff)
    src = _mm_to_vox(coords, aff)
    # anti-alias before downsampling
    sig = max(0.0, (spacing - 1.0) / 2.0)

    def res(a, order=1):
        if sig > 0:
            a = ndimage.gaussian_filter(a, sig)
        return ndimage.map_coordinates(a, src, order=order, mode="constant").reshape(shape)

    t1r, gmr, wmr, mr = (res(a).astype(np.float32) for a in (t1, gm, wm, mask))
    gmr, wmr = np.clip(gmr, 0, 1) * (mr > 0.5), np.clip(wmr, 0, 1) * (mr > 0.5)
    csf = np.clip(mr - gmr - wmr, 0, 1)
    return Atlas(t1=t1r / max(float(t1r.max()), 1e-6), gm=gmr, wm=wmr, csf=csf,
                 mask=np.clip(mr, 0, 1), affine=out_aff, spacing=float(spacing))


def _grid_mm(shape, affine) -> np.ndarray:
    """(3, N) RAS mm coordinates of every voxel of a grid."""
    ii = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return affine[:3, :3] @ ii + affine[:3, 3:4]


def _mm_to_vox(mm: np.ndarray, affine) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return inv[:3, :3] @ mm + inv[:3, 3:4]


def smooth_noise(shape: Sequence[int], spacing: float, scale_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std random field whose features are ~``scale_mm`` wide."""
    coarse = [max(2, int(np.ceil(s * spacing / scale_mm)) + 1) for s in shape]
    n = rng.standard_normal(coarse).astype(np.float32)
    f = ndimage.zoom(n, [s / c for s, c in zip(shape, coarse)], order=1, mode="nearest")  # linear: 3x faster than cubic
    f = f[: shape[0], : shape[1], : shape[2]]
    f = np.pad(f, [(0, s - fs) for s, fs in zip(shape, f.shape)], mode="edge")
    return (f - f.mean()) / (f.std() + 1e-6)


@dataclass(frozen=True)
class PhantomParams:
    """Sizes in mm, ranges drawn uniformly per case."""
    rotation_deg: float = 6.0
    scale_range: Tuple[float, float] = (0.93, 1.07)
    translation_mm: float = 4.0
    elastic_mm: float = 3.0            # displacement amplitude
    elastic_scale_mm: float = 30.0     # feature size of the displacement field
    core_radius_mm: Tuple[float, float] = (12.0, 22.0)
    necrosis_fraction: Tuple[float, float] = (0.45, 0.65)
    edema_extent_mm: Tuple[float, float] = (6.0, 18.0)
    bias_strength: float = 0.15
    noise_fraction: Tuple[float, float] = (0.02, 0.05)   # Rician sigma / WM intensity
    gain_range: Tuple[float, float] = (0.8, 1.25)


def _deform(atlas: Atlas, rng: np.random.Generator, p: PhantomParams):
    shape = atlas.mask.shape
    ang = np.deg2rad(rng.uniform(-p.rotation_deg, p.rotation_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    a = rz @ ry @ rx @ np.diag(rng.uniform(*p.scale_range, 3))
    t = rng.uniform(-p.translation_mm, p.translation_mm, 3)
    mm = _grid_mm(shape, atlas.affine)
    centre = mm[:, atlas.mask.reshape(-1) > 0.5].mean(1, keepdims=True)
    src_mm = a @ (mm - centre) + centre + t[:, None]
    for d in range(3):
        src_mm[d] += p.elastic_mm * smooth_noise(shape, atlas.spacing, p.elastic_scale_mm, rng).reshape(-1)
    src = _mm_to_vox(src_mm, atlas.affine)

    def warp(x):
        return ndimage.map_coordinates(x, src, order=1, mode="constant").reshape(shape).astype(np.float32)

    return {k: warp(getattr(atlas, k)) for k in ("t1", "gm", "wm", "csf", "mask")}


def _tumour(maps, atlas: Atlas, rng: np.random.Generator, p: PhantomParams, high_grade: bool):
    """Tissue fractions of the tumour compartments and the BraTS-2023 label map."""
    shape = maps["mask"].shape
    sp = atlas.spacing
    brain = maps["mask"] > 0.5
    r = rng.uniform(*p.core_radius_mm)
    # centre: white matter, at least r mm inside the brain
    inner = ndimage.distance_transform_edt(brain) * sp > r + 2 * sp
    cand = np.argwhere(inner & (maps["wm"] > 0.5))
    if len(cand) == 0:
        cand = np.argwhere(inner if inner.any() else brain)
    c = cand[rng.integers(len(cand))]
    ii = np.indices(shape, dtype=np.float32)
    dist = np.sqrt(sum(((ii[d] - c[d]) * sp) ** 2 for d in range(3)))
    lumpy = dist - 0.25 * r * smooth_noise(shape, sp, max(r, 6.0), rng)
    nec_f = rng.uniform(*p.necrosis_fraction)
    core = (lumpy <= r) & brain
    necro = (lumpy <= nec_f * r) & brain
    shell = core & ~necro
    extent = rng.uniform(*p.edema_extent_mm)
    wm_s = ndimage.gaussian_filter(maps["wm"], 1.5 / sp)
    edema = ((lumpy <= r + extent * np.sqrt(np.clip(wm_s, 0, 1))) | (lumpy <= r + 2.5)) & brain & ~core
    labels = np.zeros(shape, np.uint8)
    labels[edema] = 2
    labels[shell] = 3 if high_grade else 1
    labels[necro] = 1

    def soft(m):
        return np.clip(ndimage.gaussian_filter(m.astype(np.float32), 0.6), 0, 1)

    fr = {"necrosis": soft(necro), "edema": soft(edema)}
    fr["enhancing" if high_grade else "shell"] = soft(shell)
    return fr, labels


def make_case(seed: int, spacing: float = 2.0, modalities: Sequence[str] = ("t1", "t1c", "t2", "flair"),
              tumour: Optional[str] = "random", p: PhantomParams = PhantomParams(),
              source_gain: Optional[Dict[str, float]] = None):
    """Generate one phantom case.

    Args:
        seed: everything about the case follows from it.
        spacing: isotropic voxel size in mm.
        modalities: any of :data:`PHANTOM_MODALITIES`.
        tumour: ``None`` (healthy), ``'high'``, ``'low'`` or ``'random'`` (75% high grade).
        source_gain: optional per-modality scanner gain (to make sources differ).

    Returns:
        dict with ``images`` {modality: float32 (x, y, z)}, ``label`` uint8 (x, y, z) (zeros when
        healthy), ``grade`` ('high' / 'low' / None), ``affine`` (4x4).
    """
    for m in modalities:
        if m not in SIGNAL:
            raise ValueError(f"phantoms know modalities {PHANTOM_MODALITIES}, not {m!r}")
    rng = np.random.default_rng(seed)
    atlas = atlas_grid(float(spacing))
    maps = _deform(atlas, rng, p)
    brain = maps["mask"] > 0.5
    grade = None
    if tumour is not None:
        grade = tumour if tumour in ("high", "low") else ("high" if rng.random() < 0.75 else "low")
        fr, labels = _tumour(maps, atlas, rng, p, grade == "high")
    else:
        fr, labels = {}, np.zeros(brain.shape, np.uint8)
    occupied = np.clip(sum(fr.values()) if fr else 0.0, 0, 1)
    base = {k: maps[k] * (1 - occupied) for k in ("csf", "gm", "wm")}
    tissue = {**base, **fr}
    bias = np.exp(p.bias_strength * smooth_noise(brain.shape, atlas.spacing, 60.0, rng))
    texture = 1 + 0.04 * smooth_noise(brain.shape, atlas.spacing, 4.0, rng)
    anat = 0.85 + 0.3 * (maps["t1"] - 0.5)   # real ICBM texture, mild
    images = {}
    for m in modalities:
        sig = sum(SIGNAL[m][k] * v for k, v in tissue.items())
        if m in ("t1", "t1c"):
            sig = sig * anat
        gain = rng.uniform(*p.gain_range) * (source_gain or {}).get(m, 1.0) * 1000.0
        img = sig * bias * texture * gain
        sigma = rng.uniform(*p.noise_fraction) * SIGNAL[m]["wm"] * gain
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
        images[m] = np.where(brain, img, 0).astype(np.float32)
    labels[~brain] = 0
    return {"images": images, "label": labels, "grade": grade, "affine": atlas.affine.copy()}
