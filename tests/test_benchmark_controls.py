"""The benchmark's controls and the multi-site testbed: the share of the positive control's gain,
the validity line, unseen-site evaluation cases, and the suite checks that guard them."""
import json
import math

import pytest

from conftest import run_cli

from nnunet_mmpretrain.benchmark.controls import share_of_control, validity, validity_lines
from nnunet_mmpretrain.benchmark.leaderboard import split_unseen, tables
from nnunet_mmpretrain.benchmark.runner import build_cells
from nnunet_mmpretrain.benchmark.suite import PLANS_DIR, load_suite


def _cell(method, fold, seed, cases, tag="n4"):
    run = {"mean": sum(cases.values()) / len(cases)}
    return {"dataset": 993, "dataset_name": "Dataset993_X", "task": "segmentation", "method": method, "fold": fold,
            "seed": seed, "budget": {"tag": tag, "label": "4 cases"},
            "scores": {"cv": (run, {"mean": dict(cases)})}}


def _cells(gap, runs=10):
    """random frozen scores 50 on every case; the positive control 50 + gap; a method 50 + gap / 2."""
    out = []
    for r in range(runs):
        fold, seed = r % 5, r // 5
        cases = {f"A_{fold}{i}": 50.0 + i for i in range(4)}
        out.append(_cell("random_frozen", fold, seed, cases))
        out.append(_cell("supervised_frozen", fold, seed, {c: v + gap for c, v in cases.items()}))
        out.append(_cell("recipe_frozen", fold, seed, {c: v + gap / 2 for c, v in cases.items()}))
        out.append(_cell("scratch", fold, seed, cases))
    return out


SUITE = {"name": "t", "methods": {m: {} for m in ("scratch", "random_frozen", "supervised_frozen", "recipe_frozen")},
         "controls": {"positive": "supervised_frozen", "random": "random_frozen", "min_gap": 5.0}}


def test_share_of_control_is_the_fraction_of_the_supervised_gain():
    assert share_of_control(60.0, 50.0, 70.0) == pytest.approx(0.5)
    assert share_of_control(45.0, 50.0, 70.0) == pytest.approx(-0.25)          # worse than random
    assert math.isnan(share_of_control(60.0, 50.0, 50.0))                     # controls equal: undefined
    rows, _ = tables(SUITE, _cells(10.0))
    share = {r["method"]: r["share_of_control"] for r in rows}
    assert share["recipe_frozen"] == pytest.approx(0.5)
    assert share["supervised_frozen"] == pytest.approx(1.0) and share["random_frozen"] == pytest.approx(0.0)


@pytest.mark.parametrize("gap, runs, valid", [(10.0, 10, True), (3.0, 10, False), (10.0, 4, False)])
def test_validity_needs_the_gap_over_ten_paired_runs(gap, runs, valid):
    v = validity(SUITE, _cells(gap, runs))
    assert len(v) == 1 and v[0]["valid"] is valid
    assert v[0]["delta"] == pytest.approx(gap) and v[0]["n_runs"] == runs
    line = "\n".join(validity_lines(v))
    assert ("**VALID**" in line) is valid and ("**NOT VALID**" in line) is (not valid)
    assert validity({"methods": SUITE["methods"]}, _cells(gap, runs)) == []     # no controls: no line


def test_unseen_site_cases_are_scored_apart():
    run = {"mean": 0.0}
    cases = {"mean": {"A_0000": 80.0, "B_0001": 60.0, "C_0000": 30.0, "D_0002": float("nan")}}
    out = split_unseen((run, cases), "^[CD]_")
    assert out["cv"][0]["mean"] == pytest.approx(70.0) and set(out["cv"][1]["mean"]) == {"A_0000", "B_0001"}
    assert out["cv-unseen"][0]["mean"] == pytest.approx(30.0)                  # NaN (lesion-free, no FP) left out
    assert set(out["cv-unseen"][1]["mean"]) == {"C_0000", "D_0002"}


def test_multisite_suite_trains_on_two_sites_and_evaluates_unseen_ones_with_controls():
    s = load_suite("multisite")
    ds = s.datasets[0]
    assert ds.unseen_regex == "^[CD]_" and s.phantoms["kind"] == "sites"
    assert set(s.phantoms["site_cases"]) == {"A", "B", "C", "D"} and sum(s.phantoms["corpus_cases"].values()) >= 200
    assert sum(s.phantoms["pool_cases"].values()) >= 40
    assert len(s.folds) * len(s.seeds) >= 10 and [b.value for b in s.budgets] == [2, 4, 8]
    sup = s.presets[s.methods["supervised_frozen"].pretraining]
    assert sup.supervised["dataset"] == s.phantoms["pool_id"] and sup.trainer == "nnUNetTrainerMMBench"
    raw = json.load(open(f"{PLANS_DIR}/multisite.json"))
    assert raw["controls"] == {"positive": "supervised_frozen", "random": "random_frozen", "min_gap": 5.0}
    pretrainers = {s.presets[p].trainer for p in ("cpu-long", "brainmvp-cpu-long", "mae-cpu-long")}
    from nnunet_mmpretrain.training import pretrain_variants as pv
    assert all(getattr(pv, t).schedule.epochs * getattr(pv, t).schedule.iterations >= 3000 for t in pretrainers)
    assert len(build_cells(s)) == 3 * 10 * len(s.methods)


def test_every_shipped_suite_with_a_pretrained_method_has_its_controls():
    """A positive control in every suite that claims anything about an encoder (the demo is a
    plumbing run of two methods; brainmvp names published numbers on real data)."""
    import os
    for n in sorted(f[:-5] for f in os.listdir(PLANS_DIR) if f.endswith(".json")):
        s = load_suite(n)
        if any(m.kind == "pretrained_frozen" for m in s.methods.values()) and n != "brainmvp":
            assert s.raw.get("controls"), n


SITES_BLOCK = {"kind": "sites", "seg_id": 990, "corpus_id": 992, "pool_id": 989, "site_cases": {"A": 2}}


def _suite(tmp_path, **phantoms):
    d = json.load(open(f"{PLANS_DIR}/phantom-smoke.json"))
    d["phantoms"] = dict(SITES_BLOCK, **phantoms) if phantoms.get("kind") == "sites" else dict(d["phantoms"], **phantoms)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(d))
    return str(path)


@pytest.mark.parametrize("change, expect", [
    ({"pool_id": 990}, "phantoms: the dataset ids seg_id=990, corpus_id=992, pool_id=990 must differ"),
    ({"num_train": -3}, "phantoms.num_train: must be at least 1, got -3"),
    ({"spacing": 0}, "phantoms.spacing: expected a voxel size of 0.5-8 mm"),
    ({"kind": "sites", "site_cases": {"Q": 2}}, "phantoms.site_cases.Q: unknown site"),
    ({"kind": "sites", "site_cases": {"A": -1}}, "phantoms.site_cases.A: must be at least 0"),
    ({"seg_id": 1200}, "phantoms.seg_id: dataset ids are 1..999"),
])
def test_bad_phantoms_block_exits_2_with_one_line(tmp_path, change, expect):
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", _suite(tmp_path, **change), "--dry-run"], check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expect in r.stderr, r.stderr


def test_a_changed_suite_is_refused_on_a_finished_output_folder(tmp_path):
    """The cells of an output folder were run with its suite.json: re-running a suite whose schedule
    or methods changed would mix settings under one leaderboard header, so it exits 2 naming what
    changed; adding a method is fine."""
    from nnunet_mmpretrain.benchmark.runner import changed_settings
    d = json.load(open(f"{PLANS_DIR}/phantom-smoke.json"))
    old = dict(d, schedule=dict(d["schedule"], epochs=7))
    out = tmp_path / "out"
    out.mkdir()
    (out / "suite.json").write_text(json.dumps(old))
    r = run_cli(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--out", str(out)], check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "suite.json: the suite's schedule changed since the results here were made; use a new --out" in r.stderr
    assert json.loads((out / "suite.json").read_text()) == old                    # not rewritten
    assert not (out / "nnUNet_raw").exists()
    grown = dict(d, methods=dict(d["methods"], extra={"finetune": "scratch"}))
    assert changed_settings(d, grown) == []
    edited = dict(d, methods=dict(d["methods"], scratch={"finetune": "random_frozen"}))
    assert changed_settings(d, edited) == ["methods.scratch"]
