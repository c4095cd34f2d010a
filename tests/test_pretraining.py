"""The pretraining stage through nnU-Net: training, resume, DDP on CPU, export, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import CORPUS_ID, PRETRAINER as TRAINER, TINY, pretrain_fold as _fold_dir, run_cli


def _trainer(planned_corpus, trainer=TRAINER, config="3d_tiny", plans="mmPretrainPlans"):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(CORPUS_ID), config, "all", trainer, plans, device=torch.device("cpu"))


def test_pretraining_runs_through_nnunet_train(pretrained):
    fold = pretrained["fold"]
    ck = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=True)
    assert ck["current_epoch"] == 5 and ck["trainer_name"] == TRAINER
    log = ck["mm_log"]
    for k in ("train_loss", "train_l_md", "train_l_cmr", "val_loss", "val_md_masked_mse", "val_cmr_masked_mse",
              "val_cmr_baseline_fill", "lr"):
        assert len(log[k]) == 5 and np.all(np.isfinite(log[k])), k
    # validation runs on fixed patches and masks: the baselines do not move between epochs
    for k in ("val_md_baseline_patch_mean", "val_cmr_baseline_patch_mean", "val_cmr_baseline_fill"):
        assert np.ptp(log[k]) < 1e-6, (k, log[k])
    assert np.ptp(log["val_md_masked_mse"]) > 0             # ... while the network's error does
    assert log["train_l_mcl"][-1] > 0 and log["train_l_mcl"][0] == 0     # MCL switched on after 2/3
    assert ck["mmpretrain"]["modalities_seen"] == ["flair", "pd", "t1", "t1c", "t2"]
    t = ck["network_weights"]["templates.templates"]
    from nnunet_mmpretrain.modalities import MODALITIES
    for i, m in enumerate(MODALITIES):   # templates of corpus modalities start at their mean, others at 0
        assert (float(t[i].abs().max()) > 0) == (m in ck["mmpretrain"]["modalities_seen"]), m
    for f in ("progress_pretrain.png", "montage_pretrain.png", "pretraining_summary/summary.json",
              "pretraining_summary/templates/template_t1c.nii.gz"):
        assert os.path.isfile(os.path.join(fold, f)), f


def test_stems_are_per_modality(pretrained):
    sd = torch.load(os.path.join(pretrained["fold"], "checkpoint_final.pth"), weights_only=True)["network_weights"]
    stem_keys = sorted(k for k in sd if k.startswith("stems.2."))   # t1c
    assert stem_keys and not any(k.startswith("encoder.stem.") and "weight" in k for k in sd)
    w_t1c, w_mra = sd[stem_keys[0]], sd["stems.4." + stem_keys[0][len("stems.2."):]]
    assert not torch.equal(w_t1c, sd["stems.1." + stem_keys[0][len("stems.2."):]])  # t1c trained apart from t1
    assert w_mra.shape == w_t1c.shape


def test_resume_after_kill_continues_with_templates_intact(planned_corpus, tmp_path, monkeypatch):
    """Kill a run after its first checkpoint, resume with --c: it continues from that epoch and the
    templates are loaded exactly (BrainMVP's release loses them on resume)."""
    env = dict(os.environ, nnUNet_results=str(tmp_path), nnUNet_n_proc_DA="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    cmd = ["nnUNetv2_train", str(CORPUS_ID), "3d_tiny", "all", "-tr", TRAINER, "-p", "mmPretrainPlans", "-device", "cpu"]
    fold = _fold_dir(str(tmp_path))
    latest = os.path.join(fold, "checkpoint_latest.pth")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not os.path.isfile(latest) and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.isfile(latest), "no checkpoint_latest.pth before the kill"
    saved = torch.load(latest, weights_only=True)
    epoch = saved["current_epoch"]
    assert 0 < epoch < 5
    with monkeypatch.context() as mp:
        mp.setenv("nnUNet_results", str(tmp_path))
        tr = _trainer(planned_corpus)
        tr.load_checkpoint(latest)
        assert torch.equal(tr._net().templates.templates.detach(), saved["network_weights"]["templates.templates"])
        assert tr.current_epoch == epoch and tr.mm_log["train_loss"] == saved["mm_log"]["train_loss"]
        restored, stored = tr.optimizer.state_dict()["state"], saved["optimizer_state"]["state"]
        assert restored.keys() == stored.keys()
        assert all(torch.equal(restored[i]["exp_avg"], stored[i]["exp_avg"]) for i in stored)
    subprocess.run(cmd + ["--c"], env=env, check=True, capture_output=True)
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=True)
    assert final["current_epoch"] == 5
    assert final["mm_log"]["train_loss"][:epoch] == saved["mm_log"]["train_loss"][:epoch]
    logs = sorted(f for f in os.listdir(fold) if f.startswith("training_log"))
    assert f"Epoch {epoch}" in open(os.path.join(fold, logs[-1])).read()


def test_resume_with_other_plans_is_refused(pretrained, planned_corpus):
    from nnunet_mmpretrain.planning.tiny import add_tiny_configuration
    from nnunet_mmpretrain.training.pretrain import PretrainingError
    # a copy of the session's plans under another name, so no other test sees the new configuration
    wide = os.path.join(os.path.dirname(planned_corpus["plans_file"]), "mmPretrainPlansWideCheck.json")
    with open(planned_corpus["plans_file"]) as f:
        plans = json.load(f)
    with open(wide, "w") as f:
        json.dump({**plans, "plans_name": "mmPretrainPlansWideCheck"}, f)
    add_tiny_configuration(wide, "3d_tiny_wide", patch_size=(32, 32, 32), features=(16, 32, 64), batch_size=2)
    tr = _trainer(planned_corpus, config="3d_tiny_wide", plans="mmPretrainPlansWideCheck")
    with pytest.raises(PretrainingError) as e:
        tr.load_checkpoint(os.path.join(pretrained["fold"], "checkpoint_final.pth"))
    assert "other plans" in str(e.value) and "3d_tiny" in str(e.value)


def test_two_process_cpu_ddp(planned_corpus, tmp_path):
    r = run_cli(["nnUNetv2_mmpretrain_train_ddp", str(CORPUS_ID), "3d_tiny", "all", "-tr", TRAINER, "-nproc", "2"],
                env={"nnUNet_results": str(tmp_path)})
    ck = torch.load(os.path.join(_fold_dir(str(tmp_path)), "checkpoint_final.pth"), weights_only=True)
    assert ck["current_epoch"] == 5 and ck["objective"]["gather"] is True
    assert np.all(np.isfinite(ck["mm_log"]["train_loss"])) and ck["mm_log"]["train_l_mcl"][-1] > 0
    assert "The world size is 2" in r.stdout


def test_export_bundle_loads_weights_only_and_matches_nnunet_keys(pretrained, tmp_path):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    run_cli(["nnUNetv2_mmpretrain_export", os.path.join(pretrained["fold"], "checkpoint_final.pth"),
             "-o", str(tmp_path / "bundle")])
    b = load_bundle(str(tmp_path / "bundle"))
    arch = json.loads(b["arch_kwargs"])
    plans = json.loads(b["plans"])
    cls = plans["configurations"]["3d_tiny"]["architecture"]
    net = get_network_from_plans(b["network_class_name"], arch, cls["_kw_requires_import"], 4, 4,
                                 deep_supervision=False)
    sd = net.state_dict()
    assert b["key_to_stem"] == net.key_to_stem and b["key_to_encoder"] == net.key_to_encoder
    enc = {k for k in sd if k.startswith("encoder.") and not k.startswith(net.key_to_stem + ".")}
    assert set(b["encoder"]) == enc
    assert all(b["encoder"][k].shape == sd[k].shape for k in enc)
    stem_w = b["stems"]["t1c"][b["keys_to_in_proj"][0] + ".weight"]
    assert stem_w.shape[1] == 1 and stem_w.shape[0] == sd[b["keys_to_in_proj"][0] + ".weight"].shape[0]
    ck = torch.load(os.path.join(pretrained["fold"], "checkpoint_final.pth"), weights_only=True)
    assert torch.equal(stem_w, ck["network_weights"]["stems.2." + b["keys_to_in_proj"][0][len(b["key_to_stem"]) + 1:] + ".weight"])
    assert sorted(b["templates"]) == ["flair", "pd", "t1", "t1c", "t2"]
    assert os.path.isfile(tmp_path / "bundle" / "templates" / "template_pd.nii.gz")


def test_bad_bundles_have_clear_errors(pretrained, tmp_path):
    from nnunet_mmpretrain.transfer.bundle import BundleError, load_bundle
    run_cli(["nnUNetv2_mmpretrain_export", os.path.join(pretrained["fold"], "checkpoint_final.pth"),
             "-o", str(tmp_path / "b")])
    data = (tmp_path / "b" / "encoder_bundle.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="truncated or damaged"):
        load_bundle(str(tmp_path / "trunc.pt"))
    import argparse   # any class outside torch's weights-only allowlist needs full pickle
    torch.save({"format": "x", "obj": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")
    with pytest.raises(BundleError, match="not a weights-only file"):
        load_bundle(str(tmp_path / "pickled.pt"))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(BundleError, match="not an encoder bundle"):
        load_bundle(str(tmp_path / "other.pt"))
    r = run_cli(["nnUNetv2_mmpretrain_export", str(tmp_path / "trunc.pt"), "-o", str(tmp_path / "x")], check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "trunc.pt" in r.stderr


def test_single_modality_corpus_needs_consent(nnunet_dirs, planned_corpus, monkeypatch):
    from nnunet_mmpretrain.corpus.manifest import load_manifest, save_manifest
    from nnunet_mmpretrain.planning.tiny import add_tiny_configuration
    from nnunet_mmpretrain.training.pretrain import PretrainingError
    src = os.path.join(nnunet_dirs["nnUNet_raw"], "Dataset992_PhantomCorpus")
    dst = os.path.join(nnunet_dirs["nnUNet_raw"], "Dataset982_SingleT1")
    man = load_manifest(src)
    for c in man.cases:
        c.images = {"t1": man.path(c, "t1")}
    save_manifest(man, dst)
    run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", "982", "-np", "1"])
    plans = os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset982_SingleT1", "mmPretrainPlans.json")
    add_tiny_configuration(plans, **TINY)
    from nnunetv2.run.run_training import get_trainer_from_args
    tr = get_trainer_from_args("982", "3d_tiny", "all", TRAINER, "mmPretrainPlans", device=torch.device("cpu"))
    with pytest.raises(PretrainingError, match="single modality.*nnUNet_mmpretrain_allow_single=1"):
        tr.initialize()
    monkeypatch.setenv("nnUNet_mmpretrain_allow_single", "1")
    tr = get_trainer_from_args("982", "3d_tiny", "all", TRAINER, "mmPretrainPlans", device=torch.device("cpu"))
    tr.initialize()
    assert tr.objective.w_cmr == 0.0


def test_non_finite_loss_stops_training_naming_step_and_cases(pretrained):
    tr = _trainer(pretrained)
    tr.initialize()
    tr.output_folder = pretrained["fold"]
    from nnunet_mmpretrain.training.pretrain_checkpoint import PretrainingError
    dl = tr._loader(sorted(tr.corpus_props), seed=0)
    batch = dl.generate_train_batch()
    batch["target"][0, 0, 3, 3, 3] = np.nan
    with pytest.raises(PretrainingError, match="non-finite loss") as e:
        tr.train_step(batch)
    msg = str(e.value)
    assert batch["keys"][0] in msg and "epoch 0" in msg and "checkpoint" in msg


def test_dad_pretraining_variant_trains_through_nnunet(planned_corpus, tmp_path):
    trainer = "nnUNetTrainerMMPretrain_dad_3epochs"
    run_cli(["nnUNetv2_train", str(CORPUS_ID), "3d_tiny", "all", "-tr", trainer, "-p", "mmPretrainPlans",
             "-device", "cpu"], env={"nnUNet_results": str(tmp_path), "nnUNet_n_proc_DA": "0"})
    fold = _fold_dir(str(tmp_path), trainer)
    ck = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=True)
    assert ck["trainer_name"] == trainer and ck["current_epoch"] == 3
    assert np.all(np.isfinite(ck["mm_log"]["train_loss"]))
    assert os.path.isfile(os.path.join(fold, "pretraining_summary", "templates", "template_t1.nii.gz"))


def test_joint_view_over_all_modalities_trains_through_nnunet(planned_corpus, tmp_path):
    trainer = "nnUNetTrainerMMPretrain_cpuAll_3epochs"
    run_cli(["nnUNetv2_train", str(CORPUS_ID), "3d_tiny", "all", "-tr", trainer, "-p", "mmPretrainPlans",
             "-device", "cpu"], env={"nnUNet_results": str(tmp_path), "nnUNet_n_proc_DA": "0"})
    ck = torch.load(os.path.join(_fold_dir(str(tmp_path), trainer), "checkpoint_final.pth"), weights_only=True)
    assert ck["current_epoch"] == 3 and ck["objective"]["joint_all"] is True
    assert ck["objective"]["joint_stem"] == "downstream"
    assert np.all(np.isfinite(ck["mm_log"]["train_l_joint"])) and np.all(np.isfinite(ck["mm_log"]["val_l_joint"]))
    assert any(k.startswith("joint_decoder.") for k in ck["network_weights"])
