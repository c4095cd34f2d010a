"""Template substitution (BrainMVP's downstream augmentation) and the inference-time fill of a
missing channel with its modality template.

During fine-tuning BrainMVP replaces up to min(3, C-1) input channels of a sample with the
learned template of the modality each carries, so the network learns to cope with missing
modalities (docs/METHOD.md, "Fine-tuning with templates"). At inference, nnU-Net requires every
channel: :func:`fill_missing_channel` puts the template of a missing modality on the case's grid.

Templates come from the encoder bundle (``bundle['templates']``: raw learned volumes on the
pretraining grid, axes in nnU-Net's preprocessed (transposed) order, spacing
``bundle['template_spacing']``; or ``templates/template_<modality>.nii.gz`` of a bundle folder,
already min-max normalised).

Shapes: (GX, GY, GZ) a template grid, (C, X, Y, Z) a sample's image (batchgeneratorsv2 works per
sample), (X, Y, Z) a patch.

Brain mask of a template: the learned template has no exact zero background (it is min-max
normalised; z-scored data are 0 outside the brain, which is mid-range after min-max), so the
mask is "differs from the background level by more than ``mask_tolerance``" with the background
level = median of the volume's outer one-voxel shell, holes filled (brain voxels whose value
equals the background level stay inside). For a template with a 0 background this is its
nonzero region.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy import ndimage

from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from nnunet_mmpretrain.modalities import canonical, is_known

ArrayLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------- helpers
def _as_numpy(a: ArrayLike) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _minmax(a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Min-max normalisation as in pretraining (``ModalityTemplates``): (a - min) / (max - min + eps)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo + eps)


def _shell_median(a: np.ndarray) -> float:
    parts = []
    for ax in range(a.ndim):
        parts.append(np.take(a, 0, axis=ax).ravel())
        parts.append(np.take(a, a.shape[ax] - 1, axis=ax).ravel())
    return float(np.median(np.concatenate(parts)))


def brain_mask(volume: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """Foreground of a min-max normalised template (N-D array -> bool array of the same shape):
    voxels differing from the background level (median of the outer shell) by more than
    ``tolerance``, holes filled. A template with a 0 background gives its nonzero region."""
    bg = _shell_median(volume)
    m = np.abs(volume - bg) > tolerance
    return ndimage.binary_fill_holes(m) if m.any() else m


def _zscore_on_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(volume.shape, np.float32)
    if mask.any():
        v = volume[mask]
        out[mask] = (v - v.mean()) / max(float(v.std()), 1e-8)
    return out


def _randint(rng: Optional[np.random.Generator], lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive); the global numpy RNG when ``rng`` is None, so that
    nnU-Net's per-worker seeding of np.random applies."""
    if rng is None:
        return int(np.random.randint(lo, hi + 1))
    return int(rng.integers(lo, hi + 1))


def _uniform(rng: Optional[np.random.Generator]) -> float:
    return float(np.random.uniform()) if rng is None else float(rng.uniform())


def _extract(volume: np.ndarray, start: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """Crop ``patch`` voxels from ``start`` (any integers); parts outside the volume are 0."""
    out = np.zeros(tuple(patch), np.float32)
    src, dst = [], []
    for s, p, g in zip(start, patch, volume.shape):
        a, b = max(s, 0), min(s + p, g)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


# ---------------------------------------------------------------------------- template bank
class TemplateBank:
    """Modality templates prepared for the downstream network's input space.

    Each template is min-max normalised (as in pretraining), resampled from ``template_spacing``
    to ``target_spacing`` (``scipy.ndimage.zoom``, order 1, zoom factor template / target
    spacing per axis; both in the same (preprocessed) axis order) and z-scored over its brain
    mask (module docstring), 0 outside: like a channel after nnU-Net's z-score on the brain mask.

    Args:
        templates: modality (any alias) -> raw template (GX, GY, GZ), numpy or torch.
        template_spacing: spacing of the template grid (bundle ``template_spacing``).
        target_spacing: spacing of the downstream configuration; None keeps the grid.
        position_free: the templates were learned without atlas positions (corpus not
            registered): :meth:`crop` ignores ``rel_center`` and takes a random crop.
        masks: optional modality -> bool brain mask on the template grid (overrides the
            automatic mask).
        mask_tolerance: see :func:`brain_mask`.
    """

    def __init__(self, templates: Mapping[str, ArrayLike], template_spacing: Sequence[float],
                 target_spacing: Optional[Sequence[float]] = None, position_free: bool = False,
                 masks: Optional[Mapping[str, ArrayLike]] = None, mask_tolerance: float = 0.01):
        if not templates:
            raise ValueError("TemplateBank needs at least one template")
        self.template_spacing = [float(s) for s in template_spacing]
        self.target_spacing = None if target_spacing is None else [float(s) for s in target_spacing]
        self.position_free = bool(position_free)
        masks = {canonical(k): v for k, v in (masks or {}).items()}
        self._vols: Dict[str, np.ndarray] = {}
        self._masks: Dict[str, np.ndarray] = {}
        for name, raw in templates.items():
            m = canonical(name)
            vol = _minmax(_as_numpy(raw))
            if len(self.template_spacing) != vol.ndim:
                raise ValueError(f"template '{m}' is {vol.ndim}-D but template_spacing has "
                                 f"{len(self.template_spacing)} entries")
            mask = np.asarray(_as_numpy(masks[m]) > 0.5) if m in masks else None
            if self.target_spacing is not None:
                if len(self.target_spacing) != vol.ndim:
                    raise ValueError(f"target_spacing {self.target_spacing} does not match the "
                                     f"{vol.ndim}-D template '{m}'")
                factors = [t / s for t, s in zip(self.template_spacing, self.target_spacing)]
                if any(abs(f - 1) > 1e-6 for f in factors):
                    vol = ndimage.zoom(vol, factors, order=1, mode="nearest", grid_mode=False)
                    if mask is not None:
                        mask = ndimage.zoom(mask.astype(np.uint8), factors, order=0, mode="nearest") > 0
            if mask is None:
                mask = brain_mask(vol, mask_tolerance)
            elif mask.shape != vol.shape:
                raise ValueError(f"mask of '{m}' has shape {mask.shape}, template {vol.shape}")
            if not mask.any():
                warnings.warn(f"template '{m}' is constant (untrained?): it substitutes as zeros",
                              UserWarning, stacklevel=2)
            self._vols[m] = _zscore_on_mask(vol, mask)
            self._masks[m] = mask

    @classmethod
    def from_bundle(cls, bundle: Mapping, target_spacing: Optional[Sequence[float]] = None,
                    **kwargs) -> "TemplateBank":
        """Bank of a :func:`~nnunet_mmpretrain.transfer.bundle.load_bundle` dict (``templates``,
        ``template_spacing``; ``position_free`` from the pretraining plans' ``atlas_registered``
        unless given)."""
        if "position_free" not in kwargs:
            try:
                block = json.loads(bundle.get("plans", "{}")).get("mmpretrain", {})
                kwargs["position_free"] = not bool(block.get("atlas_registered", True))
            except (TypeError, ValueError):
                pass
        return cls(bundle["templates"], bundle["template_spacing"], target_spacing, **kwargs)

    @property
    def modalities(self) -> List[str]:
        """Canonical modality names with a template."""
        return list(self._vols)

    def __contains__(self, modality) -> bool:
        return modality is not None and is_known(modality) and canonical(modality) in self._vols

    def get(self, modality: str) -> np.ndarray:
        """Prepared template (GX', GY', GZ') float32 (z-scored in the brain, 0 outside)."""
        m = canonical(modality)
        if m not in self._vols:
            raise KeyError(f"no template for modality '{m}'; templates: {self.modalities}")
        return self._vols[m]

    def mask(self, modality: str) -> np.ndarray:
        """Brain mask (GX', GY', GZ') bool used for the z-score."""
        self.get(modality)
        return self._masks[canonical(modality)]

    def random_rel_center(self, patch_shape: Sequence[int], rng: Optional[np.random.Generator] = None,
                          modality: Optional[str] = None) -> List[float]:
        """A random patch-centre position (3 floats in [0, 1]) for which a ``patch_shape`` crop lies
        inside the grid (centred when the grid is smaller than the patch)."""
        grid = self.get(modality if modality is not None else self.modalities[0]).shape
        rel = []
        for g, p in zip(grid, patch_shape):
            start = _randint(rng, 0, g - p) if g >= p else -((p - g) // 2)
            rel.append((start + p // 2) / max(g - 1, 1))
        return rel

    def _start(self, grid: Sequence[int], patch: Sequence[int], rel_center, rng) -> List[int]:
        if self.position_free or rel_center is None:
            return [_randint(rng, 0, g - p) if g >= p else -((p - g) // 2) for g, p in zip(grid, patch)]
        rel = [float(r) for r in np.asarray(rel_center, dtype=float).reshape(-1)]
        if len(rel) != len(grid):
            raise ValueError(f"rel_center {rel} must have {len(grid)} entries")
        return [int(round(r * (g - 1))) - p // 2 for r, g, p in zip(rel, grid, patch)]

    def crop(self, modality: str, patch_shape: Sequence[int], rel_center: Optional[Sequence[float]] = None,
             rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Patch-shaped crop (X, Y, Z) float32 of the prepared template.

        Args:
            modality: any alias.
            patch_shape: (X, Y, Z).
            rel_center: relative position (3 floats, 0 = first voxel, 1 = last voxel) of the
                patch centre inside the case (= on the template grid): the crop's voxel
                ``patch_shape // 2`` is template voxel ``round(rel_center * (G - 1))``. None (or
                a position-free bank): a random crop inside the grid (centred if the grid is
                smaller than the patch).
            rng: numpy Generator; None uses the global numpy RNG.

        Parts of the crop outside the template grid are 0 (= background).
        """
        vol = self.get(modality)
        patch = [int(p) for p in patch_shape]
        if len(patch) != vol.ndim:
            raise ValueError(f"patch_shape {patch} does not match the {vol.ndim}-D template")
        return _extract(vol, self._start(vol.shape, patch, rel_center, rng), patch)


# ---------------------------------------------------------------------------- augmentation
class TemplateSubstitutionTransform(ImageOnlyTransform):
    """BrainMVP's template substitution for batchgeneratorsv2 pipelines (per sample).

    With probability ``p_per_sample`` replace k channels of ``data_dict['image']`` (C, X, Y, Z),
    k uniform in 1..min(max_channels, C - 1, number of channels with a template) (never all
    channels), each by the bank's crop of the modality that channel carries. Channels whose
    modality has no template are never chosen. The crop position comes from
    ``data_dict['template_rel_center']`` (3 floats, see :meth:`TemplateBank.crop`) when present,
    else one random position per sample shared by the replaced channels. The segmentation is not
    touched. ``data_dict['substituted_channels']`` lists the replaced channels (sorted; empty when
    none).

    Args:
        bank: a :class:`TemplateBank` in the network's input space (target spacing).
        channel_modalities: modality per channel (any alias; None / unknown = no template).
        p_per_sample: probability that a sample gets any substitution.
        max_channels: at most this many channels per sample (BrainMVP: 3).
        rng: numpy Generator for reproducible tests; None (default) uses the global numpy RNG,
            which nnU-Net seeds per data-augmentation worker.
    """

    def __init__(self, bank: TemplateBank, channel_modalities: Sequence[Optional[str]],
                 p_per_sample: float = 0.5, max_channels: int = 3,
                 rng: Optional[np.random.Generator] = None):
        super().__init__()
        if not 0.0 <= float(p_per_sample) <= 1.0:
            raise ValueError(f"p_per_sample must be in [0, 1], got {p_per_sample}")
        if int(max_channels) < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}")
        self.bank = bank
        self.channel_modalities = [canonical(m) if m is not None and is_known(m) else None
                                   for m in channel_modalities]
        self.p_per_sample = float(p_per_sample)
        self.max_channels = int(max_channels)
        self.rng = rng
        self.eligible = [c for c, m in enumerate(self.channel_modalities) if m is not None and m in bank]

    def __repr__(self) -> str:
        return (f"TemplateSubstitutionTransform(p_per_sample={self.p_per_sample}, max_channels="
                f"{self.max_channels}, channel_modalities={self.channel_modalities}, "
                f"templates={self.bank.modalities})")

    def get_parameters(self, **data_dict) -> dict:
        img = data_dict["image"]
        C = int(img.shape[0])
        if C != len(self.channel_modalities):
            raise ValueError(f"image has {C} channels, channel_modalities lists "
                             f"{len(self.channel_modalities)}: {self.channel_modalities}")
        chosen: List[int] = []
        k_max = min(self.max_channels, C - 1, len(self.eligible))
        if k_max >= 1 and _uniform(self.rng) < self.p_per_sample:
            k = _randint(self.rng, 1, k_max)
            order = (np.random.permutation if self.rng is None else self.rng.permutation)(len(self.eligible))
            chosen = sorted(self.eligible[int(i)] for i in order[:k])
        crops = {}
        if chosen:
            patch = [int(s) for s in img.shape[1:]]
            rel = data_dict.get("template_rel_center")
            if rel is None and not self.bank.position_free:
                rel = self.bank.random_rel_center(patch, self.rng, self.channel_modalities[chosen[0]])
            crops = {c: self.bank.crop(self.channel_modalities[c], patch, rel, self.rng) for c in chosen}
        return {"chosen": chosen, "crops": crops}

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict = super().apply(data_dict, **params)
        data_dict["substituted_channels"] = list(params["chosen"])
        return data_dict

    def _apply_to_image(self, img, chosen: List[int], crops: Dict[int, np.ndarray]):
        for c in chosen:
            if torch.is_tensor(img):
                img[c] = torch.as_tensor(crops[c], dtype=img.dtype, device=img.device)
            else:
                img[c] = crops[c].astype(img.dtype, copy=False)
        return img


# ---------------------------------------------------------------------------- inference fill
class FillResult(tuple):
    """``(images, substituted)`` returned by :func:`fill_missing_channel` (unpacks as a pair),
    with ``.notes`` (list of str): what was done per filled channel, including the fallback."""

    def __new__(cls, images: Dict[int, "object"], substituted: List[int], notes: List[str]):
        obj = super().__new__(cls, (images, substituted))
        obj.notes = notes
        return obj

    @property
    def images(self) -> Dict[int, "object"]:
        return self[0]

    @property
    def substituted(self) -> List[int]:
        return self[1]


def _templates_folder(folder: str) -> str:
    sub = os.path.join(folder, "templates")
    return sub if os.path.isdir(sub) else folder


def _available_templates(folder: str) -> Dict[str, str]:
    out = {}
    for p in sorted(glob.glob(os.path.join(folder, "template_*.nii.gz"))):
        name = os.path.basename(p)[len("template_"):-len(".nii.gz")]
        if is_known(name):
            out[canonical(name)] = p
    return out


def _oriented(img, orient: str = "LPS"):
    import SimpleITK as sitk
    return sitk.DICOMOrient(img, orient)


def _bbox(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)
    return idx.min(0), idx.max(0)


def _bbox_fit(tmpl, tmpl_mask: np.ndarray, ref, ref_mask: np.ndarray) -> np.ndarray:
    """Template values on the reference grid by fitting the template's brain bounding box onto the
    reference foreground bounding box (per-axis scale + shift in index space, after orienting both
    images to LPS so that array axes correspond). Returns an array in SimpleITK order (z, y, x) of
    the reference grid."""
    import SimpleITK as sitk
    t_img = sitk.GetImageFromArray(np.asarray(sitk.GetArrayFromImage(tmpl), np.float32))
    t_img.CopyInformation(tmpl)
    tm_img = sitk.GetImageFromArray(tmpl_mask.astype(np.uint8))
    tm_img.CopyInformation(tmpl)
    rm_img = sitk.GetImageFromArray(ref_mask.astype(np.uint8))
    rm_img.CopyInformation(ref)
    t_o, tm_o, rm_o = _oriented(t_img), _oriented(tm_img), _oriented(rm_img)
    t_arr = sitk.GetArrayFromImage(t_o).astype(np.float64)
    t_lo, t_hi = _bbox(sitk.GetArrayFromImage(tm_o) > 0)
    r_lo, r_hi = _bbox(sitk.GetArrayFromImage(rm_o) > 0)
    # voxel edges of the reference box map onto voxel edges of the template box
    scale = (t_hi - t_lo + 1) / (r_hi - r_lo + 1)
    offset = t_lo - 0.5 + (0.5 - r_lo) * scale
    out = ndimage.affine_transform(t_arr, scale, offset=offset, output_shape=rm_o.GetSize()[::-1],
                                   order=1, mode="constant", cval=0.0)
    o_img = sitk.GetImageFromArray(out.astype(np.float32))
    o_img.CopyInformation(rm_o)
    back = sitk.Resample(o_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(back)


def fill_missing_channel(case_images: Mapping[int, "object"], channel_modalities: Sequence[Optional[str]],
                         bank_nifti_folder: str, min_overlap: float = 0.5, foreground_offset: float = 1.0,
                         mask_tolerance: float = 0.01) -> FillResult:
    """Replace missing channels of one case by their modality templates (inference).

    Args:
        case_images: channel index -> SimpleITK image (3-D), or None for a missing channel.
            Present channels are returned unchanged.
        channel_modalities: modality per channel index (any alias; None = unknown).
        bank_nifti_folder: a bundle folder (its ``templates/`` is used) or a folder holding
            ``template_<modality>.nii.gz``.
        min_overlap: the physical resampling is used when the template's brain covers at least
            this fraction of the case's foreground; otherwise (template not on the case's atlas
            space) the bounding-box fallback is used and said so in ``notes``.
        foreground_offset: added to the min-max normalised template (values in [0, 1]) inside the
            foreground so that every foreground voxel is nonzero (nnU-Net's nonzero mask and
            z-score then treat the channel like the others; the offset itself is removed by the
            z-score).
        mask_tolerance: template brain mask tolerance (:func:`brain_mask`).

    Returns:
        :class:`FillResult` ``(images, substituted)`` (``images``: channel -> SimpleITK image, a
        filled channel being float32 on the grid of the first present channel (the reference),
        template values inside the case foreground (union of the present channels' nonzero voxels,
        holes filled, as nnU-Net's nonzero mask), 0 outside; ``substituted``: filled channel
        indices) with ``.notes``.

    The template is resampled onto the reference grid by physical coordinates (SimpleITK,
    linear, default 0). Fallback (no sufficient physical overlap): the template's brain bounding
    box is fitted onto the reference foreground's bounding box by a per-axis scale + shift in
    index space, both images oriented to LPS first.

    Raises:
        ValueError: no present channel; an empty reference foreground; a missing channel whose
            modality is unknown or has no template (naming channel, modality, templates available).
    """
    import SimpleITK as sitk

    channels = sorted(int(c) for c in case_images)
    if any(c >= len(channel_modalities) or c < 0 for c in channels):
        raise ValueError(f"channels {channels} but channel_modalities has {len(channel_modalities)} entries")
    present = [c for c in channels if case_images[c] is not None]
    missing = [c for c in channels if case_images[c] is None]
    if not present:
        raise ValueError("every channel of the case is missing: at least one image is needed as the reference grid")
    out = {c: case_images[c] for c in channels}
    if not missing:
        return FillResult(out, [], [])
    folder = _templates_folder(bank_nifti_folder)
    available = _available_templates(folder)
    plan = {}
    for c in missing:
        name = channel_modalities[c]
        mod = canonical(name) if name is not None and is_known(name) else None
        if mod is None or mod not in available:
            raise ValueError(f"channel {c} (modality {name if name is not None else 'unknown'}"
                             f"{'' if mod is None or mod == name else ' = ' + mod}) is missing and has no "
                             f"template in {folder}; templates available: {sorted(available) or 'none'}")
        plan[c] = (mod, available[mod])

    ref = case_images[present[0]]
    ref_arr = sitk.GetArrayFromImage(ref)
    fg = np.zeros(ref_arr.shape, bool)
    for c in present:
        img = case_images[c]
        if img.GetSize() == ref.GetSize():
            fg |= sitk.GetArrayFromImage(img) != 0
    fg = ndimage.binary_fill_holes(fg)
    if not fg.any():
        raise ValueError(f"the reference channel {present[0]} has no nonzero voxel: cannot place a template")

    notes: List[str] = []
    for c in missing:
        mod, path = plan[c]
        tmpl = sitk.ReadImage(path, sitk.sitkFloat32)
        t_arr = _minmax(sitk.GetArrayFromImage(tmpl).astype(np.float64))
        t_mask = brain_mask(t_arr, mask_tolerance)
        t_img = sitk.GetImageFromArray(t_arr.astype(np.float32))
        t_img.CopyInformation(tmpl)
        tm_img = sitk.GetImageFromArray(t_mask.astype(np.uint8))
        tm_img.CopyInformation(tmpl)
        on_ref = sitk.GetArrayFromImage(sitk.Resample(t_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                      sitk.sitkFloat32))
        m_on_ref = sitk.GetArrayFromImage(sitk.Resample(tm_img, ref, sitk.Transform(),
                                                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        overlap = float((m_on_ref & fg).sum()) / float(fg.sum())
        if overlap >= min_overlap:
            values = on_ref
            notes.append(f"channel {c} ({mod}): filled with {os.path.basename(path)} resampled by physical "
                         f"coordinates (template brain covers {overlap:.0%} of the case foreground)")
        else:
            if not t_mask.any():
                raise ValueError(f"template {path} is constant: it cannot fill channel {c}")
            values = _bbox_fit(t_img, t_mask, ref, fg)
            msg = (f"channel {c} ({mod}): {os.path.basename(path)} does not overlap the case in physical space "
                   f"(template brain covers {overlap:.0%} of the case foreground, < {min_overlap:.0%}; not "
                   f"atlas-registered?): fitted the template's brain bounding box onto the case's foreground "
                   f"bounding box (scale + shift in index space)")
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        arr = np.where(fg, values + float(foreground_offset), 0.0).astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        out[c] = img
    return FillResult(out, list(missing), notes)
