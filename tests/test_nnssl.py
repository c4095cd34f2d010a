"""nnssl checkpoint format both ways: our bundle -> nnssl -> bundle is lossless; a checkpoint
written here by a small script that follows the documented format imports and fine-tunes through
nnUNetv2_train; topologies our plans cannot express are refused with the fields named; plans
entries of a bundle survive moving the folders; a corpus is refused as a transfer target."""
import json
import os
import types

import pytest
import torch
from torch import nn

from conftest import CORPUS_ID, SEG_ID, run_cli

SEG = "Dataset990_PhantomBraTS"
TINY_ARCH = dict(n_stages=3, features_per_stage=[8, 16, 32], kernel_sizes=[[3, 3, 3]] * 3,
                 strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1],
                 n_conv_per_stage_decoder=[1, 1], conv_bias=True, norm_op_kwargs={"eps": 1e-05, "affine": True},
                 dropout_op=None, dropout_op_kwargs=None, nonlin_kwargs={"inplace": True})
OPS = {"conv_op": "torch.nn.modules.conv.Conv3d", "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
       "nonlin": "torch.nn.LeakyReLU"}


def write_documented_checkpoint(path, prefix="encoder", **plan_overrides):
    """What nnssl writes (nnU-Net's documentation/finetuning_from_nnssl_checkpoints.md): the
    pretraining network's state dict, the adaptation plan, citations. ``prefix`` renames the
    encoder module (nnssl's BYOL trainer writes ``online_encoder``). Returns the state dict."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    torch.manual_seed(3)
    net = ResidualEncoderUNet(input_channels=1, num_classes=1, conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d,
                              nonlin=nn.LeakyReLU, **TINY_ARCH)
    sd = {k.replace("encoder.", prefix + ".", 1) if k.startswith("encoder.") else k: v
          for k, v in net.state_dict().items()}
    plan = {
        "architecture_plans": {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": {**TINY_ARCH, **OPS},
                               "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"]},
        "pretrain_plan": {"dataset_name": "Dataset745_OpenMindLike", "plans_name": "nnsslPlans",
                          "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
                          "configurations": {"onemmiso": {"spacing": [3.0, 3.0, 3.0], "patch_size": [32, 32, 32]}}},
        "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": [32, 32, 32],
        "key_to_encoder": f"{prefix}.stages", "key_to_stem": f"{prefix}.stem",
        "keys_to_in_proj": [f"{prefix}.stem.convs.0.conv", f"{prefix}.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }
    plan.update(plan_overrides)
    cits = [{"type": "Pretraining method", "name": "a test checkpoint",
             "apa_citations": ["Someone, A. (2025). A test checkpoint."]}]
    torch.save({"network_weights": sd, "nnssl_adaptation_plan": plan, "citations": cits}, path)
    return sd


from conftest import run_main as _cli  # noqa: E402


def test_bundle_to_nnssl_to_bundle_keeps_every_tensor(bundle, tmp_path, capsys):
    from nnunet_mmpretrain.cli.export import main as export
    from nnunet_mmpretrain.cli.import_nnssl import main as import_nnssl
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    pth = str(tmp_path / "enc.pth")
    rc, out, err = _cli(export, [bundle, "--format", "nnssl", "-o", pth], capsys)
    assert rc == 0, err
    ck = torch.load(pth, map_location="cpu", weights_only=True)
    ap = ck["nnssl_adaptation_plan"]
    for f in ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
              "key_to_encoder", "key_to_stem", "keys_to_in_proj"):
        assert f in ap, f
    assert ap["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
    assert ap["pretrain_num_input_channels"] == 1 and ap["recommended_downstream_patchsize"] == [32, 32, 32]
    assert ap["key_to_encoder"] == "encoder.stages" and ap["key_to_stem"] == "encoder.stem"
    assert list(ap["pretrain_plan"]["configurations"]["3d_tiny"]["spacing"]) == [3.0, 3.0, 3.0]
    assert ck["citations"]
    b = load_bundle(bundle)
    w = ap["keys_to_in_proj"][0] + ".weight"
    trained = b["modalities_trained"]
    mean = torch.stack([b["stems"][m][w] for m in trained]).mean(0)
    assert torch.allclose(ck["network_weights"][w], mean) and ck["network_weights"][w].shape[1] == 1
    assert not torch.allclose(ck["network_weights"][w], b["stems"][trained[0]][w])   # a mean, not one stem

    # what nnU-Net's documented loader does with it: a 4-channel network from architecture_plans
    # takes the stages as they are and the stem repeated over the channels / 4, strictly
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    archp = ap["architecture_plans"]
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet." + archp["arch_class_name"],
                                 archp["arch_kwargs"], archp["arch_kwargs_requiring_import"], 4, 3, allow_init=True)
    sd = ck["network_weights"]
    enc, stem = ap["key_to_encoder"] + ".", ap["key_to_stem"] + "."
    net.get_submodule(ap["key_to_encoder"]).load_state_dict(
        {k[len(enc):]: v for k, v in sd.items() if k.startswith(enc)}, strict=True)
    stem_sd = {k[len(stem):]: v for k, v in sd.items() if k.startswith(stem)}
    for p in ap["keys_to_in_proj"]:
        stem_sd[p[len(stem):] + ".weight"] = sd[w].repeat(1, 4, 1, 1, 1) / 4
    net.get_submodule(ap["key_to_stem"]).load_state_dict(stem_sd, strict=True)
    assert set(sd) == {k for k in net.state_dict() if k.startswith((enc, stem))}

    rc, out, err = _cli(import_nnssl, [pth, "-o", str(tmp_path / "back")], capsys)
    assert rc == 0, err
    back = load_bundle(str(tmp_path / "back"))
    assert set(back["encoder"]) == set(b["encoder"])
    for k, v in b["encoder"].items():
        assert torch.equal(back["encoder"][k], v), k
    for m, stem in b["stems"].items():
        assert all(torch.equal(back["stems"][m][k], v) for k, v in stem.items()), m
    assert set(back["templates"]) == set(b["templates"])
    assert all(torch.equal(back["templates"][m], v) for m, v in b["templates"].items())
    assert back["stem_origin"] == "per-modality" and back["plans"] == b["plans"]

    # as nnU-Net users hold it (no extra entry): the one mean stem becomes every modality's stem
    del ck["mmpretrain_bundle"]
    torch.save(ck, tmp_path / "foreign.pth")
    rc, out, err = _cli(import_nnssl, [str(tmp_path / "foreign.pth"), "-o", str(tmp_path / "shared")], capsys)
    assert rc == 0, err
    shared = load_bundle(str(tmp_path / "shared"))
    assert all(torch.equal(shared["encoder"][k], v) for k, v in b["encoder"].items())
    assert all(torch.equal(shared["stems"][m][w], ck["network_weights"][w]) for m in shared["vocabulary"])
    meta = json.load(open(tmp_path / "shared" / "bundle.json"))
    assert meta["stem_origin"] == "shared" and meta["imported_from"]["format"] == "nnssl"


#: The nnssl schema as documented in docs/WEIGHTS.md (nnssl 7044864: experiment_planners/plan.py,
#: adaptation_planning/adaptation_plan.py; nnU-Net master 0e495086: PretrainedTrainer.print_citations).
#: Written out here on purpose, not imported: the export must match what nnssl's dataclasses take.
PLAN = ["dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
        "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used"]
CONFIGURATION = ["data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes", "use_mask_for_norm",
                 "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_mask", "resampling_fn_mask_kwargs",
                 "spacing", "patch_size"]
DYNAMIC_ARCH = ["n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage",
                "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs",
                "nonlin", "nonlin_kwargs"]


def test_export_matches_the_documented_nnssl_schema_field_by_field(bundle, tmp_path, capsys):
    import dataclasses
    from nnunet_mmpretrain.cli.export import main as export
    from nnunet_mmpretrain.planning.compat import resolved_configuration
    from nnunet_mmpretrain.transfer import nnssl
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    assert (list(nnssl.NNSSL_PLAN_FIELDS), list(nnssl.NNSSL_CONFIGURATION_FIELDS),
            list(nnssl.NNSSL_DYNAMIC_ARCH_FIELDS)) == (PLAN, CONFIGURATION, DYNAMIC_ARCH)
    pth = str(tmp_path / "enc.pth")
    rc, out, err = _cli(export, [bundle, "--format", "nnssl", "-o", pth], capsys)
    assert rc == 0, err
    ck = torch.load(pth, map_location="cpu", weights_only=True)
    ap = ck["nnssl_adaptation_plan"]
    # as nnssl parses it: Plan(**d) and ConfigurationPlan(**c) reject missing and unknown keys
    Plan = dataclasses.make_dataclass("Plan", PLAN)
    Conf = dataclasses.make_dataclass("ConfigurationPlan", CONFIGURATION[:9] + [(f, object, None) for f in
                                                                                 CONFIGURATION[9:]])
    Arch = dataclasses.make_dataclass("DynamicArchitecturePlans", DYNAMIC_ARCH)
    pp = dict(ap["pretrain_plan"])
    assert list(pp) == PLAN
    confs = {k: Conf(**v) for k, v in pp.pop("configurations").items()}
    Plan(configurations=confs, **pp)
    Arch(**ap["architecture_plans"]["arch_kwargs"])
    for f in ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
              "key_to_encoder", "key_to_stem"):          # what AdaptationPlan.from_dict reads
        assert f in ap, f
    # field values: the pretraining configuration of the bundle, as nnssl names it
    b = load_bundle(bundle)
    plans = json.loads(b["plans"])
    conf = resolved_configuration(plans, b["configuration"])
    (name, c), = ap["pretrain_plan"]["configurations"].items()
    assert name == b["configuration"] and list(c) == CONFIGURATION
    assert c["spacing_style"] in ("onemmiso", "median", "noresample") and c["spacing_style"] == "median"
    assert c["spacing"] == [float(x) for x in conf["spacing"]] and c["patch_size"] == list(conf["patch_size"])
    assert c["resampling_fn_mask"] == conf["resampling_fn_seg"]
    assert c["resampling_fn_mask_kwargs"] == conf["resampling_fn_seg_kwargs"]
    assert c["normalization_schemes"] == conf["normalization_schemes"]
    assert ap["pretrain_plan"]["dataset_name"] == plans["dataset_name"]
    # citations as nnU-Net master prints them: sorted by .get("type"), each with a name and its references
    cits = ck["citations"]
    assert cits and all(isinstance(x, dict) for x in cits)
    for cit in sorted(cits, key=lambda x: x.get("type", "")):
        assert cit["type"] and cit["name"]
        assert cit["apa_citations"] and all(isinstance(t, str) and len(t) > 40 for t in cit["apa_citations"])


def test_documented_checkpoint_imports_and_finetunes_through_nnunet(planned_seg, tmp_path, capsys):
    from nnunet_mmpretrain.cli.import_nnssl import main as import_nnssl
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    ckpt = str(tmp_path / "openmind_like.pth")
    sd = write_documented_checkpoint(ckpt)
    bdir = str(tmp_path / "imported")
    rc, out, err = _cli(import_nnssl, [ckpt, "-o", bdir, "--license", "CC-BY-4.0"], capsys)
    assert rc == 0, err
    n_dec = sum(not k.startswith("encoder.") for k in sd)
    assert n_dec > 0 and f"dropped {n_dec} tensors outside the encoder and stem (decoder.*: {n_dec})" in out
    b = load_bundle(bdir)
    card = json.load(open(os.path.join(bdir, "bundle.json")))["imported_from"]
    assert card["citations"] == [{"type": "Pretraining method", "name": "a test checkpoint",
                                  "apa_citations": ["Someone, A. (2025). A test checkpoint."]}]
    assert card["dropped_tensors"] == {"decoder": n_dec}
    stem_w = "encoder.stem.convs.0.conv.weight"
    assert b["stem_origin"] == "shared" and set(b["stems"]) == set(b["vocabulary"])
    assert all(torch.equal(b["stems"][m][stem_w], sd[stem_w]) for m in b["stems"])
    assert all(torch.equal(v, sd[k]) for k, v in b["encoder"].items())
    assert len(b["encoder"]) == sum(k.startswith("encoder.stages.") for k in sd)
    assert json.load(open(os.path.join(bdir, "bundle.json")))["license"] == "CC-BY-4.0"

    # prefixes other than encoder.* (nnssl's BYOL writes online_encoder.*) map onto the same bundle
    write_documented_checkpoint(str(tmp_path / "byol.pth"), prefix="online_encoder")
    rc, out, err = _cli(import_nnssl, [str(tmp_path / "byol.pth"), "-o", str(tmp_path / "byol")], capsys)
    assert rc == 0, err
    assert all(torch.equal(load_bundle(str(tmp_path / "byol"))["encoder"][k], v) for k, v in b["encoder"].items())

    # plans from the bundle alone (no corpus), preprocess, fine-tune with stock nnUNetv2_train
    run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-t", str(SEG_ID), "--bundle", bdir, "-tp", "nnsslPlans",
             "--preprocess", "-np", "2"])
    plans = json.load(open(os.path.join(planned_seg["folder"], "nnsslPlans.json")))
    entry = plans["mmpretrain_transfer"]
    assert entry["bundle_root"] == "nnUNet_preprocessed" and not os.path.isabs(entry["bundle"])
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32]
    run_cli(["nnUNetv2_train", str(SEG_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerMMFinetune_smoke", "-p",
             "nnsslPlans", "-device", "cpu"], env={"nnUNet_n_proc_DA": "0"})
    fold = os.path.join(planned_seg["nnUNet_results"], SEG, "nnUNetTrainerMMFinetune_smoke__nnsslPlans__3d_fullres",
                        "fold_0")
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    rep = json.load(open(os.path.join(fold, "pretrained_weights_report.json")))
    assert sorted(rep["loaded"]) == sorted(b["encoder"])
    assert rep["bundle"] == os.path.join(planned_seg["nnUNet_preprocessed"], entry["bundle"])
    assert "channel 1 (t1c): stem t1c" in rep["stem"]


def test_topology_our_plans_cannot_express_is_refused_with_the_fields(tmp_path, capsys):
    from nnunet_mmpretrain.cli.import_nnssl import main as import_nnssl
    ckpt = str(tmp_path / "primus.pth")
    write_documented_checkpoint(ckpt, architecture_plans={"arch_class_name": "PrimusM", "arch_kwargs": None},
                                pretrain_num_input_channels=4, key_to_lpe="eva.pos_embed")
    rc, out, err = _cli(import_nnssl, [ckpt, "-o", str(tmp_path / "b")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for field in ("architecture_plans.arch_class_name = PrimusM", "pretrain_num_input_channels = 4",
                  "key_to_lpe = eva.pos_embed", ckpt):
        assert field in err, field
    assert not os.path.exists(tmp_path / "b")

    # arch_kwargs that disagree with the weights: the keys and both shapes are named
    bad = str(tmp_path / "wide.pth")
    write_documented_checkpoint(bad, architecture_plans={
        "arch_class_name": "ResidualEncoderUNet",
        "arch_kwargs": {**TINY_ARCH, **OPS, "features_per_stage": [8, 16, 64]}})
    rc, out, err = _cli(import_nnssl, [bad, "-o", str(tmp_path / "c")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "encoder.stages.2" in err and "(32," in err and "(64," in err

    # not an nnssl checkpoint at all
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    rc, out, err = _cli(import_nnssl, [str(tmp_path / "other.pth"), "-o", str(tmp_path / "d")], capsys)
    assert rc == 2 and "not an nnssl checkpoint" in err


def test_plans_bundle_entry_survives_moving_and_a_missing_bundle_names_both_paths(tmp_path, monkeypatch):
    from nnunet_mmpretrain.training.finetune import FinetuneError, PretrainedEncoder
    monkeypatch.delenv("nnUNet_mmpretrain_bundle", raising=False)
    moved = tmp_path / "moved_results"
    (moved / "bundles" / "b").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_results", str(moved))
    entry = {"bundle": "bundles/b", "bundle_root": "nnUNet_results", "bundle_written_at": "/old/results/bundles/b"}
    fake = types.SimpleNamespace(plans_manager=types.SimpleNamespace(plans={"mmpretrain_transfer": entry}))
    path, strategy = PretrainedEncoder.bundle_settings(fake)
    assert path == str(moved / "bundles" / "b") and strategy == "modality"
    entry["bundle"] = "bundles/gone"
    with pytest.raises(FinetuneError) as e:
        PretrainedEncoder.bundle_settings(fake)
    assert str(moved / "bundles" / "gone") in str(e.value) and "/old/results/bundles/b" in str(e.value)


def test_bundle_entry_is_relative_to_an_nnunet_folder_and_resolves_after_a_move(tmp_path, monkeypatch):
    from nnunet_mmpretrain.transfer.plans import _bundle_entry, resolve_bundle
    results, pre = tmp_path / "results", tmp_path / "pre"
    (results / "Dataset1_X" / "b").mkdir(parents=True)
    (results / "Dataset1_X" / "b" / "encoder_bundle.pt").write_text("w")
    (pre / "Dataset2_Y").mkdir(parents=True)
    monkeypatch.setattr("nnunetv2.paths.nnUNet_results", str(results))
    monkeypatch.setattr("nnunetv2.paths.nnUNet_preprocessed", str(pre))
    e = _bundle_entry(str(results / "Dataset1_X" / "b"), str(pre / "Dataset2_Y"), "p")
    assert e["bundle"] == os.path.join("Dataset1_X", "b") and e["bundle_root"] == "nnUNet_results"
    outside = tmp_path / "elsewhere" / "b"
    outside.mkdir(parents=True)
    (outside / "encoder_bundle.pt").write_text("v1")
    (outside / "stale.txt").write_text("x")
    _bundle_entry(str(outside), str(pre / "Dataset2_Y"), "p")
    (outside / "stale.txt").unlink()
    (outside / "encoder_bundle.pt").write_text("v2")
    e2 = _bundle_entry(str(outside), str(pre / "Dataset2_Y"), "p")     # a second transfer replaces the copy whole
    assert e2["bundle_root"] == "nnUNet_preprocessed" and e2["bundle"] == os.path.join("Dataset2_Y", "mmpretrain_bundle_p")
    assert sorted(os.listdir(pre / e2["bundle"])) == ["encoder_bundle.pt"]
    assert (pre / e2["bundle"] / "encoder_bundle.pt").read_text() == "v2"
    # move both nnU-Net folders; the entries follow the variables
    os.rename(results, tmp_path / "results2")
    os.rename(pre, tmp_path / "pre2")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results2"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre2"))
    for entry in (e, e2):
        path, recorded = resolve_bundle(entry)
        assert os.path.isfile(os.path.join(path, "encoder_bundle.pt")) and path.startswith(str(tmp_path) + "/")
        assert recorded == entry["bundle_written_at"] and not os.path.exists(recorded)


def test_corpus_as_transfer_target_is_refused(planned_corpus):
    folder = planned_corpus["folder"]
    before = sorted(os.listdir(folder))
    r = run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(CORPUS_ID), "-tp", "x"],
                check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "pretraining corpus" in r.stderr and "-t" in r.stderr
    assert sorted(os.listdir(folder)) == before
