"""Transfer: pretrain -> export -> transfer plans -> fine-tune -> predict -> evaluate, with real
nnU-Net commands on tiny plans; injection correctness; other channel sets; bad bundles."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import CORPUS_ID, SEG_ID, assert_validated_split, run_cli

SEG = "Dataset990_PhantomBraTS"


@pytest.fixture(scope="session")
def transferred(planned_seg, bundle):
    run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(SEG_ID), "-c", "3d_tiny",
             "--bundle", bundle, "--preprocess", "-np", "2"])
    return {"bundle": bundle, **planned_seg}


def _trainer(name, dataset=str(SEG_ID), config="3d_tiny", fold=0):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(dataset, config, fold, name, "mmPretrainPlans", device=torch.device("cpu"))


@pytest.fixture(scope="module")
def finetuned(transferred):
    """The smoke fine-tuning of the transferred plans through ``nnUNetv2_train``: its fold folder."""
    run_cli(["nnUNetv2_train", str(SEG_ID), "3d_tiny", "0", "-tr", "nnUNetTrainerMMFinetune_smoke", "-p",
             "mmPretrainPlans", "-device", "cpu"])
    return os.path.join(transferred["nnUNet_results"], SEG, "nnUNetTrainerMMFinetune_smoke__mmPretrainPlans__3d_tiny",
                        "fold_0")


def test_finetune_predict_evaluate_with_plain_nnunet(transferred, finetuned, tmp_path):
    fold = finetuned
    rep = json.load(open(os.path.join(fold, "pretrained_weights_report.json")))
    assert rep["strategy"] == "modality" and len(rep["loaded"]) > 50
    assert "channel 1 (t1c): stem t1c" in rep["stem"]
    assert all(k.startswith("decoder.") for k in rep["random"])
    pred = tmp_path / "pred"
    images = os.path.join(transferred["nnUNet_raw"], SEG, "imagesTs")
    run_cli(["nnUNetv2_predict", "-i", images, "-o", str(pred), "-d", str(SEG_ID), "-c", "3d_tiny", "-f", "0",
             "-tr", "nnUNetTrainerMMFinetune_smoke", "-p", "mmPretrainPlans", "-device", "cpu", "--disable_tta",
             "-npp", "1", "-nps", "1"], env={"nnUNet_mmpretrain_bundle": ""})   # inference needs no bundle
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2
    compute_metrics_on_folder2(os.path.join(transferred["nnUNet_raw"], SEG, "labelsTs"), str(pred),
                               os.path.join(fold, "..", "dataset.json"), os.path.join(fold, "..", "plans.json"),
                               str(tmp_path / "summary.json"), num_processes=1)
    summ = json.load(open(tmp_path / "summary.json"))
    assert set(summ["mean"]) == {"(1, 2, 3)", "(1, 3)", "(3,)"}
    cases = sorted(f[:-12] for f in os.listdir(images) if f.endswith("_0000.nii.gz"))
    assert sorted(os.path.basename(c["prediction_file"])[:-7] for c in summ["metric_per_case"]) == cases
    import SimpleITK as sitk
    for c in cases:                      # predictions overlay their images (geometry) and use the labels
        img = sitk.ReadImage(os.path.join(images, f"{c}_0000.nii.gz"))
        seg = sitk.ReadImage(str(pred / f"{c}.nii.gz"))
        assert seg.GetSize() == img.GetSize() and np.allclose(seg.GetOrigin(), img.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2, 3}


def test_injected_encoder_equals_bundle_and_t1c_gets_t1c_kernel(transferred, monkeypatch):
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    monkeypatch.setenv("nnUNet_mmpretrain_bundle", transferred["bundle"])
    tr = _trainer("nnUNetTrainerMMFinetune_smoke")
    tr.initialize()
    tr.output_folder = os.path.join(transferred["nnUNet_results"], "inject_check")
    os.makedirs(tr.output_folder, exist_ok=True)
    tr.load_pretrained_encoder()
    b = load_bundle(transferred["bundle"])
    sd = tr.network.state_dict()
    for k, v in b["encoder"].items():
        assert torch.equal(sd[k], v), k
        assert torch.equal(sd["decoder." + k], v), k      # the decoder's alias sees the same values
    w = sd[b["keys_to_in_proj"][0] + ".weight"]
    src = {m: b["stems"][m][b["keys_to_in_proj"][0] + ".weight"][:, 0] for m in ("t1", "t1c", "t2", "flair")}
    for c, m in enumerate(("t1", "t1c", "t2", "flair")):   # dataset.json channel order
        assert torch.allclose(w[:, c], src[m] / 4), m
    assert not torch.allclose(src["t1"], src["t1c"])


def _subset_dataset(raw, new_id, name, channels):
    """A downstream dataset with some of the phantom channels under new names."""
    src = os.path.join(raw, SEG)
    dst = os.path.join(raw, f"Dataset{new_id}_{name}")
    shutil.rmtree(dst, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(dst, sub))
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(src, "labelsTr")))[:3]
    for case in cases:
        shutil.copy(os.path.join(src, "labelsTr", case + ".nii.gz"), os.path.join(dst, "labelsTr"))
        for new_c, (old_c, _) in enumerate(channels):
            shutil.copy(os.path.join(src, "imagesTr", f"{case}_{old_c:04d}.nii.gz"),
                        os.path.join(dst, "imagesTr", f"{case}_{new_c:04d}.nii.gz"))
    dj = json.load(open(os.path.join(src, "dataset.json")))
    dj["channel_names"] = {str(i): n for i, (_, n) in enumerate(channels)}
    dj["numTraining"] = len(cases)
    json.dump(dj, open(os.path.join(dst, "dataset.json"), "w"))
    return new_id


@pytest.mark.parametrize("new_id,name,channels,unknown", [
    (983, "ThreeChannel", [(0, "T1"), (2, "T1-IR"), (3, "FLAIR")], 1),   # T1-IR is not in the vocabulary
    (984, "OneChannel", [(1, "T1ce")], None),
])
def test_other_channel_sets_load_the_same_bundle_via_stock_pretrained_weights(transferred, tmp_path, new_id, name,
                                                                              channels, unknown):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    _subset_dataset(transferred["nnUNet_raw"], new_id, name, channels)
    # a dataset nnU-Net never planned: transfer fingerprints it and leaves what preprocessing needs
    run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(new_id), "-c", "3d_tiny",
             "--preprocess", "-np", "1"])
    pre = os.path.join(transferred["nnUNet_preprocessed"], f"Dataset{new_id}_{name}")
    assert len([f for f in os.listdir(os.path.join(pre, "mmPretrainPlans_3d_tiny")) if f.endswith("_seg.b2nd")]) == 3
    out = str(tmp_path / "full.pth")
    r = run_cli(["nnUNetv2_mmpretrain_export_full", transferred["bundle"], "-d", str(new_id), "-c", "3d_tiny",
                 "-o", out])
    if unknown is not None:
        assert f"channel {unknown} (unknown): mean of trained stems (unknown modality T1-IR)" in r.stdout
    plans = json.load(open(os.path.join(transferred["nnUNet_preprocessed"], f"Dataset{new_id}_{name}",
                                        "mmPretrainPlans.json")))
    arch = plans["configurations"]["3d_tiny"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 len(channels), 3, deep_supervision=True)
    load_pretrained_weights(net, out)       # exactly what nnUNetv2_train -pretrained_weights calls
    b = load_bundle(transferred["bundle"])
    sd = net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in b["encoder"].items())
    w = sd[b["keys_to_in_proj"][0] + ".weight"]
    assert w.shape[1] == len(channels)
    if name == "OneChannel":
        assert torch.allclose(w[:, 0], b["stems"]["t1c"][b["keys_to_in_proj"][0] + ".weight"][:, 0])


def test_bundle_from_other_topology_is_refused_with_stage_names(transferred, monkeypatch):
    from nnunet_mmpretrain.planning.compat import IncompatiblePlansError
    monkeypatch.setenv("nnUNet_mmpretrain_bundle", transferred["bundle"])
    from nnunetv2.run.run_training import get_trainer_from_args
    tr = get_trainer_from_args(str(SEG_ID), "3d_tiny", 0, "nnUNetTrainerMMFinetune_smoke", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    with pytest.raises(IncompatiblePlansError) as e:
        tr.load_pretrained_encoder()
    msg = str(e.value)
    assert "does not fit" in msg and "network class" in msg and "nnUNetv2_mmpretrain_transfer_plans" in msg


def test_transfer_refuses_a_damaged_bundle(transferred, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(transferred["bundle"], bad)
    data = (bad / "encoder_bundle.pt").read_bytes()
    (bad / "encoder_bundle.pt").write_bytes(data[:1000])
    r = run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(SEG_ID), "-tp", "x",
                 "--bundle", str(bad)], check=False)
    assert r.returncode == 2 and "truncated or damaged" in r.stderr and "Traceback" not in r.stderr


def _corr(a, b, mask):
    return float(np.corrcoef(a[mask].ravel(), b[mask].ravel())[0, 1])


def test_template_substitution_is_aligned_with_the_case(transferred, monkeypatch):
    """The substitution variant's training dataset appends, per channel, the template placed on the
    case voxel for voxel: inside the brain it correlates with the channel it replaces better than a
    crop of the same template taken at a random position."""
    monkeypatch.setenv("nnUNet_mmpretrain_bundle", transferred["bundle"])
    tr = _trainer("nnUNetTrainerMMFinetune_templateAug_smoke")
    tr.initialize()
    tr.output_folder = os.path.join(transferred["nnUNet_results"], "templ_aug_check")
    os.makedirs(tr.output_folder, exist_ok=True)
    ds_tr, ds_val = tr.get_tr_and_val_datasets()
    from nnunet_mmpretrain.transfer.aligned import TemplateChannelsDataset
    assert isinstance(ds_tr, TemplateChannelsDataset) and not isinstance(ds_val, TemplateChannelsDataset)
    key = sorted(ds_tr.identifiers)[0]
    data, seg, _, props = ds_tr.load_case(key)
    C = tr.num_input_channels
    assert data.shape[0] == 2 * C
    rng = np.random.default_rng(0)
    for c in range(C):                       # flair, t1, t1c, t2: every modality has a template
        real, tmpl = data[c], data[C + c]
        brain = real != 0
        aligned = _corr(real, tmpl, brain)
        shift = [int(rng.integers(4, 9)) * int(rng.choice([-1, 1])) for _ in range(3)]
        shifted = np.roll(tmpl, shift, axis=(0, 1, 2))
        # the phantoms' subjects differ (deformations, tumours), so a population template reaches
        # r ~ 0.25-0.4 even when placed right; misplaced by 4-8 voxels it drops to ~0
        assert aligned > 0.15 and aligned > _corr(real, shifted, brain) + 0.1, (c, aligned)
    assert np.all(data[C:][:, ~(data[:C] != 0).any(0)] == 0)     # 0 outside the case, as the real channels
    from nnunet_mmpretrain.transfer.aligned import draw_substitutions, substitute
    chosen = draw_substitutions(400, [0, 1, 2, 3], 4, 3, np.random.default_rng(1))
    hit = np.mean([len(k) > 0 for k in chosen])
    assert 0.68 < hit < 0.82 and max(len(k) for k in chosen) == 3       # BrainMVP: k ~ U{0..3}
    batch = torch.from_numpy(np.stack([data, data]))
    out = substitute(batch, [[1], []])
    assert out.shape[1] == C and torch.equal(out[0, 1], batch[0, C + 1]) and torch.equal(out[1], batch[1, :C])


@pytest.mark.parametrize("trainer", ["nnUNetTrainerMMFinetune_templateAugConsistency_smoke",
                                     "nnUNetTrainerMMFinetune_dad_smoke"])
def test_consistency_and_dad_variants_train_through_nnunet(transferred, tmp_path, trainer):
    run_cli(["nnUNetv2_train", str(SEG_ID), "3d_tiny", "0", "-tr", trainer, "-p", "mmPretrainPlans", "-device", "cpu"],
            env={"nnUNet_results": str(tmp_path), "nnUNet_mmpretrain_bundle": transferred["bundle"],
                 "nnUNet_n_proc_DA": "0"})
    fold = tmp_path / SEG / f"{trainer}__mmPretrainPlans__3d_tiny" / "fold_0"
    log = open(next(fold.glob("training_log*.txt"))).read()
    assert ("consistency weight 0.1" in log) if "Consistency" in trainer else ("DAD augmentation after" in log)
    assert_validated_split(fold, transferred["folder"])


def test_predict_fills_a_missing_channel_with_the_template(transferred, finetuned, tmp_path):
    src = os.path.join(transferred["nnUNet_raw"], SEG, "imagesTs")
    inp = tmp_path / "in"
    inp.mkdir()
    for f in os.listdir(src):
        if not f.endswith("_0003.nii.gz"):       # FLAIR missing
            shutil.copy(os.path.join(src, f), inp / f)
    r = run_cli(["nnUNetv2_mmpretrain_predict", "-i", str(inp), "-o", str(tmp_path / "out"), "-d", str(SEG_ID),
                 "-c", "3d_tiny", "-f", "0", "-tr", "nnUNetTrainerMMFinetune_smoke", "--bundle", transferred["bundle"]])
    subs = json.load(open(tmp_path / "out" / "template_substitutions.json"))
    assert subs["phantom_0006"]["channels"] == [3] and subs["phantom_0006"]["modalities"] == ["flair"]
    assert "filled with the pretrained template" in r.stdout
    assert os.path.isfile(tmp_path / "out" / "phantom_0006.nii.gz")
    r = run_cli(["nnUNetv2_mmpretrain_predict", "-i", str(inp), "-o", str(tmp_path / "out2"), "-d", str(SEG_ID),
                 "-c", "3d_tiny", "-f", "0", "-tr", "nnUNetTrainerMMFinetune_smoke"], check=False)
    assert r.returncode == 2 and "--bundle" in r.stderr and "FLAIR" in r.stderr
