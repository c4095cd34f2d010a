"""Check the nnssl format both ways against local checkouts of nnU-Net master and nnssl.

    python scripts/check_nnssl_interop.py --bundle BUNDLE_DIR --nnunet PATH/TO/nnUNet --nnssl PATH/TO/nnssl \\
        [--work check_nnssl]

Nothing is fetched: point ``--nnunet`` at a checkout of nnU-Net's master branch (the folder with
``nnunetv2/``) and ``--nnssl`` at a checkout of nnssl (the folder with ``src/nnssl/``); their own
dependencies must be importable in this environment. The commits used for docs/WEIGHTS.md were
nnU-Net 0e495086 and nnssl 7044864 (``git -C PATH log -1`` prints yours).

1. ours -> theirs: ``nnUNetv2_mmpretrain_export BUNDLE --format nnssl``; the adaptation plan is
   parsed by nnssl's ``AdaptationPlan.from_dict``; nnU-Net master's
   ``PretrainedTrainer.load_pretrained_weights`` loads the file into a 4-channel network built from
   its ``architecture_plans``; every encoder tensor must arrive bit-identical, the stem as the mean
   stem repeated over the channels; ``PretrainedTrainer.print_citations`` prints the citations.
2. theirs -> ours: an adaptation plan built with nnssl's own dataclasses (``AdaptationPlan``,
   ``ArchitecturePlans``, ``Plan``, serialised as nnssl serialises it) and the state dict of a
   ``ResidualEncoderUNet``, saved as nnssl's checkpoints hold them; ``nnUNetv2_mmpretrain_import_nnssl``
   turns it into a bundle whose encoder must equal the state dict's, tensor for tensor.

Each step runs in its own Python process with the checkout first on ``sys.path``; exit code 0
when every check passes, 1 otherwise (the failing step's output is printed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

THEIRS_LOAD = textwrap.dedent("""
    import sys, types, torch
    from nnssl.adaptation_planning.adaptation_plan import AdaptationPlan
    from nnunetv2.training.nnUNetTrainer.pretraining.pretrainedTrainer import PretrainedTrainer
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    path = sys.argv[1]
    ck = torch.load(path, map_location="cpu", weights_only=True)
    ap = ck["nnssl_adaptation_plan"]
    AdaptationPlan.from_dict(dict(ap))
    print("nnssl AdaptationPlan.from_dict: ok")
    archp = ap["architecture_plans"]
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet." + archp["arch_class_name"],
                                 archp["arch_kwargs"], archp["arch_kwargs_requiring_import"], 4, 3, allow_init=True,
                                 deep_supervision=False)
    patch = ap["recommended_downstream_patchsize"]
    net, _ = PretrainedTrainer.load_pretrained_weights(net, path, 1, 4, patch, patch, ap["key_to_encoder"],
                                                       ap["key_to_stem"], tuple(ap["keys_to_in_proj"]), ap["key_to_lpe"])
    sd, got = ck["network_weights"], net.state_dict()
    stages = [k for k in sd if k.startswith(ap["key_to_encoder"] + ".")]
    bad = [k for k in stages if not torch.equal(got[k], sd[k])]
    w = ap["keys_to_in_proj"][0] + ".weight"
    stem_ok = torch.equal(got[w], sd[w].repeat(1, 4, 1, 1, 1) / 4)
    print(f"nnU-Net master load_pretrained_weights: {len(stages) - len(bad)}/{len(stages)} encoder tensors "
          f"bit-identical, stem repeated over 4 channels: {stem_ok}")
    PretrainedTrainer.print_citations(types.SimpleNamespace(adaptation_info={"citations": ck["citations"]},
                                                            print_to_log_file=lambda s, **k: print(s)))
    sys.exit(1 if bad or not stem_ok else 0)
""")

THEIRS_WRITE = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnssl.adaptation_planning.adaptation_plan import AdaptationPlan, ArchitecturePlans, DynamicArchitecturePlans
    from nnssl.experiment_planning.experiment_planners.plan import ConfigurationPlan, Plan
    kw = dict(n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 3,
              strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
              conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
              dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    torch.manual_seed(0)
    net = ResidualEncoderUNet(input_channels=1, num_classes=1, **kw)
    rs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    conf = ConfigurationPlan(data_identifier="nnsslPlans_onemmiso", preprocessor_name="DefaultPreprocessor",
                             spacing_style="onemmiso", normalization_schemes=["ZScoreNormalization"],
                             use_mask_for_norm=[False], resampling_fn_data="resample_data_or_seg_to_shape",
                             resampling_fn_data_kwargs=rs, resampling_fn_mask="resample_data_or_seg_to_shape",
                             resampling_fn_mask_kwargs=dict(rs, order=1), spacing=[1.0, 1.0, 1.0],
                             patch_size=[32, 32, 32])
    plan = Plan(dataset_name="Dataset001_Check", plans_name="nnsslPlans", original_median_spacing_after_transp=[1, 1, 1],
                image_reader_writer="SimpleITKIO", transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
                configurations={"onemmiso": conf}, experiment_planner_used="ExperimentPlanner")
    ap = AdaptationPlan(architecture_plans=ArchitecturePlans("ResidualEncoderUNet", DynamicArchitecturePlans(**kw)),
                        pretrain_plan=plan, pretrain_num_input_channels=1, recommended_downstream_patchsize=(32, 32, 32),
                        key_to_encoder="encoder.stages", key_to_stem="encoder.stem",
                        keys_to_in_proj=("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")).serialize()
    torch.save({"network_weights": net.state_dict(), "nnssl_adaptation_plan": ap,
                "citations": [{"type": "Check", "name": "interop", "apa_citations": ["A check (2026)."]}]}, sys.argv[1])
    print("wrote", sys.argv[1], "with nnssl's dataclasses")
""")

OURS_COMPARE = textwrap.dedent("""
    import sys, torch
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["network_weights"]
    b = load_bundle(sys.argv[2])
    bad = [k for k, v in b["encoder"].items() if not torch.equal(v, sd[k])]
    n = sum(k.startswith("encoder.stages.") for k in sd)
    print(f"imported bundle: {len(b['encoder']) - len(bad)}/{n} encoder tensors bit-identical")
    sys.exit(1 if bad or len(b["encoder"]) != n else 0)
""")


def _step(title: str, cmd, env) -> bool:
    print(f"--- {title}", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(r.stdout.rstrip())
    if r.returncode != 0:
        print(r.stderr[-3000:].rstrip())
        print(f"FAILED: {title} (exit {r.returncode})")
    return r.returncode == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="an encoder bundle folder (nnUNetv2_mmpretrain_export)")
    p.add_argument("--nnunet", required=True, help="checkout of nnU-Net's master branch (holds nnunetv2/)")
    p.add_argument("--nnssl", required=True, help="checkout of nnssl (holds src/nnssl/)")
    p.add_argument("--work", default="check_nnssl", help="folder for the files written (default check_nnssl)")
    a = p.parse_args(argv)
    nnunet, nnssl_src = os.path.abspath(a.nnunet), os.path.join(os.path.abspath(a.nnssl), "src")
    for path, what in ((os.path.join(nnunet, "nnunetv2"), "--nnunet"), (os.path.join(nnssl_src, "nnssl"), "--nnssl")):
        if not os.path.isdir(path):
            print(f"error: {path} does not exist; {what} must name a checkout", file=sys.stderr)
            return 2
    os.makedirs(a.work, exist_ok=True)
    ours = os.path.join(a.work, "mmpretrain_encoder.pth")
    theirs = os.path.join(a.work, "nnssl_written.pth")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env_theirs = dict(os.environ, PYTHONPATH=os.pathsep.join([nnunet, nnssl_src]))
    env_ours = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    ok = _step("export our bundle in the nnssl format",
               [sys.executable, "-m", "nnunet_mmpretrain.cli.export", a.bundle, "--format", "nnssl", "-o", ours], env_ours)
    ok &= _step("nnssl parses it, nnU-Net master loads it", [sys.executable, "-c", THEIRS_LOAD, ours], env_theirs)
    ok &= _step("a checkpoint written with nnssl's dataclasses", [sys.executable, "-c", THEIRS_WRITE, theirs], env_theirs)
    ok &= _step("import it as our bundle", [sys.executable, "-m", "nnunet_mmpretrain.cli.import_nnssl", theirs, "-o",
                                            os.path.join(a.work, "imported_bundle")], env_ours)
    ok &= _step("its encoder arrives unchanged", [sys.executable, "-c", OURS_COMPARE, theirs,
                                                  os.path.join(a.work, "imported_bundle")], env_ours)
    for path, name in ((nnunet, "nnU-Net"), (os.path.abspath(a.nnssl), "nnssl")):
        r = subprocess.run(["git", "-C", path, "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
        print(f"{name} checkout {path}: {r.stdout.strip() or 'not a git checkout (commit unknown)'}")
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
