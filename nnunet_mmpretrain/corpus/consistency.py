"""Checks across the cases of a corpus (each case alone may be fine):

* **the same scan under two ids** -- an image whose voxels (content hash,
  :mod:`nnunet_mmpretrain.content_hash`) equal an image of an earlier case: a copy under new file
  names and a new id, or BraTS 2023 GLI next to BraTS 2021. The later case is a problem (leave it
  out with ``--skip-bad``, keep both with ``--allow-duplicates``);
* **spacing outliers** -- a case whose reference spacing differs from the corpus median by more
  than :data:`SPACING_OUTLIER_FACTOR` on some axis (a 100 mm header among 4 mm scans: nnU-Net
  would resample it to the median spacing, e.g. a 300^3 array from a 12^3 one);
* **orientation outliers of an atlas-registered corpus** -- a manifest declaring
  ``atlas_registered`` promises one voxel grid for every scan (the template start averages the
  scans voxel by voxel); a scan on another grid (mirrored, rotated, other size) is a problem.

Needs at least :data:`MIN_CASES_FOR_OUTLIERS` cases for the spacing check.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain.corpus.manifest import CorpusManifest
from nnunet_mmpretrain.geometry import Grid

SPACING_OUTLIER_FACTOR = 3.0
MIN_CASES_FOR_OUTLIERS = 3
Problems = Dict[str, List[Tuple[str, str]]]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def duplicate_problems(cases: Sequence[Tuple[str, Sequence[Tuple[str, str, str]]]]) -> Problems:
    """``cases``: (case id, [(modality, path, hash)]) in manifest order. The later case of every
    image seen twice, with the earlier one named."""
    seen: Dict[str, Tuple[str, str, str]] = {}
    out: Problems = {}
    for cid, images in cases:
        for m, p, h in images:
            if h in seen and seen[h][0] != cid:
                other, om, op = seen[h]
                out.setdefault(cid, []).append((p, (
                    f"{m}: same voxels as case {other!r} ({om}, {op}): one scan under two ids; re-run with "
                    f"--skip-bad to keep only the first, or --allow-duplicates to keep both")))
                break
        if cid not in out:
            for m, p, h in images:
                seen.setdefault(h, (cid, m, p))
    return out


def spacing_problems(grids: Mapping[str, Tuple[str, str, Grid]]) -> Problems:
    """``grids``: case id -> (modality, path, grid) of its reference image."""
    if len(grids) < MIN_CASES_FOR_OUTLIERS:
        return {}
    sp = np.array([g.spacing for _, _, g in grids.values()], dtype=float)
    med = np.median(sp, axis=0)
    out: Problems = {}
    for (cid, (m, p, g)), s in zip(grids.items(), sp):
        ratio = np.maximum(s / med, med / np.maximum(s, 1e-12))
        if float(ratio.max()) > SPACING_OUTLIER_FACTOR:
            out[cid] = [(p, f"{m}: spacing {_fmt(s)} mm is {ratio.max():.0f}x off the corpus median {_fmt(med)} mm "
                            f"(nnU-Net would resample it to the median spacing, about "
                            f"{'x'.join(str(int(round(n))) for n in np.asarray(g.size) * s / med)} voxels): check "
                            f"its header, or leave the case out (--skip-bad)")]
    return out


def atlas_problems(grids: Mapping[str, Sequence[Tuple[str, str, Grid]]]) -> Problems:
    """``grids``: case id -> [(modality, path, grid)] of every image, for a corpus declared
    atlas-registered: every scan must lie on the first scan's grid."""
    first = None
    out: Problems = {}
    for cid, images in grids.items():
        for m, p, g in images:
            if first is None:
                first = (cid, m, g)
                continue
            diff = g.mismatch(first[2], tol=1e-2)
            if diff:
                mirrored = ("; mirrored or rotated" if "direction" in diff else "")
                out.setdefault(cid, []).append((p, (
                    f"{m}: the manifest declares atlas_registered but this scan is not on the atlas grid of "
                    f"case {first[0]!r} ({diff}{mirrored}): resample it onto the atlas, or set "
                    f"atlas_registered to false")))
    return out


def add_problems(manifest: CorpusManifest, results: List[dict], reference: Dict[str, str],
                 allow_duplicates: bool = False) -> None:
    """Add the problems across cases to the per-case ``results`` of corpus validation (cases
    already bad take no part; ``reference``: case id -> reference modality)."""
    fine = [r for r in results if not r["problems"]]
    found = {} if allow_duplicates else duplicate_problems([(r["case_id"], r["images"]) for r in fine])
    paths = {r["case_id"]: {m: p for m, p, _ in r["images"]} for r in fine}
    ref = {r["case_id"]: (reference[r["case_id"]], paths[r["case_id"]].get(reference[r["case_id"]], ""),
                          r["grids"][reference[r["case_id"]]]) for r in fine if reference[r["case_id"]] in r["grids"]}
    for cid, probs in spacing_problems(ref).items():
        found.setdefault(cid, []).extend(probs)
    if manifest.atlas_registered:
        every = {r["case_id"]: [(m, paths[r["case_id"]].get(m, ""), g) for m, g in r["grids"].items()] for r in fine}
        for cid, probs in atlas_problems(every).items():
            found.setdefault(cid, []).extend(probs)
    for r in fine:
        r["problems"] = found.get(r["case_id"], [])
