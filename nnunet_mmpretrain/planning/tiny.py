"""Small nnU-Net configurations for tests, the demo and CPU machines.

A tiny configuration is added to an existing plans file next to its parent (``3d_fullres`` by
default) with ``"inherits_from"``, so it reuses the parent's preprocessed data: only the patch,
batch size and network width/depth change. The architecture block is rewritten in full (nnU-Net
merges configurations shallowly), keeping the parent's network class, so a ResEnc parent gives a
ResEnc child.
"""
from __future__ import annotations

import json
from copy import deepcopy
from typing import Sequence

from nnunet_mmpretrain.io_utils import atomic_write_json


def shrink_architecture(arch: dict, features: Sequence[int], strides: Sequence[Sequence[int]]) -> dict:
    """Copy of a plans ``architecture`` block with ``len(features)`` stages.

    Per-stage list arguments (kernel sizes, convolutions / blocks per stage) are truncated to the
    new depth, decoder lists to depth - 1; features and strides are replaced.
    """
    arch = deepcopy(arch)
    kw = arch["arch_kwargs"]
    old_n = int(kw["n_stages"])
    n = len(features)
    if n > old_n:
        raise ValueError(f"--features gives {n} stages but the parent configuration's network has {old_n} "
                         f"(small images): give at most {old_n} --features values")
    if len(strides) != n:
        raise ValueError(f"{n} stages need {n} strides, got {len(strides)}")
    for k, v in list(kw.items()):
        if isinstance(v, (list, tuple)) and k not in ("features_per_stage", "strides"):
            if len(v) == old_n:
                kw[k] = list(v)[:n]
            elif len(v) == old_n - 1:
                kw[k] = list(v)[: n - 1]
    kw["n_stages"] = n
    kw["features_per_stage"] = [int(f) for f in features]
    kw["strides"] = [[int(s) for s in st] for st in strides]
    return arch


def default_strides(patch_size: Sequence[int], n_stages: int) -> list:
    """Stride 1 for the first stage, then 2 on every axis that stays >= 4 voxels."""
    strides = [[1] * len(patch_size)]
    size = list(patch_size)
    for _ in range(n_stages - 1):
        st = [2 if s // 2 >= 4 else 1 for s in size]
        size = [s // t for s, t in zip(size, st)]
        strides.append(st)
    return strides


def check_tiny(patch_size: Sequence[int], features: Sequence[int], batch_size: int) -> list:
    """ValueError (one line, with the fix) for a configuration nnU-Net could not train: features
    and batch must be positive, each patch axis divisible by the product of its strides (the
    encoder halves it that often). Returns the strides."""
    feats = [int(f) for f in features]
    if not feats or min(feats) < 1:
        raise ValueError(f"--features {' '.join(map(str, feats))}: every stage needs at least 1 feature "
                         f"(e.g. --features 8 16 32).")
    if int(batch_size) < 1:
        raise ValueError(f"--batch {batch_size}: the batch size must be at least 1.")
    if len(patch_size) != 3 or min(int(p) for p in patch_size) < 8:
        raise ValueError(f"--patch {' '.join(map(str, patch_size))}: three sizes of at least 8 voxels "
                         f"are needed (e.g. --patch 32 32 32).")
    strides = default_strides(patch_size, len(feats))
    for axis, p in enumerate(patch_size):
        div = 1
        for st in strides:
            div *= st[axis]
        if int(p) % div:
            ok = max(div, int(p) // div * div)
            raise ValueError(f"--patch {' '.join(map(str, patch_size))}: {p} (axis {axis}) is not divisible "
                             f"by {div}, the product of the strides of the {len(feats)} stages on that axis; "
                             f"use a multiple of {div} (e.g. {ok}) or fewer --features.")
    return strides


def add_tiny_configuration(plans_file: str, name: str = "3d_tiny", parent: str = "3d_fullres",
                           patch_size: Sequence[int] = (32, 32, 32), features: Sequence[int] = (8, 16, 32),
                           batch_size: int = 2) -> dict:
    """Add (or replace) configuration ``name`` in ``plans_file``; returns the new configuration."""
    with open(plans_file) as f:
        plans = json.load(f)
    if parent not in plans["configurations"]:
        raise KeyError(f"{plans_file} has no configuration {parent!r} (has "
                       f"{', '.join(plans['configurations'])})")
    par = plans["configurations"][parent]
    while "architecture" not in par and "inherits_from" in par:
        par = plans["configurations"][par["inherits_from"]]
    strides = check_tiny(patch_size, features, batch_size)
    conf = {
        "inherits_from": parent,
        "patch_size": [int(p) for p in patch_size],
        "batch_size": int(batch_size),
        "architecture": shrink_architecture(par["architecture"], features, strides),
    }
    plans["configurations"][name] = conf
    atomic_write_json(plans, plans_file)
    return conf
