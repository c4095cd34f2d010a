"""The corpus stage through our commands and nnU-Net's planner/preprocessor (issue: corpus)."""
import json
import os
import pickle
import shutil

import numpy as np

from conftest import CORPUS_ID, SEG_ID, run_cli
from nnunet_mmpretrain.corpus.manifest import load_manifest, save_manifest
from nnunet_mmpretrain.planning.compat import topology_differences

CORPUS = "Dataset992_PhantomCorpus"


def test_plans_are_single_channel_resenc_with_corpus_block(planned_corpus):
    p = planned_corpus["plans"]
    assert list(p["configurations"]) == ["3d_fullres"]
    c = p["configurations"]["3d_fullres"]
    assert c["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert c["normalization_schemes"] == ["ZScoreNormalization"] and len(c["use_mask_for_norm"]) == 1
    assert c["data_identifier"] == "mmPretrainPlans_3d_fullres"
    b = p["mmpretrain"]
    assert b["encoder_input_channels"] == 1 and b["planner"] == "nnUNetPlannerMMPretrainResEncM"
    assert b["counts"]["cases_per_source"] == {"phantom_brats": 3, "phantom_ixi": 3}
    assert b["counts"]["scans_per_modality"] == {"t1": 6, "t1c": 3, "t2": 6, "flair": 3, "pd": 3}
    assert set(b["intensity_per_modality"]) == {"t1", "t1c", "t2", "flair", "pd"}
    assert b["atlas_registered"] is True
    fp = json.load(open(os.path.join(planned_corpus["folder"], "dataset_fingerprint.json")))
    assert len(fp["spacings"]) == 6 and all(np.allclose(s, 3.0) for s in fp["spacings"])
    assert 0 < fp["median_relative_size_after_cropping"] < 1


def test_each_case_keeps_its_modalities_crop_box_and_zscore(planned_corpus):
    import blosc2
    man = load_manifest(os.path.join(planned_corpus["nnUNet_raw"], CORPUS))
    index = json.load(open(os.path.join(planned_corpus["folder"], "corpus_cases.json")))
    use_mask = planned_corpus["plans"]["configurations"]["3d_fullres"]["use_mask_for_norm"][0]
    assert use_mask   # brain MRI with background: nnU-Net normalises inside the nonzero mask
    for case in man.cases:
        props = pickle.load(open(os.path.join(planned_corpus["data"], case.case_id + ".pkl"), "rb"))
        data = blosc2.open(os.path.join(planned_corpus["data"], case.case_id + ".b2nd"))[:]
        assert props["modalities"] == case.modalities == index[case.case_id]["modalities"]
        assert props["source"] == case.source
        assert data.shape[0] == len(case.modalities)
        assert len(props["bbox_used_for_cropping"]) == 3 and len(props["shape_before_cropping"]) == 3
        seg = blosc2.open(os.path.join(planned_corpus["data"], case.case_id + "_seg.b2nd"))[:]
        brain = seg[0] >= 0
        for ch in range(data.shape[0]):   # nnU-Net z-score per channel
            region = data[ch][brain]
            assert abs(region.mean()) < 0.05 and abs(region.std() - 1) < 0.05
            assert np.all(data[ch][~brain] == 0)


def test_rerun_skips_finished_and_redoes_missing(planned_corpus):
    victim = os.path.join(planned_corpus["data"], "ixi_0000.pkl")
    os.remove(victim)
    os.makedirs(os.path.join(planned_corpus["data"], ".partial"), exist_ok=True)
    open(os.path.join(planned_corpus["data"], ".partial", "ixi_0001_1.b2nd"), "w").close()  # a killed run's debris
    r = run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", str(CORPUS_ID), "-np", "1"])
    assert "preprocessed 1 cases (5 already done)" in r.stdout
    plans = json.load(open(os.path.join(planned_corpus["folder"], "mmPretrainPlans.json")))
    assert "3d_tiny" in plans["configurations"]    # configurations added by the user survive re-planning
    assert os.path.isfile(victim)
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    assert sorted(nnUNetDatasetBlosc2.get_identifiers(planned_corpus["data"])) == \
        [f"brats_{i:04d}" for i in range(3)] + [f"ixi_{i:04d}" for i in range(3)]
    assert not os.path.exists(os.path.join(planned_corpus["data"], ".partial"))


def test_like_preset_copies_downstream_topology(planned_seg, planned_corpus, tmp_path):
    plans_path = os.path.join(planned_corpus["folder"], "mmPretrainPlans.json")
    shutil.copy(plans_path, tmp_path / "keep.json")
    r = run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", str(CORPUS_ID), "--plan-only",
                 "--like", planned_seg["plans_file"], "--like-config", "3d_tiny"])
    assert "plans:" in r.stdout
    like = json.load(open(os.path.join(planned_corpus["folder"], "mmPretrainPlans.json")))
    down = json.load(open(planned_seg["plans_file"]))
    from nnunet_mmpretrain.planning.compat import resolved_configuration
    assert topology_differences(like["configurations"]["3d_fullres"]["architecture"],
                                resolved_configuration(down, "3d_tiny")["architecture"]) == []
    assert like["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    assert like["mmpretrain"]["like"]["configuration"] == "3d_tiny"
    shutil.copy(tmp_path / "keep.json", plans_path)   # the other tests use the default plans


def test_transfer_takes_downstream_channels_and_refuses_other_topologies(planned_corpus, planned_seg):
    r = run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(SEG_ID)])
    out = json.load(open(r.stdout.strip().split("plans: ")[-1]))
    pre = planned_corpus["plans"]["configurations"]["3d_fullres"]
    c = out["configurations"]["3d_fullres"]
    assert c["architecture"] == pre["architecture"] and c["patch_size"] == pre["patch_size"]
    assert c["normalization_schemes"] == ["ZScoreNormalization"] * 4 and len(c["use_mask_for_norm"]) == 4
    assert set(out["foreground_intensity_properties_per_channel"]) == {"0", "1", "2", "3"}
    assert out["dataset_name"] == "Dataset990_PhantomBraTS" and "mmpretrain" not in out
    assert out["mmpretrain_transfer"]["downstream_channels"]["1"] == "T1ce"
    bad = run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(SEG_ID),
                   "-tp", "mmTransferChecked", "--check-against", "nnUNetPlans"], check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "network class" in bad.stderr and "does not fit" in bad.stderr


def test_topology_differences_name_the_stage():
    a = {"network_class_name": "X", "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32],
                                                    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                                                    "kernel_sizes": [[3, 3, 3]] * 3}}
    b = json.loads(json.dumps(a))
    assert topology_differences(a, b) == []
    b["arch_kwargs"]["strides"][2] = [2, 2, 1]
    b["arch_kwargs"]["features_per_stage"] = [8, 16, 32, 64]
    d = topology_differences(a, b)
    assert "stage 2 strides: pretraining [2, 2, 2] vs downstream [2, 2, 1]" in d
    assert any(x.startswith("features_per_stage: 3 stages in pretraining vs 4") for x in d)


def _corpus_copy(nnunet_dirs, new_id, mutate):
    src = os.path.join(nnunet_dirs["nnUNet_raw"], CORPUS)
    dst = os.path.join(nnunet_dirs["nnUNet_raw"], f"Dataset{new_id}_BadCorpus")
    shutil.rmtree(dst, ignore_errors=True)
    man = load_manifest(src)
    for c in man.cases:
        c.images = {m: man.path(c, m) for m in c.images}
    mutate(man, dst)
    os.makedirs(dst, exist_ok=True)
    save_manifest(man, dst)
    return dst


def test_bad_case_stops_with_path_or_is_skipped(nnunet_dirs, planned_corpus):
    def drop_file(man, dst):
        man.cases[1].images["t1"] = os.path.join(dst, "missing_t1.nii.gz")
    _corpus_copy(nnunet_dirs, 981, drop_file)
    r = run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", "981", "--plan-only"], check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing_t1.nii.gz" in r.stderr and "--skip-bad" in r.stderr
    assert not os.path.exists(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset981_BadCorpus",
                                           "mmPretrainPlans.json"))
    r = run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", "981", "--plan-only", "--skip-bad", "-np", "1"])
    plans = json.load(open(os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset981_BadCorpus",
                                        "mmPretrainPlans.json")))
    assert plans["mmpretrain"]["counts"]["cases"] == 5
    assert list(plans["mmpretrain"]["left_out_cases"]) == ["brats_0001"]
