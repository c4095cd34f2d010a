"""Multi-site phantoms: brains that vary, lesions that intensity alone does not decide, and the
scanner and protocol of a :class:`~nnunet_mmpretrain.synthetic.sites.Site`.

What differs from :func:`nnunet_mmpretrain.synthetic.phantom.make_case` (docs/PHANTOMS.md):

* anatomy: on top of the random affine + elastic deformation, per-subject atrophy (cortical grey
  matter near the surface turns into CSF, widening the sulci) and ventricles enlarged by a few mm;
* lesions: 0 to 3 per subject (about 15 % lesion-free), one of 8-20 mm radius and smaller ones
  of 3-10 mm, each with necrosis, an enhancing (or, low grade, non-enhancing) rim and edema
  (labels in BraTS-2023 convention: 1 core, 2 edema, 3 enhancing); their signals
  (:data:`LESION_SIGNAL`) lie *inside* the range of normal tissue in every single modality and
  carry a heterogeneous texture (+-15 %), so a voxel's intensity in one modality does not say
  lesion or not: the combination of modalities, the shape and the context do;
* site: protocol curve, bias field, slice thickness with the noise added to the acquired
  slices, scanner scale and offset, the site's modality set (:data:`~.sites.SITES`).

Arrays are (x, y, z) RAS+ with the affine of :func:`~.phantom.atlas_grid`; everything follows from
the seed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional

import numpy as np
from scipy import ndimage

from nnunet_mmpretrain.synthetic.phantom import SIGNAL, PhantomParams, _deform, _tumour, atlas_grid, smooth_noise
from nnunet_mmpretrain.synthetic.sites import Site, bias_field, contrast_curve, rician_noise, thick_slices

#: lesion compartments per modality, relative units as :data:`~.phantom.SIGNAL` (WM T1 ~ 0.85).
#: Each value lies between the normal tissues' values of that modality (see the test
#: ``test_single_modality_lesion_overlaps_normal_tissue``): edema sits near grey matter in T1, T1ce
#: and FLAIR and between grey matter and CSF in T2; necrosis near CSF in T1/T2 and between CSF and
#: white matter in FLAIR; the enhancing rim is as bright as white matter in T1ce, so only T1ce
#: *against* T1 shows enhancement.
LESION_SIGNAL: Dict[str, Dict[str, float]] = {
    "t1":    dict(edema=0.52, necrosis=0.30, shell=0.48, enhancing=0.50),
    "t1c":   dict(edema=0.54, necrosis=0.32, shell=0.50, enhancing=0.86),
    "t2":    dict(edema=0.74, necrosis=0.90, shell=0.66, enhancing=0.62),
    "flair": dict(edema=0.60, necrosis=0.30, shell=0.55, enhancing=0.54),
    "pd":    dict(edema=0.86, necrosis=0.90, shell=0.82, enhancing=0.82),
}
NORMAL = ("csf", "gm", "wm")
LESION_FREE_FRACTION = 0.15


def vary_anatomy(maps: Dict[str, np.ndarray], spacing: float, atrophy: float, ventricle_mm: float
                 ) -> Dict[str, np.ndarray]:
    """Atrophy and ventricle enlargement of deformed tissue maps (fractions, (x, y, z)).

    ``atrophy`` (0-0.5): the fraction of grey matter within 12 mm of the brain surface that turns
    into CSF (falling linearly with depth); ``ventricle_mm`` (>= 0): how far the deep CSF spaces
    (ventricles, > 15 mm below the surface) grow into the surrounding tissue. Returns new maps
    (``gm``, ``wm``, ``csf`` still sum to the brain mask).
    """
    out = dict(maps)
    brain = maps["mask"] > 0.5
    depth = ndimage.distance_transform_edt(brain) * spacing
    lost = maps["gm"] * np.clip(1 - depth / 12.0, 0, 1) * float(atrophy)
    gm, wm, csf = maps["gm"] - lost, maps["wm"].copy(), maps["csf"] + lost
    vent = (maps["csf"] > 0.5) & (depth > 15.0)
    if ventricle_mm > 0 and vent.any():
        dist = ndimage.distance_transform_edt(~vent) * spacing
        grow = (np.clip((ventricle_mm - dist) / spacing + 0.5, 0, 1) * brain).astype(np.float32)
        csf = csf + (gm + wm) * grow
        gm, wm = gm * (1 - grow), wm * (1 - grow)
    out.update(gm=gm.astype(np.float32), wm=wm.astype(np.float32), csf=csf.astype(np.float32))
    return out


def _lesions(maps, atlas, rng: np.random.Generator):
    """Tissue fractions of all lesion compartments, the label map and the grade of the first."""
    shape = maps["mask"].shape
    labels = np.zeros(shape, np.uint8)
    fr: Dict[str, np.ndarray] = {}
    if rng.random() < LESION_FREE_FRACTION:
        return fr, labels, None
    n = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    grade = "high" if rng.random() < 0.75 else "low"
    for i in range(n):
        r = rng.uniform(8.0, 20.0) if i == 0 else rng.uniform(3.0, 10.0)
        p = replace(PhantomParams(), core_radius_mm=(r, r), edema_extent_mm=(0.3 * r, 0.9 * r))
        f, lab = _tumour(maps, atlas, rng, p, grade == "high" if i == 0 else rng.random() < 0.5)
        take = (lab > 0) & ((labels == 0) | ((labels == 2) & (lab != 2)))
        labels[take] = lab[take]
        for k, v in f.items():
            fr[k] = np.clip(fr.get(k, 0) + v, 0, 1)
    return fr, labels, grade


def make_site_case(seed: int, site: Site, spacing: float = 3.0, modalities: Optional[tuple] = None,
                   lesions: Optional[bool] = None) -> dict:
    """One subject scanned at ``site``.

    Args:
        seed: everything about the subject and the scan follows from it.
        site: scanner, protocol and modality set (:data:`~.sites.SITES`).
        spacing: isotropic grid in mm (slice thickness is simulated on this grid).
        modalities: subset to write (default: the site's own).
        lesions: override the site's ``lesions`` flag (None: the site's).

    Returns:
        dict ``images`` {modality: float32 (x, y, z)}, ``label`` uint8 (x, y, z), ``grade``
        ('high' / 'low' / None when lesion-free), ``site`` (name), ``affine`` (4x4).
    """
    mods = tuple(modalities or site.modalities)
    for m in mods:
        if m not in LESION_SIGNAL:
            raise ValueError(f"multi-site phantoms know modalities {tuple(LESION_SIGNAL)}, not {m!r}")
    rng = np.random.default_rng(seed)
    atlas = atlas_grid(float(spacing))
    maps = _deform(atlas, rng, PhantomParams())
    maps = vary_anatomy(maps, atlas.spacing, atrophy=rng.uniform(0.0, 0.4), ventricle_mm=rng.uniform(0.0, 6.0))
    brain = maps["mask"] > 0.5
    with_lesions = site.lesions if lesions is None else lesions
    fr, labels, grade = _lesions(maps, atlas, rng) if with_lesions else ({}, np.zeros(brain.shape, np.uint8), None)
    occupied = np.clip(sum(fr.values()), 0, 1) if fr else 0.0
    tissue = {k: maps[k] * (1 - occupied) for k in NORMAL}
    shape = brain.shape
    tex_normal = 1 + 0.04 * smooth_noise(shape, atlas.spacing, 4.0, rng)
    tex_lesion = {k: 1 + 0.15 * smooth_noise(shape, atlas.spacing, 4.0, rng) for k in fr}
    anat = 0.85 + 0.3 * (maps["t1"] - 0.5)
    bias = bias_field(shape, atlas.spacing, site.bias_strength, site.bias_scale_mm, rng)
    images = {}
    for m in mods:
        jit = {k: rng.uniform(0.92, 1.08) for k in fr}
        sig = sum(SIGNAL[m][k] * tissue[k] for k in NORMAL) * tex_normal
        for k, v in fr.items():
            sig = sig + LESION_SIGNAL[m][k] * jit[k] * v * tex_lesion[k]
        if m in ("t1", "t1c"):
            sig = sig * anat
        gamma = site.gamma.get(m, 1.0) * rng.uniform(1 - site.jitter, 1 + site.jitter)
        gain = site.scale * rng.uniform(1 - site.jitter, 1 + site.jitter)
        img = contrast_curve(sig, gamma) * bias * gain + site.offset * brain
        sigma = site.noise * SIGNAL[m]["wm"] * gain
        img = thick_slices(img, atlas.spacing, site.slice_mm, axis=2,
                           on_acquired=lambda a: rician_noise(a, sigma, rng))
        images[m] = np.where(brain, img, 0).astype(np.float32)
    labels[~brain] = 0
    return {"images": images, "label": labels, "grade": grade, "site": site.name, "affine": atlas.affine.copy()}
