"""Classification converters: BraTS 2018 HGG/LGG and the generic CSV-labels converter."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.cli import convert as cli
from nnunet_mmpretrain.conversion import ConversionError, brats2018_grade, csv_labels
import release_fakes as F


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
    raw = str(tmp_path / "raw")
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


def fake_adni_visits(root):
    """An ADNI download (``ADNI/<PTID>/MPRAGE/<date>_<time>/I<n>/ADNI_..._I<n>.nii``, one folder per
    visit) and an ADNIMERGE-like table with one row per visit (PTID, VISCODE, EXAMDATE, DX)."""
    visits = {"002_S_0295": [("bl", "2006-04-18", "CN"), ("m06", "2006-11-02", "CN"), ("m12", "2007-05-25", "MCI")],
              "002_S_0413": [("bl", "2006-05-02", "CN"), ("m06", "2006-11-15", "CN")],
              "003_S_1021": [("bl", "2006-10-30", "MCI")]}
    img, n = os.path.join(root, "ADNI"), 13722
    rows = ["RID,PTID,VISCODE,EXAMDATE,DX"]
    for k, (ptid, vs) in enumerate(visits.items()):
        for j, (code, day, dx) in enumerate(vs):
            rows.append(f"{k + 295},{ptid},{code},{day},{dx}")
            n += 1
            F.write(os.path.join(img, ptid, "MPRAGE", f"{day}_08_20_30.0", f"I{n}",
                                 f"ADNI_{ptid}_MR_MPRAGE_br_raw_{day.replace('-', '')}_1_S{n}_I{n}.nii"),
                    F.noise_image(k, 100 + 50 * j))  # level 100 / 150 / 200 marks the visit
    table = os.path.join(root, "ADNIMERGE.csv")
    with open(table, "w") as f:
        f.write("\n".join(rows[:1] + rows[1:][::-1]) + "\n")  # not in visit order
    return img, table


def test_csv_labels_one_visit_per_subject(tmp_path, capsys):
    img, table = fake_adni_visits(str(tmp_path))
    raw = str(tmp_path / "raw")
    pat = "{id}/MPRAGE/*/*/*.nii"
    s = csv_labels.convert(img, table, "PTID", "DX", patterns=[pat], out_dir=raw, progress=False)
    assert s.converted == ["003_S_1021"]
    assert "3 rows for id '002_S_0295'" in s.problems["002_S_0295"] and "--visit" in s.problems["002_S_0295"]
    # the last visit by EXAMDATE, its image by the date in the path
    s = csv_labels.convert(img, table, "PTID", "DX", patterns=["{id}/MPRAGE/{EXAMDATE}_*/*/*.nii"], visit="last",
                           visit_column="EXAMDATE", out_dir=raw, dataset_id=542, name="ADNIlast", progress=False)
    assert sorted(s.converted) == ["002_S_0295", "002_S_0413", "003_S_1021"]
    folder = os.path.join(raw, "Dataset542_ADNIlast")
    rows = {r[0]: r[2] for r in read_csv(os.path.join(folder, "classes.csv"))[1:]}
    assert rows == {"002_S_0295": "MCI", "002_S_0413": "CN", "003_S_1021": "MCI"}  # m12 of 0295 is MCI
    a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr", "002_S_0295_0000.nii.gz")))
    assert 180 < a.mean() < 230  # the third visit's image (level 200)
    F.verify_fast(folder)
    # baseline by visit code (command line); images chosen through the EXAMDATE of that row
    assert cli.main(["csv-labels", img, "--csv", table, "--id-column", "PTID", "--label-column", "DX",
                     "--pattern", "{id}/MPRAGE/{EXAMDATE}_*/*/*.nii", "--visit", "bl", "--visit-column", "VISCODE",
                     "-o", raw, "-d", "543", "--name", "ADNIbl", "-q"]) == 0
    folder = os.path.join(raw, "Dataset543_ADNIbl")
    rows = {r[0]: r[2] for r in read_csv(os.path.join(folder, "classes.csv"))[1:]}
    assert rows == {"002_S_0295": "CN", "002_S_0413": "CN", "003_S_1021": "MCI"}
    a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, "imagesTr", "002_S_0295_0000.nii.gz")))
    assert 80 < a.mean() < 130
    # several rows and several images: the pattern must name the visit (image and label of one visit)
    s = csv_labels.convert(img, table, "PTID", "DX", patterns=[pat], visit="first", out_dir=raw, dataset_id=544,
                           name="ADNIfirst", progress=False)
    assert s.converted == ["003_S_1021"] and "belongs to the chosen row" in s.problems["002_S_0413"]
    # one row per id (a baseline table) and several images: the first image by path (dates)
    base_table = str(tmp_path / "baseline.csv")
    with open(base_table, "w") as f:
        f.write("PTID,DX_bl\n002_S_0295,CN\n002_S_0413,CN\n")
    s = csv_labels.convert(img, base_table, "PTID", "DX_bl", patterns=[pat], visit="first", out_dir=raw,
                           dataset_id=546, name="ADNIbase", progress=False)
    assert sorted(s.converted) == ["002_S_0295", "002_S_0413"]
    a = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "Dataset546_ADNIbase", "imagesTr",
                                                           "002_S_0295_0000.nii.gz")))
    assert 80 < a.mean() < 130  # 2006-04-18, the baseline
    with pytest.raises(ConversionError, match="--visit-column"):
        csv_labels.convert(img, table, "PTID", "DX", patterns=[pat], visit="bl", out_dir=raw)
    with pytest.raises(ConversionError, match="DATE"):
        csv_labels.convert(img, table, "PTID", "DX", patterns=["{id}/{DATE}*/*.nii"], out_dir=raw)
    s = csv_labels.convert(img, table, "PTID", "DX", patterns=[pat], visit="m06", visit_column="VISCODE",
                           out_dir=raw, dataset_id=545, name="ADNIm06", progress=False)
    assert "no row with VISCODE = 'm06'" in s.problems["003_S_1021"]
    assert "belongs to the chosen row" in s.problems["002_S_0295"] and "{EXAMDATE}" in s.problems["002_S_0295"]
