"""Faults beyond one bad argument: a refused checkpoint write during pretraining (a real write
failure under a file-size limit in a child process; no disk is filled), exports killed half-way,
bundle files changed after export, checkpoints that do not match their plans, and the last line of
a refused fine-tuning."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import release_fakes as F
from bad_input_cases_integrity import tiny_bundle
from conftest import SEG_ID, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: a child process whose files may not grow past 64 KiB (RLIMIT_FSIZE; SIGXFSZ ignored, so the
#: write fails with EFBIG as on a full disk) saves a pretraining checkpoint
CHILD = r"""
import os, resource, signal, sys, types, torch
from nnunet_mmpretrain.training import pretrain
folder = sys.argv[1]
old = os.path.join(folder, "checkpoint_latest.pth")
torch.save({"epoch": 1}, old)
finished = []
class Loader:
    def __init__(self, name): self.name = name
    def _finish(self): finished.append(self.name)
pretrain.checkpoint_dict = lambda trainer: {"w": torch.zeros(200000)}   # 800 kB
fake = types.SimpleNamespace(local_rank=0, disable_checkpointing=False, dataloader_train=Loader("train"),
                             dataloader_val=Loader("val"))
fake._stop_loaders = types.MethodType(pretrain.nnUNetTrainerMMPretrain._stop_loaders, fake)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    pretrain.nnUNetTrainerMMPretrain.save_checkpoint(fake, old)
except pretrain.PretrainingError as e:
    print("ERROR " + str(e))
print("FINISHED " + ",".join(finished))
print("FILES " + ",".join(sorted(os.listdir(folder))))
print("OLD " + str(torch.load(old, weights_only=True)))
"""


def test_refused_checkpoint_write_ends_pretraining_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert "checkpoint_latest.pth failed" in out["ERROR"] and "previous checkpoint_latest.pth is unchanged" in out["ERROR"]
    assert "\n" not in out["ERROR"] and "--c" in out["ERROR"]
    assert out["FINISHED"] == "train,val"          # the loader workers are stopped, nothing waits on them
    assert out["FILES"] == "checkpoint_latest.pth"  # no temporary file left
    assert out["OLD"] == "{'epoch': 1}"


def test_export_removes_the_partial_folders_of_killed_exports(tmp_path):
    from nnunet_mmpretrain.cli.export import main
    src = tiny_bundle(str(tmp_path / "b0"))
    dead = tmp_path / ".b1.partial-999999999-abc"    # no such process
    unnamed = tmp_path / ".b1.partial-xyz"           # an older exporter's name
    alive = tmp_path / f".b1.partial-{os.getpid()}-def"
    for d in (dead, unnamed, alive):
        os.makedirs(d)
        (d / "encoder_bundle.pt").write_bytes(b"half")
    assert main([src, "-o", str(tmp_path / "b1")]) == 0
    assert not dead.exists() and not unnamed.exists() and alive.exists()
    assert sorted(os.listdir(tmp_path / "b1")) == ["MODEL_CARD.md", "bundle.json", "encoder_bundle.pt",
                                                    "pretraining_plans.json"]


def test_fill_and_fine_tuning_refuse_bundle_files_changed_after_export(tmp_path):
    from nnunet_mmpretrain.transfer.bundle import BundleError, load_bundle
    from nnunet_mmpretrain.transfer.fill import fill_missing_channel
    import SimpleITK as sitk
    b = tiny_bundle(str(tmp_path / "b"), templates=True)
    case = sitk.GetImageFromArray(np.pad(np.ones((6, 8, 7), np.float32), 2))
    res = fill_missing_channel({0: case, 1: None}, ["t2", "t1"], b)   # intact: used
    assert res.substituted == [1]
    t = os.path.join(b, "templates", "template_t1.nii.gz")
    F.write(t, np.random.default_rng(0).random((9, 9, 9)).astype(np.float32))   # noise of another shape
    with pytest.raises(BundleError, match="template_t1.nii.gz: SHA-256 differs"):
        fill_missing_channel({0: case, 1: None}, ["t2", "t1"], b)
    # a loose template folder (no bundle.json): a 4D file is refused by its shape
    loose = tmp_path / "loose"
    F.write(str(loose / "template_t1.nii.gz"), np.ones((2, 6, 8, 7), np.float32))
    with pytest.raises(ValueError, match="not one 3D volume"):
        fill_missing_channel({0: case, 1: None}, ["t2", "t1"], str(loose))
    w = os.path.join(b, "encoder_bundle.pt")
    data = bytearray(open(w, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(w, "wb").write(bytes(data))
    with pytest.raises(BundleError, match="encoder_bundle.pt: SHA-256 differs"):
        load_bundle(b)   # what fine-tuning, transfer and export call


def test_shapes_are_checked_at_export():
    from nnunet_mmpretrain.transfer.bundle import BundleError, check_shapes
    ref = {"encoder.stages.0.conv.weight": torch.zeros(8, 4, 3, 3, 3), "encoder.stages.0.norm.weight": torch.zeros(8)}
    check_shapes("ck.pth", {k: v.clone() for k, v in ref.items()}, ref)
    with pytest.raises(BundleError, match=r"ck.pth: encoder.stages.0.conv.weight has shape \(8, 4, 3, 3, 2\) but "
                                          r"the architecture of its plans needs \(8, 4, 3, 3, 3\)"):
        check_shapes("ck.pth", {**ref, "encoder.stages.0.conv.weight": torch.zeros(8, 4, 3, 3, 2)}, ref)


def test_export_refuses_a_checkpoint_with_a_wrongly_shaped_weight(pretrained, tmp_path):
    ck = torch.load(os.path.join(pretrained["fold"], "checkpoint_final.pth"), map_location="cpu", weights_only=True)
    key = next(k for k, v in ck["network_weights"].items() if k.startswith("encoder.stages") and v.ndim == 5)
    w = ck["network_weights"][key]
    ck["network_weights"][key] = torch.zeros(w.shape[0], w.shape[1], *[s + 1 for s in w.shape[2:]])
    torch.save(ck, tmp_path / "bad.pth")
    r = run_cli(["nnUNetv2_mmpretrain_export", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "b")], check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and key in r.stderr and "has shape" in r.stderr
    assert not os.path.exists(tmp_path / "b")


def test_refused_fine_tuning_ends_with_our_message(planned_seg):
    """No bundle anywhere: nnUNetv2_train's last line is the refusal, not nnU-Net's 'background
    workers are no longer alive'."""
    r = run_cli(["nnUNetv2_train", str(SEG_ID), "3d_tiny", "0", "-tr", "nnUNetTrainerMMFinetune", "-device", "cpu"],
                env={"nnUNet_mmpretrain_bundle": ""}, check=False)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "needs a pretrained encoder bundle" in last and "background workers" not in r.stderr, r.stderr[-2000:]
