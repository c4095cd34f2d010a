"""Classification converters: BraTS 2018 HGG/LGG and the generic CSV-labels converter."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.conversion import ConversionError, brats2018_grade, csv_labels, fakes as F


def read_csv(p):
    with open(p) as f:
        return list(csv.reader(f))


def test_brats2018_grade(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    grades = F.fake_brats2018(rel, n_hgg=2, n_lgg=1)
    s = brats2018_grade.convert(rel, raw, progress=False)
    assert sorted(s.converted) == sorted(grades)
    folder = os.path.join(raw, "Dataset532_BraTS2018Grade")
    F.verify_fast(folder)
    rows = read_csv(os.path.join(folder, "classes.csv"))
    assert rows[0] == ["case", "label", "grade"]
    assert {r[0]: (r[1], r[2]) for r in rows[1:]} == {c: (str(int(g == "HGG")), g) for c, g in grades.items()}
    with open(os.path.join(folder, "dataset.json")) as f:
        d = json.load(f)
    assert d["classification"] == {"file": "classes.csv", "classes": {"0": "LGG", "1": "HGG"}}
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", sorted(grades)[0] + ".nii.gz")))
    assert lab[F.KNOWN_VOXELS["enhancing"]] == 3  # release 4


def test_csv_labels_with_class_map(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    c = F.fake_csv_release(rel)
    before = set(F.tree(str(tmp_path)))
    s = csv_labels.convert(c["images"], c["csv"], "Subject", "Group", patterns=["{id}/{id}_mprage.nii.gz"],
                           class_map={"CN": 0, "MCI": 1}, out_dir=raw, dataset_id=541, name="ADNI", progress=False)
    assert sorted(s.converted) == ["002_S_0295", "002_S_0413", "003_S_1021"]
    p = s.problems
    assert "not selected" in p["005_S_0221"]                     # AD not in the class map
    assert "no image matches" in p["007_S_0070"]                  # row without image
    assert "invalid case id" in p["../../escape"]                 # path traversal rejected
    orphan = [k for k in s.skipped_files if "009_S_9999" in k]
    assert orphan and "without a row" in s.skipped_files[orphan[0]]
    folder = os.path.join(raw, "Dataset541_ADNI")
    F.verify_fast(folder)
    rows = read_csv(os.path.join(folder, "classes.csv"))
    assert rows[0] == ["case", "label", "class"]
    assert {r[0]: r[1] for r in rows[1:]} == {"002_S_0295": "0", "002_S_0413": "1", "003_S_1021": "0"}
    with open(os.path.join(folder, "dataset.json")) as f:
        d = json.load(f)
    assert d["classification"]["classes"] == {"0": "CN", "1": "MCI"} and d["channel_names"] == {"0": "T1"}
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "labelsTr", "002_S_0295.nii.gz")))
    assert set(np.unique(lab)) == {0, 1}
    # nothing written outside the output folder
    new = set(F.tree(str(tmp_path))) - before
    assert new and all(f.startswith("raw" + os.sep + "Dataset541_ADNI" + os.sep) for f in new)
    assert not any("escape" in f for f in F.tree(str(tmp_path)))


def test_csv_labels_default_numbering_and_errors(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    img = tmp_path / "imgs"
    for i, cid in enumerate(["50002", "50003", "50004"]):
        F.write(str(img / f"{cid}.nii.gz"), F.noise_image(i, 100))
    table = tmp_path / "abide.tsv"
    table.write_text("SUB_ID\tDX_GROUP\n50002\t2\n50003\t10\n50004\t2\n")
    s = csv_labels.convert(str(img), str(table), "SUB_ID", "DX_GROUP", out_dir=raw, mask="nonzero", progress=False)
    assert len(s.converted) == 3
    folder = os.path.join(raw, "Dataset540_abide")
    rows = {r[0]: r[1] for r in read_csv(os.path.join(folder, "classes.csv"))[1:]}
    assert rows == {"50002": "0", "50003": "1", "50004": "0"}  # numeric sort: 2 < 10
    with pytest.raises(ConversionError, match="column 'DX'"):
        csv_labels.convert(str(img), str(table), "SUB_ID", "DX", out_dir=raw, progress=False)
    with pytest.raises(ConversionError, match=r"\{id\}"):
        csv_labels.convert(str(img), str(table), "SUB_ID", "DX_GROUP", patterns=["x.nii.gz"], out_dir=raw)
