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
