"""BraTS 2024: the 2023 file names with GLI's label 4 (resection cavity) kept as its own class or
mapped; a brats2023 conversion of a 2024 tree is refused with one line."""
from __future__ import annotations

import os

import numpy as np
import pytest

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.cli import convert as cli
from nnunet_mmpretrain.conversion import ConversionError, brats2023, brats2024
import release_fakes as F
from release_fakes import read_array as arr, read_dataset_json as dataset_json

RC_VOXEL = (8, 5, 5)  # (z, y, x) inside the resection cavity of the fake


gli2024_label, fake_brats2024 = F.gli2024_label, F.fake_brats2024


def test_brats2024_gli_keeps_the_resection_cavity(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = fake_brats2024(rel)
    s = brats2024.convert(rel, raw, progress=False)
    assert s.converted == ids
    folder = os.path.join(raw, "Dataset534_BraTS2024_GLI")
    F.verify_fast(folder)
    d = dataset_json(folder)
    assert d["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                           "enhancing tumor": [3], "resection cavity": [4]}
    assert d["regions_class_order"] == [2, 1, 3, 4]
    assert d["evaluation_regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3], "NETC": [1], "SNFH": [2], "RC": [4]}
    assert d["conversion"]["resection_cavity"] == "keep"
    lab = arr(os.path.join(folder, "labelsTr", f"{ids[0]}.nii.gz"))
    assert np.array_equal(lab, gli2024_label()) and lab[RC_VOXEL] == 4
    for role, v in F.CODES["ours"].items():
        assert lab[F.KNOWN_VOXELS[role]] == v
    assert d["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}


@pytest.mark.parametrize("mode,value,ignore", [("background", 0, False), ("ignore", 4, True)])
def test_brats2024_resection_cavity_mapped(tmp_path, mode, value, ignore):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = fake_brats2024(rel, n=2)
    assert cli.main(["brats2024", rel, "-o", raw, "-q", "--resection-cavity", mode]) == 0
    folder = os.path.join(raw, "Dataset534_BraTS2024_GLI")
    F.verify_fast(folder)
    d = dataset_json(folder)
    assert d["regions_class_order"] == [2, 1, 3] and ("ignore" in d["labels"]) == ignore
    assert "RC" not in d["evaluation_regions"]
    lab = arr(os.path.join(folder, "labelsTr", f"{ids[0]}.nii.gz"))
    assert lab[RC_VOXEL] == value and lab[F.KNOWN_VOXELS["enhancing"]] == 3


def test_brats2023_refuses_a_2024_tree(tmp_path, capsys):
    """Recognised by its folder names, with no label read (a 2024 PED tree may hold no 4)."""
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    fake_brats2024(rel)
    with pytest.raises(ConversionError, match="brats2024"):
        brats2023.convert(rel, raw, progress=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["brats2023", rel, "-o", raw, "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "BraTS 2024 release (folder BraTS2024-BraTS-GLI-TrainingData)" in err and "brats2024" in err
    assert not os.path.exists(raw)


def test_brats_release_detection_does_not_need_a_label(tmp_path, monkeypatch):
    """Each release's fake is told apart by folder names, then by case-id timepoints; a 2024 PED
    tree without any label 4 is refused by brats2023; labels are read only when nothing else tells."""
    ped = str(tmp_path / "ped")
    F.fake_brats2024(ped, "PED", n=2, cavity=False)
    for path in F.tree(ped):
        if path.endswith("-seg.nii.gz"):
            assert 4 not in np.unique(arr(os.path.join(ped, path)))
    monkeypatch.setattr(brats2023, "label_values", lambda *a, **k: pytest.fail("a label file was read"))
    with pytest.raises(ConversionError, match=r"BraTS 2024 release \(folder BraTS2024-BraTS-PED"):
        brats2023.convert(ped, str(tmp_path / "raw"), subset="PED", dry_run=True, progress=False)
    # folders renamed: the 2024 timepoints (from 100) still tell
    plain = str(tmp_path / "plain")
    os.makedirs(plain)
    gli = str(tmp_path / "gli")
    for cid in F.fake_brats2024(gli, n=2):
        os.rename(os.path.join(gli, "BraTS2024-BraTS-GLI-TrainingData", "training_data1_v2", cid),
                  os.path.join(plain, cid))
    with pytest.raises(ConversionError, match="case BraTS-GLI-02000-100 .timepoints from 100"):
        brats2023.convert(plain, str(tmp_path / "raw"), dry_run=True, progress=False)
    # a 2023 tree given to brats2024
    rel23 = str(tmp_path / "r23")
    F.fake_brats2023(rel23, "MET", n=1)
    with pytest.raises(ConversionError, match=r"BraTS 2023 release \(folder ASNR-MICCAI-BraTS2023-MET.*brats2023"):
        brats2024.convert(rel23, str(tmp_path / "raw"), dry_run=True, progress=False)
    assert brats2023.release_year(rel23, brats2023.find_cases(rel23)["MET"]) == (
        2023, "folder ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData")
    assert not os.path.exists(str(tmp_path / "raw"))


def test_unnamed_tree_with_label_4_is_still_refused(tmp_path):
    """Neither folder names nor ids tell (2024 cases renumbered below 100 and moved): the label
    sniff remains the last check."""
    rel = str(tmp_path / "rel")
    F.fake_brats2023(rel, n=2)
    base = os.path.join(rel, "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData")
    os.rename(base, os.path.join(rel, "data"))
    seg = os.path.join(rel, "data", "BraTS-GLI-00000-000", "BraTS-GLI-00000-000-seg.nii.gz")
    F.write(seg, gli2024_label(), **F.BRATS_GEOMETRY)
    with pytest.raises(ConversionError, match="holds label 4.*brats2024"):
        brats2023.convert(rel, str(tmp_path / "raw"), dry_run=True, progress=False)


def test_brats2024_other_sub_challenges(tmp_path, capsys):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = fake_brats2024(rel, "MET", n=2)  # labels 0-3
    s = brats2024.convert(rel, raw, progress=False)
    assert s.converted == ids
    F.verify_fast(os.path.join(raw, "Dataset535_BraTS2024_MET"))
    assert dataset_json(os.path.join(raw, "Dataset535_BraTS2024_MET"))["regions_class_order"] == [2, 1, 3]
    with pytest.raises(ConversionError, match="GLI only"):
        brats2024.convert(rel, raw, resection_cavity="ignore")
    fake_brats2024(rel, "PED", n=1)
    with pytest.raises(SystemExit) as e:
        cli.main(["brats2024", rel, "-o", raw, "--subset", "PED"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "PED relabelled" in err


def test_registry_is_the_one_source():
    """Converters and phantoms write one dataset.json form; the registry holds every release's."""
    from nnunet_mmpretrain.conversion import brats2021, msd_brain, upenn_gbm
    from nnunet_mmpretrain.synthetic import datasets as phantoms
    assert phantoms.BRATS_LABELS is labels.BRATS_LABELS      # one object: the phantoms read the registry
    assert phantoms.BRATS_REGIONS_CLASS_ORDER is labels.BRATS_REGIONS_CLASS_ORDER
    assert labels.BRATS_REGIONS_CLASS_ORDER == [2, 1, 3]
    assert brats2021.LABEL_MAP == upenn_gbm.LABEL_MAP == {0: 0, 1: 1, 2: 2, 4: 3}
    assert msd_brain.LABEL_MAP == {0: 0, 1: 2, 2: 1, 3: 3}
    assert labels.convention("brats2023").mapping == {0: 0, 1: 1, 2: 2, 3: 3}
    assert labels.convention("brats2024-gli").mapping[4] == 4
    assert labels.convention("brats2024-gli-rc-background").mapping[4] == 0
    with pytest.raises(labels.UnknownConventionError, match="known"):
        labels.convention("brats2025")
