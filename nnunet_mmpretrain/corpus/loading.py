"""Loading a corpus case with every modality on one grid (the reference modality's), for the
fingerprint and preprocessing; the checks themselves are in :mod:`nnunet_mmpretrain.corpus.validate`."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, Optional, Union

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.corpus.manifest import CorpusCase, CorpusManifest
from nnunet_mmpretrain.corpus.validate import (CorpusValidationError, Grid, _layout_problem,  # noqa: F401
                                               grid_differences, reference_modality as _reference_of)

if TYPE_CHECKING:
    import SimpleITK


def _find_case(manifest: CorpusManifest, case: Union[str, CorpusCase]) -> CorpusCase:
    if isinstance(case, CorpusCase):
        return case
    for c in manifest.cases:
        if c.case_id == case:
            return c
    raise KeyError(f"case {case!r} is not in corpus '{manifest.name}'")


def load_case_on_common_grid(manifest: CorpusManifest, case: Union[str, CorpusCase],
                             reference_modality: Optional[str] = None) -> Dict[str, "SimpleITK.Image"]:
    """Read all modalities of ``case`` (a CorpusCase or its id) as float32 SimpleITK images on the
    grid of ``reference_modality`` (default: :func:`reference_modality` of the case).

    Images already on that grid (within the module tolerances) get its exact geometry copied;
    others are resampled by physical coordinates with linear interpolation, 0 outside the image.
    Returns ``{modality: sitk.Image}`` in vocabulary order.
    """
    import SimpleITK as sitk
    c = _find_case(manifest, case)
    ms = c.modalities
    ref_m = mod.canonical(reference_modality) if reference_modality else _reference_of(ms)
    if ref_m not in c.images:
        raise KeyError(f"case {c.case_id!r} has no {ref_m} image (it has {', '.join(ms)})")

    def read(m):
        p = manifest.path(c, m)
        if not os.path.isfile(p):
            raise CorpusValidationError(f"case {c.case_id}: {p}: {m}: file not found")
        img = sitk.ReadImage(p)
        layout = _layout_problem(img.GetDimension(), img.GetSize(), img.GetNumberOfComponentsPerPixel())
        if layout:
            raise CorpusValidationError(f"case {c.case_id}: {p}: {m}: {layout}")
        return sitk.Cast(img, sitk.sitkFloat32)

    ref = read(ref_m)
    ref_grid = Grid.of(ref)
    out = {}
    for m in ms:
        if m == ref_m:
            out[m] = ref
            continue
        img = read(m)
        if grid_differences(Grid.of(img), ref_grid):
            img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        else:
            img.CopyInformation(ref)
        out[m] = img
    return out
