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


def gli2024_label(with_cavity: bool = True) -> np.ndarray:
    """1 NETC, 2 SNFH, 3 ET as in the 2023 fake, plus 4 resection cavity next to the tumour."""
    lab = F.tumour_label(F.CODES["brats2023"])
    if with_cavity:
        lab[8:10, 3:9, 3:9] = 4
    return lab


def fake_brats2024(root: str, subset: str = "GLI", n: int = 3) -> list:
    """``BraTS2024-BraTS-GLI-TrainingData/training_data1_v2/BraTS-GLI-02XXX-10Y/`` as released (the
    second case without a cavity, as some post-treatment exams)."""
    base = os.path.join(root, f"BraTS2024-BraTS-{subset}-TrainingData", "training_data1_v2")
    ids = []
    for i in range(n):
        cid = f"BraTS-{subset}-{2000 + i:05d}-{100 + i % 2:03d}"
        d = os.path.join(base, cid)
        for j, suf in enumerate(("t1n", "t1c", "t2w", "t2f")):
            F.write(os.path.join(d, f"{cid}-{suf}.nii.gz"), F.noise_image(i * 10 + j, 100 + 50 * j), **F.BRATS_GEOMETRY)
        F.write(os.path.join(d, f"{cid}-seg.nii.gz"), gli2024_label(subset == "GLI" and i != 1), **F.BRATS_GEOMETRY)
        ids.append(cid)
    return ids


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
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    fake_brats2024(rel)
    with pytest.raises(ConversionError, match="brats2024"):
        brats2023.convert(rel, raw, progress=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["brats2023", rel, "-o", raw, "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "-seg.nii.gz holds label 4" in err and "resection cavity" in err and "brats2024" in err
    assert not os.path.exists(raw)


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
