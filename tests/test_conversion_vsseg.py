"""VS-seg: the NIfTI layouts of the dataset authors' scripts (VS_Seg ``data_conversion.py``, default
and ``--register T1`` output, and the BIDS export), ceT1 or T2 datasets, and ``--with-t2`` only with
a T2 registered by the release's transforms."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.cli import convert as cli
from nnunet_mmpretrain.conversion import ConversionError, vsseg
import release_fakes as F


def arr(p):
    return sitk.GetArrayFromImage(sitk.ReadImage(p))


def dataset_json(folder):
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)


def fake_vsseg_bids(root: str, n: int = 2, registered_t2: bool = True) -> list:
    """``root/VS-SEG-BIDS`` as ``createBIDSdataset/data_conversion_BIDS.py`` writes it."""
    base = os.path.join(root, "VS-SEG-BIDS")
    m1, m2 = F.vsseg_masks()
    subs = []
    for i in range(n):
        sub = f"sub-{i + 1:03d}"
        anat = os.path.join(base, sub, "anat")
        F.write(os.path.join(anat, f"{sub}_T1w.nii.gz"), F.noise_image(i, 200), **F.VSSEG_T1_GEOMETRY)
        F.write(os.path.join(anat, f"{sub}_T2w.nii.gz"), F.noise_image(i + 5, 300, shape=F.VSSEG_T2_SHAPE),
                **F.VSSEG_T2_GEOMETRY)
        with open(os.path.join(anat, f"{sub}_T1w.json"), "w") as f:
            f.write("{}")
        mask = f"{sub}_space-individual_desc-tumor_mask.nii.gz"
        F.write(os.path.join(base, "derivatives", "manual_segmentation_masks_of_T1w", sub, "anat", mask), m1,
                **F.VSSEG_T1_GEOMETRY)
        F.write(os.path.join(base, "derivatives", "manual_segmentation_masks_of_T2w", sub, "anat", mask), m2,
                **F.VSSEG_T2_GEOMETRY)
        if registered_t2:
            F.write(os.path.join(base, "derivatives", "T2w_registered_to_T1w", sub, "anat",
                                 f"{sub}_space-individual_T2w.nii.gz"), F.noise_image(i + 7, 300), **F.VSSEG_T1_GEOMETRY)
        subs.append(sub)
    os.makedirs(os.path.join(base, "sourcedata", "registration_matrices", subs[0], "anat"))
    with open(os.path.join(base, "dataset_description.json"), "w") as f:
        json.dump({"Name": "VS-SEG", "BIDSVersion": "1.6.0"}, f)
    return subs


def test_vsseg_default_output_ceT1_and_T2(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_vsseg(rel, n=2)  # data_conversion.py without --register
    s = vsseg.convert(rel, raw, progress=False)
    assert s.converted == ids
    folder = os.path.join(raw, "Dataset531_VSseg")
    F.verify_fast(folder)
    d = dataset_json(folder)
    assert d["channel_names"] == {"0": "T1ce"} and d["labels"] == {"background": 0, "vestibular schwannoma": 1}
    lab = arr(os.path.join(folder, "labelsTr", "vs_gk_1.nii.gz"))
    assert lab.sum() == 27 and lab[5, 6, 7] == 1
    # the T2 with its own mask: a T2-only dataset on the T2 grid
    s = vsseg.convert(rel, raw, sequence="t2", progress=False)
    assert s.converted == ids
    folder = os.path.join(raw, "Dataset537_VSsegT2")
    F.verify_fast(folder)
    assert dataset_json(folder)["channel_names"] == {"0": "T2"}
    img = sitk.ReadImage(os.path.join(folder, "imagesTr", "vs_gk_2_0000.nii.gz"))
    assert np.allclose(img.GetSpacing(), F.VSSEG_T2_GEOMETRY["spacing"])
    assert arr(os.path.join(folder, "labelsTr", "vs_gk_2.nii.gz")).sum() == 36
    assert os.path.samefile(os.path.join(rel, "VS_defaced", "vs_gk_2", "vs_gk_t2_refT2.nii.gz"),
                            os.path.join(folder, "imagesTr", "vs_gk_2_0000.nii.gz"))


def test_vsseg_with_t2_needs_the_registered_t2(tmp_path, capsys):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_vsseg(rel, n=2)  # default output: T2 only in its own space
    with pytest.raises(ConversionError, match="never resampled onto the ceT1 by scanner coordinates"):
        vsseg.convert(rel, raw, with_t2=True, progress=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["vsseg", rel, "-o", raw, "--with-t2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "vs_gk_t2_refT1" in err and "--register T1" in err and "T2w_registered_to_T1w" in err
    assert not os.path.exists(raw)
    with pytest.raises(ConversionError, match="drop one"):
        vsseg.convert(rel, raw, with_t2=True, sequence="t2")
    # the --register T1 output: T2 already on the ceT1 grid (the release's transforms)
    rel2 = str(tmp_path / "rel2")
    ids = F.fake_vsseg(rel2, n=2, layout="register-t1")
    s = vsseg.convert(rel2, raw, with_t2=True, progress=False)
    assert s.converted == ids and s.files["resampled"] == 0 and s.files["linked"] == 4
    folder = os.path.join(raw, "Dataset531_VSseg")
    F.verify_fast(folder)
    assert dataset_json(folder)["channel_names"] == {"0": "T1ce", "1": "T2"}
    # a registered T2 that is not on the ceT1 grid is refused for that case, not resampled
    t2 = os.path.join(rel2, "VS_defaced", "vs_gk_2", "vs_gk_t2_refT1.nii.gz")
    F.write(t2, F.noise_image(1, 300, shape=F.VSSEG_T2_SHAPE), **F.VSSEG_T2_GEOMETRY)
    s = vsseg.convert(rel2, raw, with_t2=True, overwrite=True, progress=False)
    assert s.converted == ids[:1] and "not on the grid" in s.problems[ids[1]] and t2 in s.problems[ids[1]]


def test_vsseg_bids_export(tmp_path, capsys):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    subs = fake_vsseg_bids(rel)
    s = vsseg.convert(rel, raw, with_t2=True, progress=False)
    assert s.converted == subs
    folder = os.path.join(raw, "Dataset531_VSseg")
    F.verify_fast(folder)
    assert dataset_json(folder)["channel_names"] == {"0": "T1ce", "1": "T2"}
    base = os.path.join(rel, "VS-SEG-BIDS")
    assert os.path.samefile(os.path.join(base, "derivatives", "T2w_registered_to_T1w", "sub-001", "anat",
                                         "sub-001_space-individual_T2w.nii.gz"),
                            os.path.join(folder, "imagesTr", "sub-001_0001.nii.gz"))
    assert arr(os.path.join(folder, "labelsTr", "sub-002.nii.gz")).sum() == 27
    assert cli.main(["vsseg", rel, "-o", raw, "-q", "--sequence", "t2"]) == 0
    folder = os.path.join(raw, "Dataset537_VSsegT2")
    F.verify_fast(folder)
    assert arr(os.path.join(folder, "labelsTr", "sub-001.nii.gz")).sum() == 36
    # a BIDS export without the registered T2 is refused for --with-t2
    rel2 = str(tmp_path / "rel2")
    fake_vsseg_bids(rel2, registered_t2=False)
    with pytest.raises(ConversionError, match="T2w_registered_to_T1w"):
        vsseg.convert(rel2, raw, with_t2=True)
    # a missing mask skips that subject with the expected path
    os.remove(os.path.join(rel2, "VS-SEG-BIDS", "derivatives", "manual_segmentation_masks_of_T1w", "sub-002",
                           "anat", "sub-002_space-individual_desc-tumor_mask.nii.gz"))
    s = vsseg.convert(rel2, raw, dataset_id=538, name="VSbids", progress=False)
    assert s.converted == ["sub-001"] and "manual_segmentation_masks_of_T1w" in s.problems["sub-002"]
