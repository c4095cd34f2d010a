"""ISLES 2022: FLAIR resampled into DWI space by physical coordinates."""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from nnunet_mmpretrain.conversion import fakes as F, isles2022


def test_isles_flair_lands_on_the_right_dwi_voxels(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_isles2022(rel, n=2)
    s = isles2022.convert(rel, raw, progress=False)
    assert s.converted == ids and s.files["resampled"] == 2 and s.files["linked"] == 4
    folder = os.path.join(raw, "Dataset528_ISLES2022")
    F.verify_fast(folder)

    flair = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{ids[0]}_0002.nii.gz"))
    dwi = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{ids[0]}_0000.nii.gz"))
    assert flair.GetSize() == dwi.GetSize() == (12, 12, 10)
    assert np.allclose(flair.GetSpacing(), F.ISLES_DWI["spacing"]) and np.allclose(flair.GetOrigin(), F.ISLES_DWI["origin"])
    a = sitk.GetArrayFromImage(flair)  # (z, y, x)
    # physical centre of every DWI voxel, compared with the cube (margin: one FLAIR voxel)
    sp, org = np.array(F.ISLES_DWI["spacing"]), np.array(F.ISLES_DWI["origin"])
    z, y, x = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    phys = [org[0] + sp[0] * x, org[1] + sp[1] * y, org[2] + sp[2] * z]
    margin = 1.5
    inside = np.ones(a.shape, bool)
    outside = np.zeros(a.shape, bool)
    for p, (lo, hi) in zip(phys, F.ISLES_CUBE_MM):
        inside &= (p >= lo + margin) & (p <= hi - margin)
        outside |= (p <= lo - margin) | (p >= hi + margin)
    assert inside.sum() >= 8 and outside.sum() > 500
    assert np.allclose(a[inside], F.ISLES_CUBE_VALUE, atol=1e-3)
    assert np.allclose(a[outside], 0, atol=1e-3)
    # e.g. DWI voxel (x=5, y=5, z=4) is at (10, 10, 8) mm: the cube's centre
    assert abs(a[4, 5, 5] - F.ISLES_CUBE_VALUE) < 1e-3
    # a plain index copy of the FLAIR array would have put the cube elsewhere
    raw_flair = F.isles_flair_array()
    assert raw_flair[4, 5, 5] == 0

    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{ids[0]}.nii.gz")))
    assert lab.sum() == 3 * 4 * 4 and set(np.unique(lab)) == {0, 1}


def test_isles_rawdata_layout_and_missing_flair(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_isles2022(rel, n=2, rawdata=True)
    flair = os.path.join(rel, "ISLES-2022", "rawdata", ids[1], "ses-0001", "anat", f"{ids[1]}_ses-0001_FLAIR.nii.gz")
    os.remove(flair)
    s = isles2022.convert(rel, raw, progress=False)
    assert s.converted == ids[:1]
    assert "FLAIR" in s.problems[ids[1]] and flair in s.problems[ids[1]]
    s = isles2022.convert(rel, raw, dataset_id=538, name="ISLESdwi", channels=["dwi", "adc"], progress=False)
    assert s.converted == ids
    F.verify_fast(os.path.join(raw, "Dataset538_ISLESdwi"))
