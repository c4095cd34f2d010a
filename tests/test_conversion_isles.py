"""ISLES 2022: FLAIR rigidly registered onto the DWI (default) or resampled by scanner coordinates
(``register=False``); registration metrics per case; failed sanity checks reported, not written.

The registration fake is a head phantom defined in physical space (scalp, brain, ventricles, a
lesion; different contrasts in DWI and FLAIR, so that only mutual information can align them).
The FLAIR is sampled on its own grid *and* through a rigid movement of the patient (9 deg about z,
-6 deg about x, 8.8 mm shift), as between two acquisitions of one session.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.cli import convert as cli
from nnunet_mmpretrain.conversion import isles2022
import release_fakes as F

# ---------------------------------------------------------------------------- head phantom
#: ellipsoids (centre mm, semi-axes mm, (DWI, FLAIR) intensity); later ones paint over earlier ones
HEAD = (((0, 0, 0), (44, 52, 40), (60, 420)),       # scalp
        ((0, 0, 2), (38, 46, 34), (300, 210)),      # brain
        ((-8, 4, 6), (6, 14, 8), (90, 40)),         # ventricles
        ((8, 4, 6), (6, 14, 8), (90, 40)),
        ((16, -18, -6), (8, 8, 7), (750, 380)))     # stroke lesion (bright in both)
DWI = dict(size=(48, 56, 44), spacing=(2.0, 2.0, 2.0), origin=(-47.0, -55.0, -43.0))
FLAIR = dict(size=(72, 84, 32), spacing=(1.4, 1.4, 3.0), origin=(-50.0, -58.0, -46.0))


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {"z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
            "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]])}[axis]


MOVE_R, MOVE_T = _rot("z", 9) @ _rot("x", -6), np.array([5.0, -6.0, 4.0])


def head(size, spacing, origin, contrast: int, moved: bool = False, scale: float = 1.0) -> sitk.Image:
    """The phantom sampled on a grid (``contrast`` 0 DWI, 1 FLAIR); ``moved``: through the rigid
    patient movement; ``scale`` shrinks the anatomy (a wrong scan)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    p = np.asarray(origin) + idx * np.asarray(spacing)
    if moved:
        p = p @ MOVE_R.T + MOVE_T
    v = np.zeros(len(p))
    for c, ax, vals in HEAD:
        d = np.sqrt((((p - np.asarray(c)) / (np.asarray(ax) * scale)) ** 2).sum(1))
        w = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * 12.0, -50, 50)))
        v = v * (1 - w) + vals[contrast] * w
    img = sitk.GetImageFromArray(np.ascontiguousarray(v.reshape(size).transpose(2, 1, 0)).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def fake_isles_heads(root: str, wrong_flair: bool = False):
    """``root/ISLES-2022`` in the release layout (BIDS; masks in derivatives/, 0/1 on the DWI grid)
    with one case, two with ``wrong_flair`` (the second FLAIR shows a far smaller head elsewhere)."""
    base = os.path.join(root, "ISLES-2022")
    subs = []
    for i in range(2 if wrong_flair else 1):
        sub, ses = f"sub-strokecase{i + 1:04d}", "ses-0001"
        d = os.path.join(base, sub, ses)
        os.makedirs(os.path.join(d, "dwi"))
        os.makedirs(os.path.join(d, "anat"))
        dwi = head(**DWI, contrast=0)
        sitk.WriteImage(dwi, os.path.join(d, "dwi", f"{sub}_{ses}_dwi.nii.gz"))
        sitk.WriteImage(sitk.Cast(dwi * 2.5, sitk.sitkFloat32), os.path.join(d, "dwi", f"{sub}_{ses}_adc.nii.gz"))
        flair = head(**FLAIR, contrast=1, moved=True) if i == 0 else \
            head(**dict(FLAIR, origin=(60.0, 60.0, 40.0)), contrast=1, scale=0.3)
        sitk.WriteImage(flair, os.path.join(d, "anat", f"{sub}_{ses}_FLAIR.nii.gz"))
        msk = sitk.Cast(dwi > 500, sitk.sitkUInt8)
        os.makedirs(os.path.join(base, "derivatives", sub, ses))
        sitk.WriteImage(msk, os.path.join(base, "derivatives", sub, ses, f"{sub}_{ses}_msk.nii.gz"))
        subs.append(sub)
    return subs


def corr(a: sitk.Image, b: sitk.Image) -> float:
    return float(np.corrcoef(sitk.GetArrayFromImage(a).ravel(), sitk.GetArrayFromImage(b).ravel())[0, 1])


def test_isles_registers_flair_onto_dwi(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    sub = fake_isles_heads(rel)[0]
    s = isles2022.convert(rel, raw, progress=False)
    assert s.converted == [sub] and s.files["registered"] == 1 and s.files["resampled"] == 0
    folder = os.path.join(raw, "Dataset528_ISLES2022")
    F.verify_fast(folder)
    truth = head(**DWI, contrast=1)  # the FLAIR contrast of the DWI-space anatomy
    registered = sitk.ReadImage(os.path.join(folder, "imagesTr", f"{sub}_0002.nii.gz"))
    assert registered.GetSize() == truth.GetSize() and np.allclose(registered.GetOrigin(), DWI["origin"])
    s2 = isles2022.convert(rel, raw, dataset_id=539, name="ISLESnoreg", register=False, progress=False)
    assert s2.files["registered"] == 0 and s2.files["resampled"] == 1
    plain = sitk.ReadImage(os.path.join(raw, "Dataset539_ISLESnoreg", "imagesTr", f"{sub}_0002.nii.gz"))
    c_reg, c_plain = corr(registered, truth), corr(plain, truth)
    assert c_reg > 0.97 and c_reg > c_plain + 0.08, (c_reg, c_plain)
    # the lesion mask (DWI space) now marks the FLAIR lesion
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", f"{sub}.nii.gz")))
    a_reg, a_plain = sitk.GetArrayFromImage(registered), sitk.GetArrayFromImage(plain)
    assert a_reg[lab == 1].mean() > 340 and a_reg[lab == 1].mean() > a_plain[lab == 1].mean() + 30
    # metrics per case: summary, report, registration.csv, dataset.json
    m = s.case_info[sub]["registration"]["FLAIR image"]
    assert m["metric_final"] < m["metric_initial"] and m["coverage_final"] >= 0.95
    assert 7 < m["rotation_deg"] < 14, m
    assert "registration: 1 image(s) registered" in s.report()
    with open(os.path.join(folder, "registration.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["image"]) for r in rows] == [(sub, "FLAIR image")]
    assert float(rows[0]["metric_final"]) == pytest.approx(m["metric_final"], abs=1e-3)
    assert not os.path.exists(os.path.join(raw, "Dataset539_ISLESnoreg", "registration.csv"))
    # a resumed run keeps the table
    s3 = isles2022.convert(rel, raw, progress=False)
    assert s3.already_done == [sub]
    with open(os.path.join(folder, "registration.csv")) as f:
        assert len(list(csv.DictReader(f))) == 1


def test_isles_failed_registration_is_reported_not_written(tmp_path, capsys):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    good, bad = fake_isles_heads(rel, wrong_flair=True)
    assert cli.main(["isles2022", rel, "-o", raw, "-q"]) == 0
    out = capsys.readouterr().out
    assert "converted 1 case(s)" in out and f"skipped {bad}: FLAIR image" in out
    assert "failed its sanity check" in out and "foreground coverage" in out and "--no-register" in out
    folder = os.path.join(raw, "Dataset528_ISLES2022")
    assert not [f for f in F.tree(folder) if bad in f]
    # --no-register writes it (scanner coordinates), as asked
    assert cli.main(["isles2022", rel, "-o", raw, "-q", "-d", "539", "--name", "ISLESnoreg", "--no-register"]) == 0
    assert f"{bad}_0002.nii.gz" in os.listdir(os.path.join(raw, "Dataset539_ISLESnoreg", "imagesTr"))
    # a registration that runs but misses the sanity threshold is reported the same way
    s = isles2022.convert(rel, raw, dataset_id=537, name="ISLESstrict", min_coverage=1.0, progress=False)
    assert s.converted == [] and "coverage" in s.problems[good] and "(minimum 100%)" in s.problems[good]
    assert "registration" in s.case_info[good]  # its metrics are still reported
    with pytest.raises(SystemExit) as e:
        cli.main(["isles2022", rel, "-o", raw, "--min-coverage", "1.5"])
    assert e.value.code == 2 and "fraction" in capsys.readouterr().err


def test_isles_no_register_lands_on_the_right_dwi_voxels(tmp_path):
    """Scanner-coordinate resampling (``register=False``) against a cube at known coordinates."""
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_isles2022(rel, n=2)
    s = isles2022.convert(rel, raw, register=False, progress=False)
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
    s = isles2022.convert(rel, raw, register=False, progress=False)
    assert s.converted == ids[:1]
    assert "FLAIR" in s.problems[ids[1]] and flair in s.problems[ids[1]]
    s = isles2022.convert(rel, raw, dataset_id=538, name="ISLESdwi", channels=["dwi", "adc"], progress=False)
    assert s.converted == ids
    F.verify_fast(os.path.join(raw, "Dataset538_ISLESdwi"))


def test_isles_flat_readme_layout_converts(tmp_path):
    """The organisers' README layout: rawdata/sub-*/ses-0001/*_{dwi,adc,flair}.nii.gz (no dwi/ or
    anat/ folders, lower-case flair) converts like the Zenodo layout, voxel for voxel."""
    flat_rel, zen_rel, raw = str(tmp_path / "flat"), str(tmp_path / "zen"), str(tmp_path / "raw")
    ids = F.fake_isles2022(flat_rel, n=2, flat=True)
    assert not os.path.isdir(os.path.join(flat_rel, "ISLES-2022", "rawdata", ids[0], "ses-0001", "anat"))
    F.fake_isles2022(zen_rel, n=2)
    s = isles2022.convert(flat_rel, raw, register=False, progress=False)
    assert s.converted == ids and not s.problems
    z = isles2022.convert(zen_rel, raw, dataset_id=539, name="ISLESzen", register=False, progress=False)
    assert z.converted == ids
    flat_dir, zen_dir = os.path.join(raw, "Dataset528_ISLES2022"), os.path.join(raw, "Dataset539_ISLESzen")
    F.verify_fast(flat_dir)
    for f in F.tree(os.path.join(zen_dir, "imagesTr")):
        assert np.array_equal(F.read_array(os.path.join(flat_dir, "imagesTr", f)),
                              F.read_array(os.path.join(zen_dir, "imagesTr", f)))
