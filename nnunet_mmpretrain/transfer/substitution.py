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

import json
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage

from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform
from nnunet_mmpretrain.modalities import canonical, is_known
from nnunet_mmpretrain.pretrain.templates import minmax

ArrayLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------- helpers
def _as_numpy(a: ArrayLike) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


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
            vol = minmax(_as_numpy(raw))
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
