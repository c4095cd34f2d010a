"""Small I/O helpers: atomic writes so nothing is left half-written, NIfTI writing."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np


@contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path beside ``final_path``; rename it into place only on success.

    The temporary name keeps the final file's extension(s) so writers that look at the suffix
    (SimpleITK, nibabel, torch) behave the same.
    """
    folder = os.path.dirname(os.path.abspath(final_path)) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(final_path)
    ext = base[base.index("."):] if "." in base else ""
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + base.split(".")[0] + "_", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(obj, path: str, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_nifti(array_zyx: np.ndarray, path: str, spacing_xyz=(1.0, 1.0, 1.0),
                origin_xyz=(0.0, 0.0, 0.0), direction=None) -> None:
    """Write a 3D array indexed (z, y, x) as NIfTI through SimpleITK, atomically.

    ``spacing_xyz`` / ``origin_xyz`` are in SimpleITK's (x, y, z) order, ``direction`` a flat
    9-tuple (identity when None).
    """
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in direction))
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, tmp, useCompression=True)
