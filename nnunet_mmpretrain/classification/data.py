"""Whole-case batches for classification from nnU-Net's preprocessed data.

Training and in-training validation reuse nnU-Net's :class:`nnUNetDataLoader` (its crop / pad
and its augmentation pipeline, run on the whole case with the planned input size as patch size)
and add the class of every sampled case. Training draws cases class-balanced (every class equally
often; nnU-Net's ``sampling_probabilities``). Final validation and prediction centre the case
in the input size (:func:`crop_or_pad`), exactly where the loader puts a case without
augmentation.

Batch: ``data`` float32 (B, C, X, Y, Z), ``target`` int16 segmentation (B, 1, X, Y, Z) (unused),
``keys`` case ids, ``class`` int64 (B,).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def balanced_probabilities(identifiers: Sequence[str], labels: Mapping[str, int]) -> np.ndarray:
    """Per-case sampling probability (N,) giving each class present the same total probability."""
    ys = np.array([labels[k] for k in identifiers])
    counts = {c: int((ys == c).sum()) for c in np.unique(ys)}
    p = np.array([1.0 / (len(counts) * counts[y]) for y in ys], dtype=float)
    return p / p.sum()


def stratified_splits(labels: Mapping[str, int], n_splits: int = 5, seed: int = 12345) -> List[dict]:
    """nnU-Net's ``splits_final.json`` format ([{"train": [...], "val": [...]}, ...]) with folds
    stratified by class (sklearn's StratifiedKFold; nnU-Net's own split ignores classes, so a small
    fold can hold a single class). Fewer folds when the rarest class has fewer than ``n_splits`` cases."""
    from sklearn.model_selection import StratifiedKFold
    keys = sorted(labels)
    y = np.array([labels[k] for k in keys])
    k = max(2, min(n_splits, int(np.bincount(y).min())))
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [{"train": [keys[i] for i in tr], "val": [keys[i] for i in va]} for tr, va in skf.split(keys, y)]


def centre_bbox(shape: Sequence[int], size: Sequence[int]) -> List[List[int]]:
    """Bounding box [[lo, hi], ...] of ``size`` centred on ``shape`` (lo < 0 pads, hi > shape pads),
    the position nnUNetDataLoader gives a case without random offset."""
    lo = [-((int(z) - int(s)) // 2) for s, z in zip(shape, size)]
    return [[a, a + int(z)] for a, z in zip(lo, size)]


def crop_or_pad(data: np.ndarray, size: Sequence[int], value: float = 0.0) -> np.ndarray:
    """(C, X, Y, Z) -> (C, *size): centre crop on axes larger than ``size``, zero padding (0 is the
    background after nnU-Net's normalisation) on smaller ones."""
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
    bbox = centre_bbox(data.shape[1:], size)
    return np.asarray(crop_and_pad_nd(np.asarray(data), bbox, value), dtype=np.float32)


class ClassificationLoader(nnUNetDataLoader):
    """nnUNetDataLoader whose batches also carry ``class`` (B,) int64."""

    def __init__(self, data, batch_size: int, patch_size, final_patch_size, label_manager,
                 labels: Mapping[str, int], balanced: bool = True, transforms=None):
        probs = balanced_probabilities(list(data.identifiers), labels) if balanced else None
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=probs, transforms=transforms)
        self.labels: Dict[str, int] = {k: int(labels[k]) for k in data.identifiers}

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch["class"] = torch.tensor([self.labels[k] for k in batch["keys"]], dtype=torch.long)
        return batch
