"""One patient is one subject across timepoints and releases: converted BraTS 2023 / 2024 datasets
carry patient-grouped folds that plain nnU-Net training uses; corpus-brats gives the timepoints
of a patient one subject; the same scan under two ids (BraTS 2023 GLI = BraTS 2021 renamed) is
kept once."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import release_fakes as F
from nnunet_mmpretrain import subjects
from nnunet_mmpretrain.conversion import brats2023, brats2024, corpus_brats
from nnunet_mmpretrain.corpus.manifest import load_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: plain nnU-Net in a fresh process (nnunetv2.paths reads the folders at import): fingerprint (a
#: smaller intensity sample), plan, preprocess, then the trainer nnUNetv2_train builds splits each fold
NNUNET_FOLDS = r"""
import json, os, sys, torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset
from nnunetv2.run.run_training import get_trainer_from_args
from nnunet_mmpretrain.planning.nnunet_plan import fingerprint
did, name = int(sys.argv[1]), sys.argv[2]
fingerprint(did, 1, 1e4)
plan_experiment_dataset(did)
preprocess_dataset(did, "nnUNetPlans", ("3d_fullres",), [1], show_progress_bar=False)
folds = []
for f in range(5):
    tr, val = get_trainer_from_args(str(did), "3d_fullres", f, device=torch.device("cpu")).do_split()
    folds.append({"train": sorted(tr), "val": sorted(val)})
print("FOLDS " + json.dumps(folds))
"""


def _nnunet_env(tmp_path):
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = str(tmp_path / k)
        os.makedirs(env[k], exist_ok=True)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["nnUNet_def_n_proc"] = env["nnUNet_n_proc_DA"] = "1"
    return env


@pytest.mark.parametrize("release", ["brats2023", "brats2024"])
def test_plain_nnunet_folds_keep_a_patients_timepoints_together(release, tmp_path, monkeypatch):
    env = _nnunet_env(tmp_path)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    rel = str(tmp_path / "rel")
    if release == "brats2023":
        ids = F.fake_brats2023(rel, n=5, timepoints={0: 2})
        first, follow = "BraTS-GLI-00000-000", "BraTS-GLI-00000-001"
        s = brats2023.convert(rel, progress=False)
        name = "Dataset522_BraTS2023_GLI"
    else:
        ids = F.fake_brats2024(rel, n=5, timepoints={0: 2})
        first, follow = "BraTS-GLI-02000-100", "BraTS-GLI-02000-101"
        s = brats2024.convert(rel, progress=False)
        name = "Dataset534_BraTS2024_GLI"
    assert sorted(s.converted) == sorted(ids) and {first, follow} <= set(ids)
    raw = os.path.join(env["nnUNet_raw"], name)
    recorded = json.load(open(os.path.join(raw, subjects.PATIENTS_FILE)))["cases"]
    assert recorded[first]["patient"] == recorded[follow]["patient"] == first[:-4]
    assert (recorded[first]["timepoint"], recorded[follow]["timepoint"]) == (first[-3:], follow[-3:])
    assert any("patient-grouped folds written to" in n for n in s.notes), s.notes
    # nnU-Net's own case-level folds would put the two timepoints on both sides
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    theirs = generate_crossval_split(sorted(ids), seed=12345, n_splits=5)
    assert subjects.split_patients(theirs, {c: v["patient"] for c, v in recorded.items()}) == [first[:-4]]

    r = subprocess.run([sys.executable, "-c", NNUNET_FOLDS, name.split("_")[0][7:], name], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    folds = json.loads(r.stdout.split("FOLDS ", 1)[1])
    assert len(folds) == 5
    assert sorted(c for f in folds for c in f["val"]) == sorted(ids)  # every case validated once
    for f in folds:
        assert ({first, follow} <= set(f["train"])) or ({first, follow} <= set(f["val"])), f


def test_our_planning_places_the_split_when_conversion_could_not(tmp_path, monkeypatch):
    """Converted with nnUNet_preprocessed unset: the summary says how to place the file; our
    planning step's placement copies it, and a case-level split already there is moved aside."""
    raw, pre = str(tmp_path / "raw"), str(tmp_path / "pre")
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    F.fake_brats2023(str(tmp_path / "rel"), n=3, timepoints={1: 2})
    s = brats2023.convert(str(tmp_path / "rel"), raw, progress=False)
    folder = os.path.join(raw, "Dataset522_BraTS2023_GLI")
    assert any("before nnUNetv2_train: mkdir -p $nnUNet_preprocessed/Dataset522_BraTS2023_GLI && cp "
               + os.path.join(folder, "splits_final.json") in n for n in s.notes), s.notes
    target = os.path.join(pre, "Dataset522_BraTS2023_GLI")
    os.makedirs(target)
    case_level = [{"train": ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"], "val": ["BraTS-GLI-00001-001"]}]
    json.dump(case_level, open(os.path.join(target, "splits_final.json"), "w"))
    line = subjects.place_splits(folder, target)
    assert "moved to splits_final.json.case-level" in line
    assert json.load(open(os.path.join(target, "splits_final.json.case-level"))) == case_level
    placed = json.load(open(os.path.join(target, "splits_final.json")))
    assert placed == json.load(open(os.path.join(folder, "splits_final.json")))
    assert not subjects.split_patients(placed, subjects.read_patients(folder))
    assert "already" in subjects.place_splits(folder, target)


def test_corpus_brats_one_subject_per_patient_and_the_release_named(tmp_path):
    r23, r24, out = str(tmp_path / "r23"), str(tmp_path / "r24"), str(tmp_path / "raw")
    F.fake_brats2023(r23, n=2, timepoints={0: 2})
    F.fake_brats2024(r24, n=1, timepoints={0: 2})
    corpus_brats.convert(r23, out, progress=False)
    corpus_brats.convert(r24, out, case_prefix="b24_", progress=False)
    m = load_manifest(os.path.join(out, "Dataset550_BraTSCorpus", "manifest.json"))
    cases = {c.case_id: c for c in m.cases}
    assert (cases["BraTS-GLI-00000-000"].subject, cases["BraTS-GLI-00000-000"].session) == ("BraTS-GLI-00000", "000")
    assert (cases["BraTS-GLI-00000-001"].subject, cases["BraTS-GLI-00000-001"].session) == ("BraTS-GLI-00000", "001")
    assert cases["BraTS-GLI-00001-000"].subject == "BraTS-GLI-00001"
    assert {cases[c].subject for c in ("b24_BraTS-GLI-02000-100", "b24_BraTS-GLI-02000-101")} == {"BraTS-GLI-02000"}
    assert cases["b24_BraTS-GLI-02000-100"].source == "brats2024_gli"
    assert cases["BraTS-GLI-00000-000"].source == "brats2023_gli"
    assert set(m.sources) == {"brats2023_gli", "brats2024_gli"}
    assert len({c.subject for c in m.cases}) == 3


def test_brats2021_and_2023_in_one_corpus_keep_each_scan_once(tmp_path):
    """BraTS 2023 GLI training is BraTS 2021 renamed: converted one after the other into one
    corpus, the renamed copies are reported and left out; --allow-duplicates keeps both."""
    import numpy as np
    r21, r23, out = str(tmp_path / "r21"), str(tmp_path / "r23"), str(tmp_path / "raw")
    ids21 = F.fake_brats2021(r21, n=2)
    ids23 = F.fake_brats2023(r23, n=3, dtype=np.int16)  # cases 0, 1 = 2021's; case 2 new
    folder = os.path.join(out, "Dataset550_BraTSCorpus")
    corpus_brats.convert(r21, out, progress=False)
    s = corpus_brats.convert(r23, out, progress=False)
    assert s.converted == [ids23[2]]
    assert set(s.problems) == set(ids23[:2])
    assert "same scan as case BraTS2021_00000" in s.problems["BraTS-GLI-00000-000"]
    assert any(n.startswith("2 case(s) repeat a scan already in the corpus") and "kept the first only" in n
               for n in s.notes), s.notes
    m = load_manifest(os.path.join(folder, "manifest.json"))
    assert sorted(c.case_id for c in m.cases) == sorted(ids21 + ids23[2:])
    assert not [f for f in os.listdir(os.path.join(folder, "images")) if f.startswith("BraTS-GLI-00000")]
    # one run over both trees: the same answer
    both = str(tmp_path / "both")
    os.rename(r21, both)
    os.rename(os.path.join(r23, "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"),
              os.path.join(both, "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"))
    s = corpus_brats.convert(both, out, dataset_id=551, progress=False)
    assert len(s.converted) == 3 and len(s.problems) == 2 and ids23[2] in s.converted
    for pair in zip(ids21, ids23):  # one of each pair kept, whichever was found first
        assert len(set(pair) & set(s.converted)) == 1 and len(set(pair) & set(s.problems)) == 1
    s = corpus_brats.convert(both, out, dataset_id=552, allow_duplicates=True, progress=False)
    assert sorted(s.converted) == sorted(ids21 + ids23) and any("both kept" in n for n in s.notes)


def test_planning_keeps_one_of_a_copied_case_or_both_when_allowed(tmp_path, monkeypatch, capsys):
    """The catalogue refuses a manifest listing one scan under two ids; --skip-bad keeps the first,
    --allow-duplicates keeps both."""
    import numpy as np
    from nnunet_mmpretrain.cli.plan_and_preprocess import main
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(tmp_path / k)
        monkeypatch.setenv(k, str(tmp_path / k))
    folder = tmp_path / "nnUNet_raw" / "Dataset900_C"
    cases = []
    for i, c in enumerate(("a", "b", "a_copy")):
        for j, m in enumerate(("t1", "t2")):
            seed = 2 * (0 if c == "a_copy" else i) + j
            F.write(str(folder / "images" / f"{c}_{m}.nii.gz"),
                    np.random.default_rng(seed).random((24, 28, 26)).astype(np.float32) + 1)
        cases.append({"case_id": c, "images": {m: f"images/{c}_{m}.nii.gz" for m in ("t1", "t2")}})
    json.dump({"name": "C", "cases": cases}, open(folder / "manifest.json", "w"))
    args = ["-d", "900", "-np", "1", "--plan-only", "--add-config", "3d_t", "--patch", "16", "16", "16"]
    assert main(args + ["--skip-bad"]) == 0
    assert "left out 1 bad case(s): a_copy" in capsys.readouterr().out
    plans = json.load(open(tmp_path / "nnUNet_preprocessed" / "Dataset900_C" / "mmPretrainPlans.json"))
    assert list(plans["mmpretrain"]["left_out_cases"]) == ["a_copy"]
    assert main(args + ["--allow-duplicates"]) == 0
    plans = json.load(open(tmp_path / "nnUNet_preprocessed" / "Dataset900_C" / "mmPretrainPlans.json"))
    assert plans["mmpretrain"]["left_out_cases"] == {} and plans["mmpretrain"]["counts"]["cases"] == 3
