"""The phantom generator and its command: realism properties, reproducibility, nnU-Net validity."""
import csv
import json
import os

import numpy as np
import pytest

from conftest import run_cli
from nnunet_mmpretrain.corpus.manifest import load_manifest
from nnunet_mmpretrain.synthetic.phantom import atlas_grid, make_case


def test_same_seed_same_case_other_seed_other_case():
    a = make_case(11, 4.0, ("t1", "flair"))
    b = make_case(11, 4.0, ("t1", "flair"))
    c = make_case(12, 4.0, ("t1", "flair"))
    assert np.array_equal(a["images"]["t1"], b["images"]["t1"]) and np.array_equal(a["label"], b["label"])
    assert not np.array_equal(a["images"]["t1"], c["images"]["t1"])


def test_sizes_are_in_mm():
    """The brain has the same physical volume at 3 mm and 4 mm spacing."""
    v3 = (atlas_grid(3.0).mask > 0.5).sum() * 27.0
    v4 = (atlas_grid(4.0).mask > 0.5).sum() * 64.0
    assert abs(v3 - v4) / v3 < 0.1
    assert 1.0e6 < v3 < 2.0e6   # an adult brain is ~1.2-1.6 l


def _ratio(case, mod, region):
    img, lab = case["images"][mod], case["label"]
    wm_like = (lab == 0) & (img > 0)
    return img[region].mean() / np.median(img[wm_like])


def test_labels_and_grade_visible_only_in_t1ce():
    hi = make_case(5, 3.0, ("t1", "t1c", "t2", "flair"), tumour="high")
    lo = make_case(5, 3.0, ("t1", "t1c", "t2", "flair"), tumour="low")
    assert set(np.unique(hi["label"])) == {0, 1, 2, 3}
    assert 3 not in np.unique(lo["label"]) and {1, 2} <= set(np.unique(lo["label"]))
    # same seed: same anatomy and tumour geometry, only the shell's enhancement differs
    shell_hi, shell_lo = hi["label"] == 3, (lo["label"] == 1) & (hi["label"] == 3)
    assert shell_lo.sum() > 0.9 * shell_hi.sum()
    for m in ("t1", "t2", "flair"):
        assert abs(_ratio(hi, m, shell_hi) - _ratio(lo, m, shell_lo)) < 0.1, m
    assert _ratio(hi, "t1c", shell_hi) > 1.5 * _ratio(lo, "t1c", shell_lo)
    # edema is bright on FLAIR, CSF dark on FLAIR and bright on T2; background is exactly zero
    assert _ratio(hi, "flair", hi["label"] == 2) > 1.3
    assert hi["images"]["t1"][0, 0, 0] == 0


def test_healthy_case_has_no_label():
    h = make_case(3, 4.0, ("t1", "pd"), tumour=None)
    assert h["label"].max() == 0 and h["grade"] is None


def test_datasets_pass_nnunet_integrity_check(phantom_raw, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    import shutil
    for name in ("Dataset990_PhantomBraTS", "Dataset991_PhantomGrade"):
        dst = tmp_path / name
        shutil.copytree(os.path.join(phantom_raw, name), dst)
        verify_dataset_integrity(str(dst), 1)   # raises on any problem
    dj = json.load(open(os.path.join(phantom_raw, "Dataset990_PhantomBraTS", "dataset.json")))
    assert dj["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert dj["labels"]["enhancing tumor"] == [3] and dj["regions_class_order"] == [2, 1, 3]


def test_corpus_sources_have_different_modality_sets(phantom_raw):
    m = load_manifest(os.path.join(phantom_raw, "Dataset992_PhantomCorpus"))
    by_source = {}
    for c in m.cases:
        by_source.setdefault(c.source, set()).add(tuple(c.modalities))
        for mod in c.modalities:
            assert os.path.isfile(m.path(c, mod))
    assert by_source == {"phantom_brats": {("flair", "t1", "t1c", "t2")}, "phantom_ixi": {("t1", "t2", "pd")}}
    assert m.atlas_registered


def test_classification_labels_balanced(phantom_raw):
    rows = list(csv.DictReader(open(os.path.join(phantom_raw, "Dataset991_PhantomGrade", "classes.csv"))))
    assert sorted(r["label"] for r in rows) == ["0", "0", "1", "1"]
    import SimpleITK as sitk
    for r in rows:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(
            phantom_raw, "Dataset991_PhantomGrade", "labelsTr", r["case"] + ".nii.gz")))
        assert (3 in np.unique(lab)) == (r["label"] == "1")


@pytest.mark.parametrize("args,needle", [
    (["--num-train", "0"], "--num-train must be at least 1"),
    (["--spacing", "-2"], "--spacing must be a positive"),
    (["--what", "seg,foo"], "--what takes"),
    (["--seg-id", "5", "--cls-id", "5"], "dataset ids must differ"),
])
def test_cli_rejects_nonsense_with_one_line(tmp_path, args, needle):
    r = run_cli(["nnUNetv2_mmpretrain_make_phantoms", "--raw-dir", str(tmp_path)] + args, check=False)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_cli_refuses_nonempty_output_unless_overwrite(tmp_path):
    target = tmp_path / "Dataset990_PhantomBraTS"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    base = ["nnUNetv2_mmpretrain_make_phantoms", "--raw-dir", str(tmp_path), "--what", "seg", "--spacing", "6",
            "--num-train", "1", "--num-test", "0", "-np", "1"]
    r = run_cli(base, check=False)
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (target / "keep.txt").read_text() == "precious"
    run_cli(base + ["--overwrite"])
    assert not (target / "keep.txt").exists()
    assert sorted(os.listdir(target / "imagesTr")) == [f"phantom_0000_{c:04d}.nii.gz" for c in range(4)]
