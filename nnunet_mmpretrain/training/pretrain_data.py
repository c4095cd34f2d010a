"""Patch sampling from a preprocessed corpus for pretraining.

Each sample is one random case, one random patch position and one (target m, partner n != m)
pair drawn from the modalities *that case has* (its properties list them in channel order), so
no channel is ever invented. A case smaller than the patch is zero-padded (0 is the background
after nnU-Net's z-score on the brain mask). The patch's position on the canonical (atlas) grid
follows from nnU-Net's crop box, the resampling factor and the patch offset.

Batch (numpy): ``target`` / ``partner`` float32 (B, 1, X, Y, Z) (partner zeros where the case has
a single modality), ``m_idx`` / ``n_idx`` int64 (B,) vocabulary slots (-1: no partner),
``starts`` int64 (B, 3) grid position of the patch's first voxel, ``subject`` and ``keys`` lists;
with ``all_modalities=True`` also ``stack`` float32 (B, K, X, Y, Z), every modality of the case at
the same patch (K = the most modalities any corpus case has; zero padding), and ``stack_idx`` int64
(B, K) their vocabulary slots (-1 = padding).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader

from nnunet_mmpretrain.geometry import grid_geometry
from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.pretrain.cross_modal import draw_pairs


class CorpusPatchLoader(DataLoader):
    """batchgenerators DataLoader (works with nnU-Net's multi-threaded augmenters)."""

    def __init__(self, dataset, identifiers: Sequence[str], properties: Dict[str, dict], batch_size: int,
                 patch_size: Sequence[int], transpose_forward: Sequence[int], target_spacing: Sequence[float],
                 allow_single: bool = True, seed: Optional[int] = None, all_modalities: bool = False):
        super().__init__(list(identifiers), batch_size, 1, None, True, False, True)
        self.dataset = dataset
        self.identifiers = list(identifiers)
        self.props = properties
        self.patch = np.array(patch_size, dtype=np.int64)
        self.tf = list(transpose_forward)
        self.spacing = list(target_spacing)
        self.allow_single = allow_single
        self.stack_size = max(len(self.props[k]["modalities"]) for k in self.identifiers) if all_modalities else 0
        self._seed = seed
        self._reseed(np.random.default_rng(seed))
        self.offsets = {k: grid_geometry(self.props[k], self.tf, self.spacing)[0] for k in self.identifiers}

    def _reseed(self, rng) -> None:
        self.rng = rng
        self._gen_seed = int(self.rng.integers(2 ** 31))
        self._torch_gen = None   # made in the worker: a Generator pickles its state through shared memory

    def set_thread_id(self, thread_id: int) -> None:
        """Called by nnU-Net's augmenter in each worker process, which all start from a copy of this
        loader: without a stream of its own every worker would draw the same cases, patches and pairs,
        so the trainer would see each batch once per worker."""
        super().set_thread_id(thread_id)
        self._reseed(np.random.default_rng(None if self._seed is None else [self._seed, 1 + int(thread_id)]))

    def generate_train_batch(self):
        keys = [self.identifiers[i] for i in self.rng.integers(len(self.identifiers), size=self.batch_size)]
        mods = [self.props[k]["modalities"] for k in keys]
        if self._torch_gen is None:
            self._torch_gen = torch.Generator().manual_seed(self._gen_seed)
        pairs = draw_pairs(mods, self._torch_gen, allow_single=self.allow_single, case_ids=keys)
        P = tuple(int(p) for p in self.patch)
        target = np.zeros((len(keys), 1) + P, np.float32)
        partner = np.zeros_like(target)
        starts = np.zeros((len(keys), 3), np.int64)
        stack = np.zeros((len(keys), self.stack_size) + P, np.float32)
        stack_idx = np.full((len(keys), self.stack_size), -1, np.int64)
        for b, (k, (m, n)) in enumerate(zip(keys, pairs)):
            data = self.dataset.load_case(k)[0]
            shape = np.array(data.shape[1:])
            lo = np.array([self.rng.integers(0, max(s - p, 0) + 1) for s, p in zip(shape, self.patch)])
            hi = np.minimum(lo + self.patch, shape)
            pad = (self.patch - (hi - lo)) // 2   # centre a case smaller than the patch
            src = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi))
            dst = tuple(slice(int(d), int(d + c - a)) for d, a, c in zip(pad, lo, hi))
            ch = mods[b]
            target[(b, 0) + dst] = data[(ch.index(m),) + src]
            if n is not None:
                partner[(b, 0) + dst] = data[(ch.index(n),) + src]
            starts[b] = self.offsets[k] + lo - pad
            if self.stack_size:
                stack[(b, slice(0, len(ch))) + dst] = data[(slice(0, len(ch)),) + src]
                stack_idx[b, :len(ch)] = [MODALITIES.index(c) for c in ch]
        out = {
            "target": target, "partner": partner, "starts": starts, "keys": keys,
            "m_idx": np.array([MODALITIES.index(m) for m, _ in pairs], np.int64),
            "n_idx": np.array([MODALITIES.index(n) if n is not None else -1 for _, n in pairs], np.int64),
            "subject": [self.props[k].get("subject", k) for k in keys],
        }
        if self.stack_size:
            out.update(stack=stack, stack_idx=stack_idx)
        return out
