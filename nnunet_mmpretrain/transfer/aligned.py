"""Modality templates placed on a preprocessed downstream case, voxel for voxel.

BrainMVP substitutes a channel by its template *aligned with the image* (the whole template
volume before cropping), so the substituted channel's anatomy matches the other channels. In
nnU-Net's world a preprocessed case is the original image transposed, cropped to its nonzero box
and resampled; :class:`CaseTemplates` repeats exactly that on the template: it resamples the
template (a world-space image from the bundle's grid geometry) onto the case's original image
grid (SimpleITK, physical coordinates, linear), transposes it, crops nnU-Net's box and resamples
it to the preprocessed shape. The result overlays the case's channels.

A bundle without geometry (a corpus that is not on one grid: position-free templates) cannot be
placed: :meth:`CaseTemplates.for_case` then returns None and callers fall back to a crop of the
template at a random position (documented as such).

Shapes: (GX, GY, GZ) the template grid (nnU-Net's preprocessed axis order), (X, Y, Z) a
preprocessed case.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from nnunet_mmpretrain.geometry import GridGeometry
from nnunet_mmpretrain.modalities import canonical, is_known


class CaseTemplates:
    """Templates of a bundle, placed on preprocessed cases.

    Args:
        templates: modality -> template volume (GX, GY, GZ) as pretraining saw it.
        geometry: the bundle's ``template_geometry`` dict (None: position-free, cannot place).
        transpose_forward: the downstream plans' ``transpose_forward``.
        cache_size: placed volumes kept per (case, modality) (LRU).
    """

    def __init__(self, templates: Mapping[str, "np.ndarray"], geometry: Optional[dict],
                 transpose_forward: Sequence[int], cache_size: int = 64):
        self.templates = {canonical(m): np.asarray(v, dtype=np.float32) for m, v in templates.items()}
        self.geometry = dict(geometry) if geometry else None
        self.transpose_forward = [int(t) for t in transpose_forward]
        self.cache_size = int(cache_size)
        self._images: Dict[str, object] = {}       # built lazily (SimpleITK images do not cross processes)
        self._cache: "OrderedDict[tuple, np.ndarray]" = OrderedDict()

    @classmethod
    def from_bundle(cls, bundle: Mapping, transpose_forward: Sequence[int]) -> "CaseTemplates":
        return cls({m: t.numpy() if hasattr(t, "numpy") else t for m, t in bundle["templates"].items()},
                   bundle.get("template_geometry"), transpose_forward)

    def __getstate__(self):
        return {**self.__dict__, "_images": {}, "_cache": OrderedDict()}

    @property
    def modalities(self):
        return list(self.templates)

    def has(self, modality: Optional[str]) -> bool:
        return modality is not None and is_known(modality) and canonical(modality) in self.templates

    def _world(self, modality: str):
        if modality not in self._images:
            self._images[modality] = GridGeometry.from_dict(self.geometry).to_image(self.templates[modality])
        return self._images[modality]

    def for_case(self, modality: str, props: dict, shape: Sequence[int], key: Optional[str] = None
                 ) -> Optional[np.ndarray]:
        """The template of ``modality`` on a preprocessed case (``shape`` (X, Y, Z), nnU-Net
        properties ``props`` with ``sitk_stuff``, ``shape_before_cropping``,
        ``bbox_used_for_cropping``) as float32 (X, Y, Z); None when the bundle has no geometry."""
        if self.geometry is None:
            return None
        m = canonical(modality)
        ck = (key, m, tuple(int(s) for s in shape))
        if key is not None and ck in self._cache:
            self._cache.move_to_end(ck)
            return self._cache[ck]
        import SimpleITK as sitk
        from scipy import ndimage
        s = props["sitk_stuff"]
        before = [int(v) for v in props["shape_before_cropping"]]             # transposed order
        inv = np.argsort(self.transpose_forward)
        orig_shape = [before[i] for i in inv]                                 # SimpleITK array order
        ref = sitk.Image([int(v) for v in reversed(orig_shape)], sitk.sitkFloat32)
        ref.SetSpacing([float(v) for v in s["spacing"]])
        ref.SetOrigin([float(v) for v in s["origin"]])
        ref.SetDirection([float(v) for v in s["direction"]])
        on_case = sitk.GetArrayFromImage(sitk.Resample(self._world(m), ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                       sitk.sitkFloat32))
        on_case = np.transpose(on_case, self.transpose_forward)
        box = tuple(slice(int(a), int(b)) for a, b in props["bbox_used_for_cropping"])
        cropped = on_case[box]
        if tuple(cropped.shape) != tuple(shape):
            cropped = ndimage.zoom(cropped, [t / c for t, c in zip(shape, cropped.shape)], order=1, mode="nearest",
                                   grid_mode=True)
            out = np.zeros(tuple(int(v) for v in shape), np.float32)
            sl = tuple(slice(0, min(a, b)) for a, b in zip(cropped.shape, shape))
            out[sl] = cropped[sl]
            cropped = out
        cropped = np.ascontiguousarray(cropped, dtype=np.float32)
        if key is not None:
            self._cache[ck] = cropped
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cropped


class TemplateChannelsDataset:
    """Wraps an nnU-Net dataset: ``load_case`` returns the C image channels followed by C aligned
    template channels (zeros for channels whose modality has no template, and outside the case's
    nonzero region, like nnU-Net's normalised channels), so that nnU-Net's
    patch sampling and spatial augmentation move image and template together. The trainer splits
    them again (:func:`substitute`).

    Args:
        dataset: an nnU-Net dataset (``load_case(key) -> (data, seg, seg_prev, properties)``).
        templates: :class:`CaseTemplates` (with geometry).
        channel_modalities: modality per channel (None / unknown: no template).
    """

    def __init__(self, dataset, templates: CaseTemplates, channel_modalities: Sequence[Optional[str]]):
        self.dataset = dataset
        self.templates = templates
        self.channel_modalities = [canonical(m) if m is not None and is_known(m) else None for m in channel_modalities]

    def __getattr__(self, name):   # identifiers, etc. of the wrapped dataset
        if name.startswith("__") or "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def load_case(self, key):
        data, seg, seg_prev, props = self.dataset.load_case(key)
        data = np.asarray(data[:], dtype=np.float32)
        extra = np.zeros_like(data)
        foreground = (data != 0).any(0)     # as the real channels: 0 outside the case's nonzero region
        for c, m in enumerate(self.channel_modalities):
            if m is not None and self.templates.has(m):
                t = self.templates.for_case(m, props, data.shape[1:], key=key)
                if t is not None:
                    extra[c] = np.where(foreground, t, 0)
        return np.concatenate([data, extra]), seg, seg_prev, props


def draw_substitutions(batch: int, eligible: Sequence[int], num_channels: int, max_channels: int = 3,
                       rng: Optional[np.random.Generator] = None) -> "list[list[int]]":
    """BrainMVP's rule per sample: k ~ U{0..min(max_channels, C - 1, eligible)} channels drawn
    from ``eligible`` (never every channel). With C = 4 and templates for all, 3 in 4 samples get
    at least one channel substituted."""
    rng = rng if rng is not None else np.random.default_rng()
    k_max = min(int(max_channels), int(num_channels) - 1, len(eligible))
    out = []
    for _ in range(batch):
        k = int(rng.integers(0, k_max + 1)) if k_max > 0 else 0
        out.append(sorted(int(c) for c in rng.permutation(list(eligible))[:k]) if k else [])
    return out


def substitute(data, chosen: Sequence[Sequence[int]]):
    """data (B, 2C, X, Y, Z) from :class:`TemplateChannelsDataset` -> (B, C, X, Y, Z) with the
    channels ``chosen[b]`` of sample b replaced by their aligned templates (torch or numpy)."""
    C = data.shape[1] // 2
    out = data[:, :C].clone() if hasattr(data, "clone") else data[:, :C].copy()
    for b, chans in enumerate(chosen):
        for c in chans:
            out[b, c] = data[b, C + c]
    return out
