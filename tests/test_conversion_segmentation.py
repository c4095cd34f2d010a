"""Segmentation converters on fake releases with the real naming: nnU-Net's integrity check on the
output, label mappings voxel by voxel, channel order, geometry."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.conversion import (ConversionError, brats2021, brats2023, msd_brain,
                                          mrbrains13, upenn_gbm)
import release_fakes as F
from release_fakes import read_array as arr, read_dataset_json as dataset_json
from nnunet_mmpretrain.labels import BRATS_LABELS

OURS = F.CODES["ours"]


def check_known_voxels(lab):
    assert lab[F.KNOWN_VOXELS["background"]] == 0
    for role, v in OURS.items():
        assert lab[F.KNOWN_VOXELS[role]] == v, role
    assert np.array_equal(lab, F.tumour_label(OURS))


def test_brats2021(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2021(rel, n=3, omit={2: "flair"})
    s = brats2021.convert(rel, raw, progress=False)
    assert s.converted == ["BraTS2021_00000", "BraTS2021_00001"]
    assert "BraTS2021_00002_flair.nii.gz" in s.problems["BraTS2021_00002"]
    folder = os.path.join(raw, "Dataset521_BraTS2021")
    F.verify_fast(folder)
    d = dataset_json(folder)
    assert d["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert d["labels"] == BRATS_LABELS and d["regions_class_order"] == [2, 1, 3]
    assert d["numTraining"] == 2 and d["file_ending"] == ".nii.gz"
    lab_path = os.path.join(folder, "labelsTr", "BraTS2021_00000.nii.gz")
    lab = arr(lab_path)
    assert lab[F.KNOWN_VOXELS["enhancing"]] == 3  # release label 4
    check_known_voxels(lab)
    # geometry kept (flipped axes, shifted origin), images hard-linked in BraTS channel order
    src_dir = os.path.join(rel, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021", "BraTS2021_00000")
    src_seg = sitk.ReadImage(os.path.join(src_dir, "BraTS2021_00000_seg.nii.gz"))
    out = sitk.ReadImage(lab_path)
    assert out.GetDirection() == src_seg.GetDirection() and np.allclose(out.GetOrigin(), src_seg.GetOrigin())
    for ch, suf in enumerate(("t1", "t1ce", "t2", "flair")):
        assert os.path.samefile(os.path.join(src_dir, f"BraTS2021_00000_{suf}.nii.gz"),
                                os.path.join(folder, "imagesTr", f"BraTS2021_00000_{ch:04d}.nii.gz"))


def test_brats2023_keeps_enhancing_3(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2023(rel, "MEN", n=2)
    F.fake_brats2023(rel, "PED", n=1)
    with pytest.raises(ConversionError, match="--subset"):
        brats2023.convert(rel, raw, progress=False)
    s = brats2023.convert(rel, raw, subset="MEN", progress=False)
    assert len(s.converted) == 2
    folder = os.path.join(raw, "Dataset523_BraTS2023_MEN")
    F.verify_fast(folder)
    lab = arr(os.path.join(folder, "labelsTr", "BraTS-MEN-00000-000.nii.gz"))
    assert lab[F.KNOWN_VOXELS["enhancing"]] == 3 and (lab == 3).sum() == (F.tumour_label(OURS) == 3).sum() > 0
    check_known_voxels(lab)
    assert dataset_json(folder)["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    src = os.path.join(rel, "ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData", "BraTS-MEN-00000-000")
    assert os.path.samefile(os.path.join(src, "BraTS-MEN-00000-000-t2f.nii.gz"),
                            os.path.join(folder, "imagesTr", "BraTS-MEN-00000-000_0003.nii.gz"))


def test_brats2023_unknown_label_value_skips_case(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2023(rel, "GLI", n=2)
    seg = os.path.join(rel, "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", "BraTS-GLI-00001-000",
                       "BraTS-GLI-00001-000-seg.nii.gz")
    lab = F.tumour_label(F.CODES["brats2023"])
    lab[0, 0, 0] = 7
    F.write(seg, lab, **F.BRATS_GEOMETRY)
    s = brats2023.convert(rel, raw, progress=False)
    assert s.converted == ["BraTS-GLI-00000-000"]
    reason = s.problems["BraTS-GLI-00001-000"]
    assert "BraTS-GLI-00001-000-seg.nii.gz" in reason and "value(s) 7" in reason
    assert not os.path.exists(os.path.join(raw, "Dataset522_BraTS2023_GLI", "imagesTr", "BraTS-GLI-00001-000_0000.nii.gz"))
    # a 4 beyond the first label files (the whole tree is refused when those hold one): skipped, with the hint
    F.fake_brats2023(rel, "GLI", n=7)
    seg = seg.replace("00001", "00006")
    F.write(seg, F.tumour_label(F.CODES["brats2021"]), **F.BRATS_GEOMETRY)
    s = brats2023.convert(rel, raw, progress=False)
    assert "value(s) 4" in s.problems["BraTS-GLI-00006-000"] and "brats2024" in s.problems["BraTS-GLI-00006-000"]


def test_msd_brain(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_msd_brain(rel, n=2)
    s = msd_brain.convert(rel, raw, progress=False)
    assert s.converted == ["BRATS_001", "BRATS_002"]  # ._BRATS_*.nii.gz junk ignored
    folder = os.path.join(raw, "Dataset527_MSDBrainTumour")
    F.verify_fast(folder)
    # volumes reordered from FLAIR, T1w, T1gd, T2w to T1, T1ce, T2, FLAIR
    for ch, m in enumerate(("T1w", "t1gd", "T2w", "FLAIR")):
        a = arr(os.path.join(folder, "imagesTr", f"BRATS_001_{ch:04d}.nii.gz"))
        assert a.shape == F.SHAPE_ZYX and np.all(a == F.MSD_LEVELS[m])
    lab = arr(os.path.join(folder, "labelsTr", "BRATS_001.nii.gz"))
    assert lab[F.KNOWN_VOXELS["edema"]] == 2  # MSD 1 -> 2
    assert lab[F.KNOWN_VOXELS["necrosis"]] == 1  # MSD 2 -> 1
    assert lab[F.KNOWN_VOXELS["enhancing"]] == 3
    check_known_voxels(lab)


def test_upenn_gbm(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_upenn_gbm(rel, n=3, n_with_seg=2, follow_ups=(0,))
    assert ids == ["UPENN-GBM-00001_11", "UPENN-GBM-00001_21", "UPENN-GBM-00002_11", "UPENN-GBM-00003_11"]
    first = [i for i in ids if i.endswith("_11")]
    s = upenn_gbm.convert(rel, raw, progress=False)
    assert s.converted == first[:2]
    assert "--automated-segm" in s.problems[first[2]] and "automated_approx_segm" in s.problems[first[2]]
    fu = s.problems["UPENN-GBM-00001_21"]
    assert "--automated-segm" not in fu and "follow-up" in fu and "no segmentation" in fu
    folder = os.path.join(raw, "Dataset529_UPENNGBM")
    F.verify_fast(folder)
    check_known_voxels(arr(os.path.join(folder, "labelsTr", f"{ids[0]}.nii.gz")))
    s2 = upenn_gbm.convert(rel, raw, use_automated=True, progress=False)
    assert s2.converted == [first[2]] and sorted(s2.already_done) == first[:2]
    assert "follow-up" in s2.problems["UPENN-GBM-00001_21"]


def test_mrbrains13_full_and_tissue(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_mrbrains13(rel, n_train=2, n_test=2)  # TestData/1, TestData/2: numbered from 1 again
    s = mrbrains13.convert(rel, raw, progress=False)
    assert s.converted == ids and set(s.problems) == {"MRBrainS13_Test01", "MRBrainS13_Test02"}
    assert all("LabelsForTraining.nii in" in r and "test subjects" in r for r in s.problems.values())
    folder = os.path.join(raw, "Dataset530_MRBrainS13")
    F.verify_fast(folder)
    d = dataset_json(folder)
    assert d["channel_names"] == {"0": "T1", "1": "T1-IR", "2": "FLAIR"}
    assert d["labels"]["brainstem"] == 8 and len(d["labels"]) == 9
    assert s.files["rewritten"] == 6 and s.files["linked"] == 0  # .nii -> .nii.gz
    lab = arr(os.path.join(folder, "labelsTr", "MRBrainS13_01.nii.gz"))
    assert np.array_equal(lab, F.mrbrains_label())
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "MRBrainS13_01_0001.nii.gz"))
    assert np.allclose(img.GetSpacing(), F.MRBRAINS_SPACING)

    s = mrbrains13.convert(rel, raw, dataset_id=533, name="MRBrainS13Tissue", label_set="tissue", progress=False)
    folder = os.path.join(raw, "Dataset533_MRBrainS13Tissue")
    F.verify_fast(folder)
    lab = arr(os.path.join(folder, "labelsTr", "MRBrainS13_01.nii.gz"))
    expected = {0: 0, 1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 4, 8: 4}
    for z, v in expected.items():
        assert lab[z, 5, 5] == (v if z else 0)
    assert dataset_json(folder)["labels"]["ignore"] == 4


def test_mrbrains13_original_mhd_release(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_mrbrains13(rel, n_train=2, n_test=1, ext=".mhd")
    assert os.path.isfile(os.path.join(rel, "MRBrainS13Data", "TrainingData", "1", "T1.raw"))
    s = mrbrains13.convert(rel, raw, progress=False)
    assert s.converted == ids and "LabelsForTraining.mhd" in s.problems["MRBrainS13_Test01"]
    assert s.files["rewritten"] == 6 and s.files["linked"] == 0  # .mhd -> .nii.gz
    folder = os.path.join(raw, "Dataset530_MRBrainS13")
    F.verify_fast(folder)
    assert np.array_equal(arr(os.path.join(folder, "labelsTr", "MRBrainS13_02.nii.gz")), F.mrbrains_label())
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "MRBrainS13_01_0002.nii.gz"))
    assert np.allclose(img.GetSpacing(), F.MRBRAINS_SPACING)
    # a missing .raw companion is a per-case problem naming the file, not a crash
    os.remove(os.path.join(rel, "MRBrainS13Data", "TrainingData", "2", "T1_IR.raw"))
    s = mrbrains13.convert(rel, raw, dataset_id=533, name="MRB", progress=False)
    assert s.converted == ids[:1] and "T1_IR.mhd" in s.problems["MRBrainS13_02"]
