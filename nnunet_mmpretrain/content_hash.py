"""Content hashes of images: the same scan under two ids, whatever its file name, format or dtype.

:func:`image_hash` is SHA-256 over the shape and the voxels cast to float32 (the benchmark's
leakage guard compares images the same way). :class:`HashCache` keeps hashes in a JSON file keyed
by path, size and modification time, so a corpus extended source by source hashes each file once.
:func:`first_owner` finds, in order, the items whose images were already seen under an earlier
item (converters and corpus validation keep the first).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_write_json


def image_hash(path: str) -> str:
    """SHA-256 of an image's shape and voxels as float32 (file format and dtype do not matter)."""
    try:
        import nibabel as nib
        arr = np.asanyarray(nib.load(path).dataobj)
    except Exception:  # formats nibabel does not read (nrrd, mha): SimpleITK
        import SimpleITK as sitk
        arr = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose()
    return array_hash(arr)


def array_hash(arr: np.ndarray) -> str:
    """SHA-256 of an array's shape and values as float32 ((x, y, z) order for images, as nibabel
    reads them: a SimpleITK array (z, y, x) is passed transposed)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class HashCache:
    """Image hashes remembered in ``path`` (JSON; None: in memory only), keyed by the file's path
    (relative to ``root`` when given, so a folder built aside and swapped in keeps its hashes),
    size and modification time."""

    def __init__(self, path: Optional[str] = None, root: Optional[str] = None):
        self.path, self.root, self.entries = path, root, {}
        if path and os.path.isfile(path):
            try:
                with open(path) as f:
                    self.entries = dict(json.load(f))
            except (OSError, ValueError, TypeError):
                self.entries = {}

    def get(self, image: str) -> str:
        st = os.stat(image)
        key = os.path.relpath(image, self.root) if self.root else os.path.abspath(image)
        hit = self.entries.get(key)
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        h = image_hash(image)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h}
        return h

    def save(self) -> None:
        if self.path:
            atomic_write_json(self.entries, self.path)


def first_owner(items: Iterable[Tuple[str, Sequence[Tuple[str, str]]]], hashes: Dict[str, str]
                ) -> Dict[str, Tuple[str, str, str]]:
    """``items``: (id, [(what, path)]) in order of precedence; ``hashes``: path -> hash. Returns
    id -> (its path, earlier id, that id's path) for every id holding an image already seen
    under an earlier id (the first such image)."""
    seen: Dict[str, Tuple[str, str]] = {}
    out: Dict[str, Tuple[str, str, str]] = {}
    for item, images in items:
        mine: List[Tuple[str, str]] = []
        for _, p in images:
            h = hashes.get(p)
            if h is None:
                continue
            if h in seen and seen[h][0] != item and item not in out:
                out[item] = (p, seen[h][0], seen[h][1])
            mine.append((h, p))
        if item not in out:  # a duplicate is dropped: its images do not count as seen
            for h, p in mine:
                seen.setdefault(h, (item, p))
    return out
