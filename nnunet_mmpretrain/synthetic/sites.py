"""Scanner and protocol effects of an MRI site, as small pure functions over (x, y, z) arrays.

Each function stands for one physical effect that makes images of one brain differ between
sites (docs/PHANTOMS.md gives the real effect and the range of every parameter):

* :func:`bias_field`: the receive-coil sensitivity (B1-) inhomogeneity, a smooth
  *multiplicative* field ``exp(strength * g)`` with ``g`` a zero-mean unit-std field whose
  features are ``scale_mm`` wide; 1.5 T head coils give a few %, 3 T multichannel coils 20-40 %.
* :func:`contrast_curve`: the sequence parameters (TR, TE, TI, flip angle) change how tissue
  properties map to intensity; modelled as a *monotone* curve ``ref * (s / ref) ** gamma`` of
  the noise-free signal ``s`` (gamma 1 = the reference protocol), which keeps the order of the
  tissues but moves their gaps.
* :func:`thick_slices`: 2D acquisitions with slices thicker than the voxel grid (1-6 mm): every
  acquired slice averages the anatomy over its thickness (partial volume) and is then
  interpolated back onto the grid, so edges across the slices are blurred, in-plane ones not.
* :func:`rician_noise`: thermal noise of the complex signal: the magnitude of (signal + N(0,
  sigma)) + i N(0, sigma), Rician distributed; ``sigma`` grows with lower field strength, smaller
  voxels and faster sequences.
* ``scale`` / ``offset`` of :class:`Site`: the arbitrary units of each scanner's reconstruction.
* ``modalities`` of :class:`Site`: what a source acquires (a BraTS-like centre all four
  sequences, an IXI-like research cohort T1/T2/PD, a clinic FLAIR only).

All functions are deterministic given their ``rng``; shapes are (x, y, z), ``axis`` 2 is the
through-plane direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from nnunet_mmpretrain.synthetic.phantom import smooth_noise


def bias_field(shape: Tuple[int, int, int], spacing: float, strength: float, scale_mm: float,
               rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field ``exp(strength * g)``, float32 (x, y, z), positive.

    ``log(field)`` has standard deviation ``strength`` and features about ``scale_mm`` wide.
    Example: ``img * bias_field(img.shape, 3.0, 0.2, 80.0, rng)``.
    """
    if strength < 0:
        raise ValueError(f"bias strength must be >= 0, got {strength}")
    return np.exp(strength * smooth_noise(shape, spacing, scale_mm, rng)).astype(np.float32)


def contrast_curve(signal: np.ndarray, gamma: float, ref: float = 0.6) -> np.ndarray:
    """Monotone protocol curve ``ref * (signal / ref) ** gamma`` (signal >= 0, gamma > 0).

    ``signal`` in the generator's relative units (white matter T1 ~ 0.85); values equal to
    ``ref`` are unchanged, the order of any two values is kept.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    s = np.clip(signal, 0, None)
    return (ref * (s / ref) ** gamma).astype(np.float32)


def thick_slices(img: np.ndarray, spacing: float, slice_mm: float, axis: int = 2,
                 on_acquired: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """Acquire ``img`` as slices ``slice_mm`` thick along ``axis`` and interpolate back.

    Each acquired slice is the mean of the anatomy over its thickness (a box profile), slices are
    ``slice_mm`` apart, ``on_acquired`` (e.g. noise) is applied to the stack of acquired slices,
    and the stack is linearly interpolated back to the original grid. Returns float32 with
    ``img``'s shape; a slice not thicker than ``spacing`` returns ``img`` (with ``on_acquired``
    applied) unchanged in resolution.
    """
    n = img.shape[axis]
    factor = slice_mm / spacing
    if factor <= 1.0 + 1e-6:
        out = img if on_acquired is None else on_acquired(img)
        return np.asarray(out, dtype=np.float32)
    # box average over the slice thickness (in voxels), evaluated on a fine axis by linear sampling
    fine = ndimage.uniform_filter1d(img.astype(np.float32), size=max(1, int(round(factor))), axis=axis,
                                    mode="nearest")
    centres = np.arange(factor / 2 - 0.5, n - 0.5 + 1e-6, factor)
    if centres.size == 0:
        centres = np.array([(n - 1) / 2.0])
    acquired = _sample_axis(fine, centres, axis)
    if on_acquired is not None:
        acquired = on_acquired(acquired)
    back = _interp_axis(acquired, centres, np.arange(n, dtype=np.float64), axis)
    return back.astype(np.float32)


def _sample_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` at fractional indices ``pos`` along ``axis``."""
    return _interp_axis(a, np.arange(a.shape[axis], dtype=np.float64), pos, axis)


def _interp_axis(a: np.ndarray, src: np.ndarray, dst: np.ndarray, axis: int) -> np.ndarray:
    """Values of ``a`` known at positions ``src`` along ``axis``, linearly interpolated at
    ``dst`` (clamped at both ends)."""
    a = np.moveaxis(a, axis, -1)
    d = np.clip(dst, src[0], src[-1])
    hi = np.clip(np.searchsorted(src, d, side="right"), 1, len(src) - 1) if len(src) > 1 else np.zeros(len(d), int)
    lo = np.maximum(hi - 1, 0)
    span = np.where(src[hi] > src[lo], src[hi] - src[lo], 1.0)
    w = np.clip((d - src[lo]) / span, 0, 1)
    out = a[..., lo] * (1 - w) + a[..., hi] * w
    return np.moveaxis(out, -1, axis)


def rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``img + N(0, sigma) + i N(0, sigma)``: Rician noise of level ``sigma``.

    For ``img >> sigma`` the result is about ``img + N(0, sigma)``; where ``img`` is 0 it is
    Rayleigh distributed with mean ``sigma * sqrt(pi / 2)``.
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.astype(np.float32)
    re = img + rng.normal(0, sigma, img.shape)
    im = rng.normal(0, sigma, img.shape)
    return np.sqrt(re ** 2 + im ** 2).astype(np.float32)


@dataclass(frozen=True)
class Site:
    """One scanner / protocol / population (docs/PHANTOMS.md).

    ``noise`` is the Rician sigma as a fraction of the white-matter signal; ``gamma`` the
    protocol curve's exponent per modality (1 when absent); ``jitter`` the per-scan spread of the
    protocol (gamma +- jitter, gain x (1 +- jitter)).
    """
    name: str
    modalities: Tuple[str, ...]
    bias_strength: float = 0.1
    bias_scale_mm: float = 80.0
    noise: float = 0.03
    slice_mm: float = 1.0
    gamma: Dict[str, float] = field(default_factory=dict)
    scale: float = 1000.0
    offset: float = 0.0
    jitter: float = 0.05
    lesions: bool = True
    description: str = ""


#: the sites of the multi-site phantoms. A and B: the labelled (training) sites; C and D: sites
#: whose labelled cases are only ever evaluated (unseen); E and F: corpus-only sources with other
#: modality sets. Every site also contributes unlabelled subjects to the corpus.
SITES: Dict[str, Site] = {s.name: s for s in (
    Site("A", ("t1", "t1c", "t2", "flair"), bias_strength=0.08, noise=0.03, slice_mm=1.0,
         gamma={}, scale=1000.0, description="1.5 T centre, 3D sequences, the reference protocol"),
    Site("B", ("t1", "t1c", "t2", "flair"), bias_strength=0.25, noise=0.02, slice_mm=3.0,
         gamma={"t2": 1.15, "flair": 0.9}, scale=2500.0, offset=20.0,
         description="3 T centre, multichannel coil (strong bias), 3 mm 2D T2/FLAIR"),
    Site("C", ("t1", "t1c", "t2", "flair"), bias_strength=0.18, noise=0.06, slice_mm=6.0,
         gamma={"t1": 0.8, "t1c": 0.85, "t2": 1.25}, scale=400.0,
         description="older 1.5 T scanner, 6 mm slices, noisy (unseen in fine-tuning)"),
    Site("D", ("t1", "t1c", "t2", "flair"), bias_strength=0.35, noise=0.04, slice_mm=4.5,
         gamma={"t1": 1.3, "t1c": 1.25, "flair": 0.75, "t2": 0.85}, scale=1800.0, offset=50.0,
         description="3 T, other vendor and protocol, 4.5 mm slices (unseen in fine-tuning)"),
    Site("E", ("t1", "t2", "pd"), bias_strength=0.15, noise=0.03, slice_mm=1.2, gamma={"t2": 1.1},
         scale=900.0, lesions=False, description="research cohort of healthy subjects, T1/T2/PD (corpus only)"),
    Site("F", ("flair",), bias_strength=0.2, noise=0.05, slice_mm=5.0, gamma={"flair": 1.2},
         scale=700.0, description="clinic, FLAIR only, 5 mm slices (corpus only)"),
)}
