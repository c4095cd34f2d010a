"""Corpus mean of each modality on the canonical (template) grid: the starting value of the
learnable modality templates, so that the template fill is meaningful from the first step.

Every preprocessed case is placed on the grid at its crop offset
(:func:`nnunet_mmpretrain.geometry.grid_geometry`); a voxel's mean is over the cases of that
modality that cover it (background voxels count: they are 0 after nnU-Net's z-score on the brain
mask). Computed once per data folder and stored beside the preprocessed corpus as
``mmpretrain_means_<data identifier>.npz`` (one array per modality + ``grid``); the pretraining
trainer reads it (and computes it when it is missing, e.g. for a corpus preprocessed by an older
version).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Sequence

import numpy as np

from nnunet_mmpretrain.geometry import grid_geometry, template_grid_shape
from nnunet_mmpretrain.io_utils import atomic_path

log = logging.getLogger(__name__)


def means_file(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    """Where the means of one data folder are stored."""
    return os.path.join(preprocessed_dataset_folder, f"mmpretrain_means_{data_identifier}.npz")


def corpus_means(load_case, properties: Dict[str, dict], transpose_forward: Sequence[int],
                 target_spacing: Sequence[float], grid: Sequence[int]) -> Dict[str, np.ndarray]:
    """modality -> mean volume (GX, GY, GZ) float32 on ``grid``.

    Args:
        load_case: ``key -> (C, X, Y, Z) array`` of a preprocessed case (channels in the order of
            ``properties[key]['modalities']``).
        properties: case key -> nnU-Net properties with ``modalities``.
        transpose_forward, target_spacing: of the plans / configuration.
        grid: the canonical grid shape.
    """
    grid = tuple(int(g) for g in grid)
    sums: Dict[str, np.ndarray] = {}
    counts: Dict[str, np.ndarray] = {}
    for key in sorted(properties):
        props = properties[key]
        data = np.asarray(load_case(key))
        off = grid_geometry(props, transpose_forward, target_spacing)[0]
        src, dst = [], []
        for o, s, g in zip(off, data.shape[1:], grid):
            a, b = max(int(o), 0), min(int(o) + s, g)
            if b <= a:
                break
            dst.append(slice(a, b))
            src.append(slice(a - int(o), b - int(o)))
        else:
            for c, m in enumerate(props["modalities"]):
                if m not in sums:
                    sums[m] = np.zeros(grid, np.float64)
                    counts[m] = np.zeros(grid, np.float32)
                sums[m][tuple(dst)] += data[(c, *src)]
                counts[m][tuple(dst)] += 1
    return {m: (sums[m] / np.maximum(counts[m], 1)).astype(np.float32) for m in sums}


def load_or_compute_means(preprocessed_dataset_folder: str, data_identifier: str, dataset_class,
                          properties: Dict[str, dict], transpose_forward, target_spacing, grid
                          ) -> Dict[str, np.ndarray]:
    """The stored means when they exist for this grid, else computed (and stored, atomically)."""
    path = means_file(preprocessed_dataset_folder, data_identifier)
    grid = [int(g) for g in grid]
    if os.path.isfile(path):
        with np.load(path) as z:
            if [int(g) for g in z["grid"]] == grid and all(f"mean_{m}" in z for p in properties.values()
                                                           for m in p["modalities"]):
                return {k[len("mean_"):]: z[k] for k in z.files if k.startswith("mean_")}
        log.info("corpus means in %s are for another grid or corpus: recomputing", path)
    folder = os.path.join(preprocessed_dataset_folder, data_identifier)
    ds = dataset_class(folder, sorted(properties))
    log.info("computing the corpus mean of each modality on the template grid %s (%d cases)", grid, len(properties))
    means = corpus_means(lambda k: ds.load_case(k)[0][:], properties, transpose_forward, target_spacing, grid)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, grid=np.array(grid), **{f"mean_{m}": v for m, v in means.items()})
    return means


def means_for_configuration(plans_file: str, configuration: str) -> Dict[str, np.ndarray]:
    """Compute (or read) the means of one configuration of a preprocessed corpus's plans."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(plans_file)
    cm = pm.get_configuration(configuration)
    pre_dir = os.path.dirname(os.path.abspath(plans_file))
    folder = os.path.join(pre_dir, cm.data_identifier)
    cls = infer_dataset_class(folder)
    props = {k: load_pickle(os.path.join(folder, k + ".pkl")) for k in cls.get_identifiers(folder)}
    grid = template_grid_shape(props, pm.transpose_forward, cm.spacing)
    return load_or_compute_means(pre_dir, cm.data_identifier, cls, props, pm.transpose_forward, cm.spacing, grid)
