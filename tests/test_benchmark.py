"""Benchmark runner: statistics against scipy, patient-level splits, label budgets, the leakage
guard, suite validation, and ``nnUNetv2_mmpretrain_benchmark phantom-smoke`` end to end (real
nnU-Net commands: phantoms, corpus planning, pretraining, export, plan transfer, 6 training cells
with nnU-Net's validation, the leaderboard)."""
import csv
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import run_cli

from nnunet_mmpretrain.benchmark import splits as sp
from nnunet_mmpretrain.io_utils import sha256_file
from nnunet_mmpretrain.transfer.bundle_format import load_weights_only

SEG = "Dataset990_PhantomBraTS"
BRATS = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(1, 13) for t in range(2 if p % 3 == 0 else 1)]


def test_patient_level_folds_keep_time_points_together():
    assert sp.patient_of("BraTS-GLI-00003-001") == "BraTS-GLI-00003" == sp.patient_of("BraTS-GLI-00003-000")
    assert sp.patient_of("phantom_0001") == "phantom_0001"
    folds = sp.kfold(BRATS, 5)
    assert sorted(c for f in folds for c in f["val"]) == sorted(BRATS)          # every case validated once
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        sp.check_patient_disjoint(f)                                            # raises if a patient straddles
        for p in ("BraTS-GLI-00003", "BraTS-GLI-00006", "BraTS-GLI-00009", "BraTS-GLI-00012"):
            sides = {("val" if c in f["val"] else "train") for c in BRATS if c.startswith(p)}
            assert len(sides) == 1, (p, f)
    assert folds == sp.kfold(BRATS, 5)                                          # deterministic
    with pytest.raises(ValueError, match="both sides"):
        sp.check_patient_disjoint({"train": ["BraTS-GLI-00003-000"], "val": ["BraTS-GLI-00003-001"]})
    with pytest.raises(ValueError, match="patients cannot fill"):
        sp.kfold(BRATS[:3], 5)


def test_label_budgets_subsample_training_patients_only_reproducibly_and_nested():
    def split(frac, seed, kind="fraction"):
        return sp.cell_split(BRATS, 3, 1, kind, frac, 525, seed)
    full, s40, s20 = split(1.0, 0), split(0.4, 0), split(0.2, 0)
    assert full["train"] == full["all_train"]
    assert s20["val"] == s40["val"] == full["val"]                               # validation untouched
    assert set(s20["train"]) < set(s40["train"]) < set(full["train"])            # nested budgets
    n_pat = len(sp.group_by_patient(full["train"]))
    assert len(sp.group_by_patient(s40["train"])) == round(0.4 * n_pat)
    assert split(0.4, 0) == s40                                                  # reproducible per fold/seed
    assert len({tuple(split(0.4, s)["train"]) for s in range(6)}) > 1            # seeds draw different subsets
    for s in (s20, s40):                                                         # whole patients only
        pats = sp.group_by_patient(s["train"])
        assert all(len(cs) == len([c for c in BRATS if sp.patient_of(c) == p]) for p, cs in pats.items())
    n4 = split(4, 2, "cases")
    assert len(n4["train"]) in (4, 5) and set(n4["train"]) <= set(full["train"])  # 4 cases, or 5 with a 2-visit patient


# ------------------------------------------------------------------------------------ leakage guard
def _corpus(raw, cid, cases):
    """A corpus whose cases are {case_id: {modality: image path}}."""
    from nnunet_mmpretrain.corpus.manifest import CorpusCase, CorpusManifest, save_manifest
    folder = os.path.join(raw, f"Dataset{cid}_LeakCorpus")
    os.makedirs(folder, exist_ok=True)
    man = CorpusManifest(name="LeakCorpus", cases=[CorpusCase(case_id=c, images=im, subject=c, session="ses-1",
                                                              source="s") for c, im in cases.items()],
                         sources={"s": {}}, root=folder)
    save_manifest(man, folder)
    return folder


def test_leakage_guard_by_id_and_by_content(phantom_raw, tmp_path):
    import nibabel as nib
    from nnunet_mmpretrain.benchmark.leakage import corpus_index, dataset_case_images, find_leaks
    raw_ds = os.path.join(phantom_raw, SEG)
    ev = dataset_case_images(raw_ds, ["phantom_0001", "phantom_0002"])
    assert [len(v) for v in ev.values()] == [4, 4]
    src = nib.load(ev["phantom_0002"][0])                        # same voxels, other dtype, name and compression
    copy = str(tmp_path / "renamed.nii")
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj).astype(np.float32), src.affine), copy)
    other = ev["phantom_0001"][0].replace("phantom_0001", "phantom_0003")
    clean = corpus_index(_corpus(str(tmp_path / "a"), 993, {"c0": {"t1": other}}))
    assert find_leaks(ev, clean) == []
    by_id = corpus_index(_corpus(str(tmp_path / "b"), 993, {"phantom_0001": {"t1": other}}))
    assert find_leaks(ev, by_id) == ["phantom_0001: id 'phantom_0001' is corpus case 'phantom_0001'"]
    by_hash = corpus_index(_corpus(str(tmp_path / "c"), 993, {"c0": {"t1": copy}}))
    assert find_leaks(ev, by_hash) == ["phantom_0002: image phantom_0002_0000.nii.gz equals corpus image c0/t1"]
    brats = corpus_index(_corpus(str(tmp_path / "d"), 993, {"BraTS-GLI-00007-000": {"t1": other}}))
    leaks = find_leaks({"BraTS-GLI-00007-001": []}, brats)      # another time point of the same patient
    assert leaks == ["BraTS-GLI-00007-001: id 'BraTS-GLI-00007' is corpus case 'BraTS-GLI-00007-000'"]


def _suite(tmp_path, **over):
    s = {"format": "nnunet_mmpretrain.suite/1", "name": "leak", "corpus": {"dataset": 993},
         "plans": "mmPretrainPlans", "configuration": "3d_bench",
         "datasets": [{"id": 990, "convert": "nnUNetv2_mmpretrain_make_phantoms --what seg"}],
         "num_folds": 3, "folds": [0], "seeds": [0, 1], "schedule": {"epochs": 1, "iterations": 1, "val_iterations": 1},
         "presets": {"cpu-smoke": "presets/cpu-smoke.json"},
         "methods": {"scratch": {"finetune": "scratch"}, "pretrained": {"finetune": "pretrained", "pretraining": "cpu-smoke"}}}
    s.update(over)
    path = str(tmp_path / f"{s['name']}.json")
    with open(path, "w") as f:
        json.dump(s, f)
    return path


def test_runner_refuses_a_cell_whose_validation_case_is_in_the_corpus(phantom_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    os.symlink(os.path.join(phantom_raw, SEG), raw / SEG)
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(phantom_raw, SEG, "labelsTr")))
    val = sp.kfold(cases, 3)[0]["val"][0]
    img = os.path.join(phantom_raw, SEG, "imagesTr", f"{val}_0002.nii.gz")
    _corpus(str(raw), 993, {"subject_x": {"t2": img}})
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp_path / "pre")}
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", _suite(tmp_path), "--out", str(tmp_path / "out")], env=env, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "cell D990_frac100_fold0_seed0_pretrained" in err[0]
    assert f"{val}: image {val}_0002.nii.gz equals corpus image subject_x/t2" in err[0]
    assert not os.path.isdir(tmp_path / "out" / "cells")                      # refused before any training
    assert not os.path.isdir(tmp_path / "out" / "pretraining")


@pytest.mark.parametrize("change, expect", [
    ({"seedz": [0]}, "leak.json: seedz: unknown key"),
    ({"methods": {"scratch": {"finetune": "scratch"}, "x": {"finetune": "frozen"}}},
     "leak.json: methods.x.finetune: unknown method 'frozen'; use one of scratch, pretrained"),
    ({"methods": {"pretrained": {"finetune": "pretrained", "pretraining": "cpu-smoke"}}},
     "leak.json: methods: needs a 'scratch' method"),
    ({"seeds": [0], "folds": [0]}, "leak.json: seeds: a single run per method gives no spread"),
    ({"methods": {"scratch": {"finetune": "scratch", "labelled_cases": [4]}}},
     "leak.json: methods.scratch.labelled_cases: 4 cases is not a label budget of the suite (100 %)"),
])
def test_bad_suites_exit_2_with_one_line_naming_file_and_key(tmp_path, change, expect):
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", _suite(tmp_path, **change), "--dry-run"], check=False)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr


def test_missing_dataset_exits_2_with_the_fix(tmp_path):
    (tmp_path / "raw").mkdir()
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre")}
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", _suite(tmp_path), "--dry-run"], env=env, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "leak.json: datasets[0]: no Dataset990_* " in r.stderr and "make_phantoms --what seg" in r.stderr
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", "no-such-suite"], check=False)
    assert r.returncode == 2 and "no-such-suite: no such suite file; use a JSON path or one of" in r.stderr
    assert "phantom-smoke" in r.stderr


def test_late_gain_reads_nnunet_logs_of_both_numpy_formats_and_resumed_runs():
    from nnunet_mmpretrain.benchmark.convergence import late_gain, mean_pseudo_dice

    def log(epochs, fmt):
        return "\n".join(f"2026-12-02 21:11:{e:02d}.1: Epoch {e} \n2026-12-02 21:11:{e:02d}.2: train_loss -0.1\n"
                         f"2026-12-02 21:11:{e:02d}.3: Pseudo dice [{fmt(d)}] " for e, d in epochs)

    rising = [(e, [min(1.0, 0.05 * e), float("nan")]) for e in range(12)]
    new = log(rising, lambda d: ", ".join(f"np.float32({x})" for x in d))        # numpy >= 2 repr
    old = log(rising, lambda d: ", ".join(str(x) for x in d))                       # numpy 1 repr
    assert mean_pseudo_dice([new]) == mean_pseudo_dice([old]) == [0.05 * e for e in range(12)]
    # last 3 epochs (0.45, 0.5, 0.55) minus the 3 before (0.3, 0.35, 0.4): still rising by 0.15
    assert late_gain(mean_pseudo_dice([new])) == pytest.approx(0.15)
    flat = log([(e, [0.7]) for e in range(12)], lambda d: ", ".join(map(str, d)))
    assert late_gain(mean_pseudo_dice([flat])) == pytest.approx(0.0)
    # a resumed run logs epochs again in a second file: its lines win
    resumed = log([(e, [0.7]) for e in range(9, 12)], lambda d: ", ".join(map(str, d)))
    assert mean_pseudo_dice([new, resumed])[9:] == [0.7, 0.7, 0.7]
    assert np.isnan(late_gain([0.1, 0.2, 0.3]))                                     # too short to judge


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "smoke")
    dry = run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", out, "--dry-run"])
    assert not os.path.exists(out)
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", out], timeout=1200)
    return {"out": out, "stdout": r.stdout, "dry": dry.stdout}


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_suite_end_to_end_leaderboard(smoke):
    out = smoke["out"]
    assert "[8/8] D990_frac100_fold0_seed1_supervised_frozen" in smoke["dry"]
    assert "nnUNetv2_train 990 3d_bench 0 -tr nnUNetTrainerMMBench_pretrainedFrozen -p mmPretrainPlans" in smoke["dry"]
    assert re.search(r"\[3/8\] D990_frac100_fold0_seed0_random_frozen: done in \d+ s", smoke["stdout"])
    lb = os.path.join(out, "leaderboard")
    rows = _rows(os.path.join(lb, "leaderboard.csv"))
    methods = {"scratch", "pretrained_frozen", "random_frozen", "supervised_frozen"}
    regions = {"whole tumor", "tumor core", "enhancing tumor", "mean"}
    assert {(r["method"], r["region"]) for r in rows} == {(m, g) for m in methods for g in regions}
    for r in rows:
        assert r["runs"] == "2" and r["evaluation"] == "cv" and r["n_cases"] == "2"
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", r["mean_pm_std"]), r
        assert 0 <= float(r["mean"]) <= 100
        if r["method"] != "scratch":
            assert 0 < float(r["p_wilcoxon"]) <= 1
            if r["region"] == "mean":
                assert float(r["ci95_low"]) <= float(r["delta_vs_scratch"]) <= float(r["ci95_high"])
        else:
            assert r["p_wilcoxon"] == r["delta_vs_scratch"] == ""
    comps = _rows(os.path.join(lb, "comparisons.csv"))
    assert {(c["method"], c["baseline"]) for c in comps} >= {("pretrained_frozen", "random_frozen"),
                                                             ("pretrained_frozen", "scratch")}
    md = open(os.path.join(lb, "leaderboard.md")).read()
    assert "| labels | method | region | runs | mean ± std | Δ vs scratch | p (Wilcoxon) | 95 % CI of Δ |" in md
    assert "internal cross-validation" in md and "## Other paired comparisons" in md
    # the per-run table: its runs average to the leaderboard's mean
    assert "| labels | method | fold 0 seed 0 | fold 0 seed 1 |" in md
    for r in (r for r in rows if r["region"] == "mean"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| 100 % | {r['method']} | ") and ln.count("|") == 5)
        runs = [float(x) for x in line.strip("| ").split(" | ")[2:]]
        assert len(runs) == 2 and abs(np.mean(runs) - float(r["mean"])) < 0.06, (line, r["mean"])
    # the controls: the share of the positive control's gain, and the validity line (2 runs: never valid)
    share = {r["method"]: r["share_of_control"] for r in rows if r["region"] == "mean"}
    assert float(share["random_frozen"]) == 0.0 and abs(float(share["supervised_frozen"]) - 1.0) < 1e-9
    assert "## Can this testbed tell encoders apart? (controls)" in md
    assert re.search(r"- cv, 100 %: supervised_frozen vs random_frozen: Δ -?\d+\.\d Dice .*2 paired runs.*\*\*NOT VALID\*\*", md)
    # one-epoch cells cannot be judged for convergence: the file has its header and no row
    assert open(os.path.join(lb, "convergence.csv")).read() == "dataset,labels,method,epochs,runs,late_gain_mean," \
                                                               "late_gain_std,rising_runs\n"
    assert "Did the fine-tuning converge?" not in md
    png = os.path.join(lb, "label_efficiency.png")
    assert os.path.getsize(png) > 10_000
    import matplotlib.image as mpimg
    img = mpimg.imread(png)[..., :3]
    assert (img.min(axis=2) < 0.9).mean() > 0.02                                 # ink, not a blank canvas
    assert len(np.unique((img * 8).astype(int).reshape(-1, 3), axis=0)) >= 6     # several colours (methods)
    # split files written and hashed beside the leaderboard
    for line in open(os.path.join(lb, "splits.sha256")).read().split("\n")[:-1]:
        digest, rel = line.split("  ")
        assert sha256_file(os.path.join(out, rel)) == digest and digest in md
        split = json.load(open(os.path.join(out, rel)))
        assert len(split["train"]) == 4 and len(split["val"]) == 2 and not set(split["train"]) & set(split["val"])


def test_smoke_cells_use_their_own_results_and_the_frozen_encoders(smoke):
    import torch
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    out = smoke["out"]
    bundle = load_bundle(os.path.join(out, "pretraining", "cpu-smoke", "bundle"))

    def final(cell):
        cj = json.load(open(os.path.join(out, "cells", cell, "cell.json")))
        fold = os.path.join(out, "cells", cell, "nnUNet_results", SEG, f"{cj['trainer']}__mmPretrainPlans__3d_bench",
                            "fold_0")
        assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
        return load_weights_only(os.path.join(fold, "checkpoint_final.pth"), "checkpoint")["network_weights"], fold
    stage_keys = [k for k in bundle["encoder"] if k.startswith("encoder.stages.") and k.endswith(".weight")]
    assert len(stage_keys) > 10
    frozen, fold = final("D990_frac100_fold0_seed0_pretrained_frozen")
    assert os.path.isfile(os.path.join(fold, "pretrained_weights_report.json"))
    assert all(torch.equal(frozen[k], bundle["encoder"][k]) for k in stage_keys)  # loaded and kept fixed
    scratch, _ = final("D990_frac100_fold0_seed0_scratch")
    assert not any(torch.equal(scratch[k], bundle["encoder"][k]) for k in stage_keys)
    # the positive control: the stages of the nnU-Net model trained with labels on the pool, kept fixed
    pool_ck = os.path.join(out, "pretraining", "supervised-smoke", "nnUNet_results", "Dataset989_PhantomPool",
                           "nnUNetTrainerMMBench__mmPretrainPlans__3d_bench", "fold_all", "checkpoint_final.pth")
    pool = load_weights_only(pool_ck, "checkpoint")["network_weights"]
    sup = load_bundle(os.path.join(out, "pretraining", "supervised-smoke", "bundle"))
    assert sup["stem_origin"] == "supervised" and sup["modalities_trained"] == ["t1", "t1c", "t2", "flair"]
    assert all(torch.equal(sup["encoder"][k], pool[k]) for k in stage_keys)
    w = "encoder.stem.convs.0.conv.weight"
    assert torch.allclose(torch.cat([sup["stems"][m][w] for m in sup["modalities_trained"]], 1) / 4, pool[w])
    positive, _ = final("D990_frac100_fold0_seed0_supervised_frozen")
    assert all(torch.equal(positive[k], pool[k]) for k in stage_keys)
    rnd, fold = final("D990_frac100_fold0_seed0_random_frozen")
    assert not os.path.isfile(os.path.join(fold, "pretrained_weights_report.json"))
    log = open(os.path.join(out, "cells", "D990_frac100_fold0_seed0_random_frozen", "train.log")).read()
    assert "encoder frozen: " in log and "benchmark cell: seed 0" in log


def test_a_cell_resumed_by_hand_with_plain_nnunet_continues_with_its_recorded_settings(smoke, tmp_path):
    """The cell's settings live in its fold folder and its checkpoint: ``nnUNetv2_train ... --c``
    with no environment variables continues with them; other settings are refused in one line."""
    import glob
    import torch
    from nnunet_mmpretrain.benchmark import cell_settings as cs
    out, cell = smoke["out"], "D990_frac100_fold0_seed1_pretrained_frozen"
    trainer = "nnUNetTrainerMMBench_pretrainedFrozen"
    results = str(tmp_path / "results")
    shutil.copytree(os.path.join(out, "cells", cell, "nnUNet_results"), results)
    fold = os.path.join(results, SEG, f"{trainer}__mmPretrainPlans__3d_bench", "fold_0")
    rec = json.load(open(os.path.join(fold, cs.FILE)))
    assert rec["schedule"]["epochs"] == 1 and rec["schedule"]["iterations"] == 3 and rec["seed"] == 1
    assert len(rec["split"]["train"]) == 4 and len(rec["split"]["val"]) == 2 and rec["freeze_encoder"] is True
    assert rec["stem"] == "modality" and rec["bundle"].endswith(os.path.join("pretraining", "cpu-smoke", "bundle"))
    ck = load_weights_only(os.path.join(fold, "checkpoint_final.pth"), "checkpoint")
    assert ck["init_args"][cs.CHECKPOINT_KEY]["seed"] == 1
    assert ck["init_args"][cs.CHECKPOINT_KEY]["split_sha256"] == rec["split_sha256"]
    env = {k: v for k, v in os.environ.items() if k not in (cs.ENV_SCHEDULE, cs.ENV_SPLIT, cs.ENV_SEED, cs.ENV_BUNDLE,
                                                            cs.ENV_STEM)}
    env.update(nnUNet_results=results, nnUNet_raw=os.path.join(out, "nnUNet_raw"), nnUNet_n_proc_DA="0",
               nnUNet_preprocessed=os.path.join(out, "nnUNet_preprocessed"))
    cmd = ["nnUNetv2_train", "990", "3d_bench", "0", "-tr", trainer, "-p", "mmPretrainPlans", "-device", "cpu", "--c"]

    def resume(extra=None):
        logs = set(glob.glob(os.path.join(fold, "training_log_*.txt")))
        r = run_cli(cmd, env=dict(env, **(extra or {})), check=False, timeout=600)
        new = sorted(set(glob.glob(os.path.join(fold, "training_log_*.txt"))) - logs)
        return r, "".join(open(f).read() for f in new)

    os.remove(os.path.join(fold, "validation", "summary.json"))
    r, log = resume()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "benchmark cell: seed 1, schedule Schedule(epochs=1, iterations=3" in log, log[-2000:]
    assert "4 training and 2 validation cases" in log and "encoder frozen" in log and "Epoch 1" not in log
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
    # an override that changes the schedule: a warning naming it, then one line and exit 2
    r, _ = resume({cs.ENV_SCHEDULE: json.dumps({"epochs": 5, "iterations": 3, "val_iterations": 1})})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"OVERRIDE: ${cs.ENV_SCHEDULE}" in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "checkpoint_final.pth" in err[0] and "schedule" in err[0], r.stderr[-2000:]
    # without the settings file the trainer would fall back to nnU-Net's 1000 epochs and split: refused
    os.remove(os.path.join(fold, cs.FILE))
    r, _ = resume()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and all(k in err[0] for k in ("schedule", "split_sha256", "seed")), err


def test_smoke_rerun_skips_finished_cells_resumes_one_and_regenerates_the_leaderboard(smoke):
    out = smoke["out"]
    done = {c: os.path.getmtime(os.path.join(out, "cells", c, "done.json")) for c in os.listdir(os.path.join(out, "cells"))}
    csv_before = open(os.path.join(out, "leaderboard", "leaderboard.csv")).read()
    # a "crashed" cell: trained, but validation and the done marker are missing -> --c finishes it
    cell = "D990_frac100_fold0_seed1_scratch"
    fold = os.path.join(out, "cells", cell, "nnUNet_results", SEG, "nnUNetTrainerMMBench__mmPretrainPlans__3d_bench",
                        "fold_0")
    shutil.rmtree(os.path.join(fold, "validation"))
    os.remove(os.path.join(out, "cells", cell, "done.json"))
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", out, "--cell", cell])
    assert f"[1/1] {cell}: resuming from its checkpoint" in r.stdout and "--c" in r.stdout
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", out])
    assert r.stdout.count("finished earlier, skipped") == 8 and "nnUNetv2_train" not in r.stdout
    for c, t in done.items():
        if c != cell:
            assert os.path.getmtime(os.path.join(out, "cells", c, "done.json")) == t   # never rewritten
    shutil.rmtree(os.path.join(out, "leaderboard"))
    run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", out, "--leaderboard-only"])
    assert open(os.path.join(out, "leaderboard", "leaderboard.csv")).read() == csv_before


def test_smoke_missing_modality_template_vs_zero_fill(smoke, tmp_path):
    """The same finished model, channel 3 (FLAIR) removed from its validation cases: filled with the
    bundle's template (nnUNetv2_mmpretrain_predict) and with zeros (nnUNetv2_predict)."""
    from nnunet_mmpretrain.benchmark.suite import PLANS_DIR
    out = smoke["out"]
    suite = json.load(open(os.path.join(PLANS_DIR, "phantom-smoke.json")))
    suite["missing_modality"] = {"methods": ["pretrained_frozen"], "channels": [3], "fills": ["template", "zero"]}
    path = str(tmp_path / "phantom-smoke-missing.json")
    json.dump(suite, open(path, "w"))
    cell = "D990_frac100_fold0_seed0_pretrained_frozen"
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", path, "--out", out, "--cell", cell])
    assert f"[1/1] {cell}: finished earlier, skipped" in r.stdout             # the training is not redone
    assert "without channel 3 (FLAIR), template fill: nnUNetv2_mmpretrain_predict" in r.stdout
    assert "without channel 3 (FLAIR), zero fill: nnUNetv2_predict" in r.stdout
    base = os.path.join(out, "cells", cell, "missing")
    assert sorted(os.listdir(os.path.join(base, "no3_template", "input"))) == sorted(
        f"{c}_{i:04d}.nii.gz" for c in ("phantom_0000", "phantom_0005") for i in range(3))  # FLAIR absent
    assert len(os.listdir(os.path.join(base, "no3_zero", "input"))) == 8                # FLAIR = zeros
    subs = json.load(open(os.path.join(base, "no3_template", "predictions", "template_substitutions.json")))
    assert "flair" in json.dumps(subs)
    rows = _rows(os.path.join(out, "leaderboard", "leaderboard.csv"))
    ev = {(r["evaluation"], r["method"]) for r in rows}
    assert {("cv-no3_template", "pretrained_frozen"), ("cv-no3_zero", "pretrained_frozen")} <= ev
    comps = _rows(os.path.join(out, "leaderboard", "comparisons.csv"))
    c = [x for x in comps if x["baseline"] == "pretrained_frozen (zero fill)" and x["region"] == "mean"]
    assert len(c) == 1 and c[0]["n_cases"] == "2" and c[0]["evaluation"] == "cv-no3"
    assert "channel 3 removed and filled with the template" in open(os.path.join(out, "leaderboard",
                                                                                  "leaderboard.md")).read()


def test_demo_suite_is_what_the_demo_runs():
    """The demo writes its pretraining where the benchmark looks for the demo suite's preset, so the
    suite must name the demo's trainer, configuration, plans and phantoms (else the benchmark would
    pretrain again or fail)."""
    from nnunet_mmpretrain import demo
    from nnunet_mmpretrain.benchmark.suite import load_suite
    s = load_suite(demo.SUITE)
    pre = s.presets[demo.PRESET]
    assert (pre.trainer, pre.configuration, pre.plans) == (demo.PRETRAINER, demo.CONFIG, demo.PLANS)
    assert (s.configuration, s.plans, s.corpus["dataset"]) == (demo.CONFIG, demo.PLANS, demo.CORPUS_ID)
    assert s.phantoms["seg_id"] == demo.SEG_ID and s.corpus["add_config"]["name"] == demo.CONFIG
    assert {m.kind for m in s.methods.values()} == {"scratch", "pretrained"}
    assert len(s.folds) * len(s.seeds) >= 2


def test_phantom_suite_runs_ablations_at_its_smallest_budget_and_long_schedules_where_they_answer():
    """Methods may name their own budgets and schedule: the ablations and the frozen long pair of
    the phantom suite run at 4 labelled cases, every other method at 4 and 8; paired cells share splits."""
    from nnunet_mmpretrain.benchmark.runner import build_cells
    from nnunet_mmpretrain.benchmark.suite import load_suite
    s = load_suite("phantom")
    cells = build_cells(s)
    at = lambda m: sorted({c.budget.tag for c in cells if c.method.name == m})
    ladder = ["frozen_mae", "frozen_cmr", "frozen_cmr_md", "frozen_cmr_md_mcl", "frozen_cmr_md_mcl_dad"]
    for m in ladder + ["pretrained_mae"]:
        assert at(m) == ["n4"], m
        assert s.presets[s.methods[m].pretraining].trainer.startswith("nnUNetTrainerMMPretrain_demo")
    for m in ("scratch", "pretrained", "pretrained_frozen", "random_frozen", "scratch_long", "pretrained_long"):
        assert at(m) == ["n4", "n8"], m
    assert len({s.methods[m].pretraining for m in ladder}) == len(ladder)    # one pretraining per rung
    assert len(cells) == len(s.folds) * (7 * 2 + 10)          # 7 methods at both budgets, 10 at n4 only
    n4 = {c.split_name for c in cells if c.budget.tag == "n4"}
    assert len(n4) == len(s.folds)
    # the long runs override the epochs only; everything else is the suite's schedule
    for m in ("scratch_long", "pretrained_long", "pretrained_frozen_long", "random_frozen_long"):
        assert s.schedule_for(s.methods[m]) == {**s.schedule, "epochs": 3 * s.schedule["epochs"]}, m
    assert at("pretrained_frozen_long") == at("random_frozen_long") == ["n4"]
    assert list(s.methods["pretrained_frozen_long"].compare_to) == ["random_frozen_long"]
    assert s.schedule_for(s.methods["scratch"]) == s.schedule


def test_every_shipped_suite_loads_and_names_trainers_nnunet_finds():
    """Each suite under plans/ validates, and every fine-tuning and pretraining trainer it names
    is found by nnU-Net's trainer lookup through our nnUNet_extTrainer shim."""
    from nnunet_mmpretrain.benchmark import prepare
    from nnunet_mmpretrain.benchmark.runner import build_cells
    from nnunet_mmpretrain.benchmark.suite import PLANS_DIR, load_suite
    names = sorted(f[:-5] for f in os.listdir(PLANS_DIR) if f.endswith(".json"))
    assert {"phantom-smoke", "phantom", "brainmvp", "demo"} <= set(names)
    trainers = set()
    for n in names:
        s = load_suite(n)
        cells = build_cells(s)
        trainers |= {c.trainer for c in cells if c.dataset.task == "segmentation"}
        trainers |= {s.presets[p].trainer for c in cells for p in s.presets_for(c.method)}
    missing = [t for t in sorted(trainers) if not prepare.trainer_exists(t)]
    assert not missing, missing
