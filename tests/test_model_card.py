"""The self-describing bundle: bundle.json fields and MODEL_CARD.md from the pretraining run,
``--verify`` catching tampering, re-export that swaps the whole folder (no stale file, old bundle
intact on failure, normal file modes)."""
import hashlib
import json
import os
import shutil

import pytest


REQUIRED = ("corpus", "method", "schedule", "proxy_task", "plans_and_fingerprint", "modality_order", "axis_order",
            "template_geometry", "versions", "code", "command", "license", "weights_sha256", "files")


from conftest import run_main as _cli  # noqa: E402


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_bundle_json_and_model_card_describe_the_run(bundle, pretrained):
    meta = json.load(open(os.path.join(bundle, "bundle.json")))
    for k in REQUIRED:
        assert k in meta, k
    assert meta["weights_sha256"] == _sha(os.path.join(bundle, "encoder_bundle.pt"))
    assert meta["files"]["pretraining_plans.json"] == _sha(os.path.join(bundle, "pretraining_plans.json"))
    c = meta["corpus"]
    fp = json.load(open(os.path.join(pretrained["folder"], "dataset_fingerprint.json")))
    cases = fp["mmpretrain"]["modalities_per_case"]
    assert c["case_count"] == len(cases) and c["dataset"] == "Dataset992_PhantomCorpus"
    assert c["case_list_sha256"] == hashlib.sha256(
        json.dumps(sorted([k, sorted(v)] for k, v in cases.items())).encode()).hexdigest()
    assert set(c["sources"]) == {"phantom_brats", "phantom_ixi"}
    assert sum(c["scans_per_modality"].values()) == sum(len(v) for v in cases.values())
    assert meta["method"]["trainer"] == "nnUNetTrainerMMPretrain_5epochs" and meta["method"]["objective"]["w_md"] > 0
    assert meta["schedule"]["epochs_completed"] == 5 and meta["schedule"]["planned_epochs"] == 5
    assert meta["method"]["settings"]["mask_ratio"] > 0 and meta["schedule"]["patch_size"] == [32, 32, 32]
    for view in ("template_view", "cross_modal_view"):
        r = meta["proxy_task"][view]
        assert r["masked_mse"] > 0 and r["baseline_patch_mean"] > 0
        assert r["ratio_to_patch_mean"] == pytest.approx(r["masked_mse"] / r["baseline_patch_mean"])
    assert meta["plans_and_fingerprint"]["configuration"] == "3d_tiny"
    assert len(meta["plans_and_fingerprint"]["fingerprint_sha256"]) == 64
    assert meta["modality_order"]["vocabulary"][:4] == ["flair", "t1", "t1c", "t2"]
    assert meta["axis_order"]["transpose_forward"] == [0, 1, 2] and meta["template_geometry"]
    assert meta["versions"]["nnunetv2"] and meta["command"].startswith("nnUNetv2_mmpretrain_export ")
    assert meta["stem_origin"] == "per-modality"
    n = len(meta["modality_order"]["trained"])
    assert len(meta["stem_kernel_cosine"]) == n * (n - 1) // 2 > 0
    assert all(-1.0 <= v <= 1.0 for v in meta["stem_kernel_cosine"].values())
    card = open(os.path.join(bundle, "MODEL_CARD.md")).read()
    for s in ("## Modality stems", "## Corpus", "## Final proxy-task errors", meta["weights_sha256"], c["case_list_sha256"],
              "licence", "template_view"):
        assert s in card, s


def test_verify_passes_then_fails_on_a_tampered_weights_file(bundle, tmp_path, capsys):
    from nnunet_mmpretrain.cli.export import main as export
    b = str(tmp_path / "b")
    shutil.copytree(bundle, b)
    rc, out, err = _cli(export, ["--verify", b], capsys)
    assert rc == 0 and "OK" in out
    w = os.path.join(b, "encoder_bundle.pt")
    data = bytearray(open(w, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(w, "wb").write(bytes(data))
    rc, out, err = _cli(export, ["--verify", b], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "encoder_bundle.pt" in err and "SHA256" in err

    # metadata that disagrees with intact weights
    shutil.rmtree(b)
    shutil.copytree(bundle, b)
    meta = json.load(open(os.path.join(b, "bundle.json")))
    meta["encoder_keys"] += 1
    json.dump(meta, open(os.path.join(b, "bundle.json"), "w"))
    rc, out, err = _cli(export, ["--verify", b], capsys)
    assert rc == 2 and "encoder_keys" in err


def test_reexport_swaps_the_whole_folder(pretrained, tmp_path, capsys, monkeypatch):
    from nnunet_mmpretrain.cli.export import main as export
    ck = os.path.join(pretrained["fold"], "checkpoint_final.pth")
    out_dir = str(tmp_path / "bundle")
    assert _cli(export, [ck, "-o", out_dir], capsys)[0] == 0
    open(os.path.join(out_dir, "stale.txt"), "w").write("old")
    open(os.path.join(out_dir, "templates", "template_zz.nii.gz"), "w").write("old")
    rc, out, err = _cli(export, [ck, "-o", out_dir, "--license", "CC-BY-4.0"], capsys)
    assert rc == 0, err
    assert not os.path.exists(os.path.join(out_dir, "stale.txt"))
    assert not os.path.exists(os.path.join(out_dir, "templates", "template_zz.nii.gz"))
    assert _cli(export, ["--verify", out_dir], capsys)[0] == 0
    assert json.load(open(os.path.join(out_dir, "bundle.json")))["license"] == "CC-BY-4.0"
    mask = os.umask(0o022)
    os.umask(mask)
    for root, dirs, files in os.walk(out_dir):
        assert os.stat(root).st_mode & 0o777 == 0o777 & ~mask, root
        for f in files:
            assert os.stat(os.path.join(root, f)).st_mode & 0o777 == 0o666 & ~mask, f
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".bundle.")]   # no leftovers beside it

    # a failure half-way leaves the old bundle as it was
    open(os.path.join(out_dir, "marker.txt"), "w").write("still here")
    before = {f: _sha(os.path.join(out_dir, f)) for f in ("encoder_bundle.pt", "bundle.json")}
    import nnunet_mmpretrain.transfer.model_card as mc

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(mc, "render_model_card", boom)
    rc, out, err = _cli(export, [ck, "-o", out_dir], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert open(os.path.join(out_dir, "marker.txt")).read() == "still here"
    assert before == {f: _sha(os.path.join(out_dir, f)) for f in before}
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".bundle.")]


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(pretrained, tmp_path, capsys):
    from nnunet_mmpretrain.cli.export import main as export
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    rc, out, err = _cli(export, [os.path.join(pretrained["fold"], "checkpoint_final.pth"), "-o", str(home)], capsys)
    assert rc == 2 and "holds no bundle" in err and (home / "notes.txt").read_text() == "mine"


def test_model_card_warns_when_modality_stems_learned_the_same_filter():
    """Two stems with the same input kernel: the modality transfer would average their channels."""
    import torch
    from nnunet_mmpretrain.transfer.model_card import render_model_card, same_filter_pairs
    from nnunet_mmpretrain.transfer.stem import stem_kernel_cosines
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, 3, 3, 3, generator=g)
    stems = {"t1": {"s.conv.weight": w}, "t1c": {"s.conv.weight": 2.0 * w},
             "flair": {"s.conv.weight": torch.randn(8, 1, 3, 3, 3, generator=g)}}
    bundle = {"stems": stems, "modalities_trained": ["t1", "t1c", "flair"], "keys_to_in_proj": ["s.conv"]}
    cos = stem_kernel_cosines(bundle)
    assert cos["t1-t1c"] == pytest.approx(1.0) and abs(cos["t1-flair"]) < 0.5 and abs(cos["t1c-flair"]) < 0.5
    line = same_filter_pairs({"stem_kernel_cosine": cos})
    assert "t1-t1c (1.00)" in line and "flair" not in line
    assert same_filter_pairs({"stem_kernel_cosine": {"t1-flair": cos["t1-flair"]}}) == ""
    meta = {"stem_kernel_cosine": cos, "weights_file": "w.pt", "weights_sha256": "x", "modality_order":
            {"stems": ["t1"], "trained": ["t1"], "vocabulary": ["t1"]}}
    assert "**warning**: the modality stems t1-t1c (1.00)" in render_model_card(meta)
