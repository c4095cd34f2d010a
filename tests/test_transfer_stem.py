"""Stem adaptation (transfer/stem.py) on real dynamic-network-architectures networks."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_mmpretrain.transfer.stem import (STRATEGIES, StemReport, adapt_stem,
                                             channel_modalities_from_dataset_json)

TRAINED = ["flair", "t1", "t1c", "t2"]   # distinct fill values i + 1 per trained modality


def _net(kind: str, c_in: int, features=(8, 16, 32), kernel=3):
    kw = dict(input_channels=c_in, n_stages=3, features_per_stage=list(features), conv_op=nn.Conv3d,
              kernel_sizes=kernel, strides=[1, 2, 2], n_conv_per_stage_decoder=[1, 1], num_classes=2,
              conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
              nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    if kind == "resenc":
        return ResidualEncoderUNet(n_blocks_per_stage=[1, 1, 1], **kw)
    return PlainConvUNet(n_conv_per_stage=[2, 2, 2], **kw)


def _stem_state(net):
    return {k: v for k, v in net.state_dict().items() if k.startswith(net.key_to_stem + ".")}


def _module(net, path):
    mod = net
    for p in path.split("."):
        mod = getattr(mod, p) if not p.isdigit() else mod[int(p)]
    return mod


def _fake_bundle(kind: str, **net_kw) -> dict:
    """Bundle with stems of every vocabulary modality; trained ones filled with i + 1 (kernel),
    10 * (i + 1) (other params), untrained ones with -99."""
    torch.manual_seed(0)
    ref = _net(kind, 1, **net_kw)
    stems = {}
    for m in ["flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc"]:
        v = TRAINED.index(m) + 1.0 if m in TRAINED else -99.0
        sd = {}
        for k, t in _stem_state(ref).items():
            sd[k] = torch.full_like(t, v if t.ndim >= 3 and t.shape[1] == 1 else 10 * v)
        # aliases must hold the same tensor, as in a real state dict
        for a, b in (("convs.0.conv.", "convs.0.all_modules.0."), ("convs.0.norm.", "convs.0.all_modules.1."),
                     ("convs.1.conv.", "convs.1.all_modules.0."), ("convs.1.norm.", "convs.1.all_modules.1.")):
            for k in list(sd):
                if a in k:
                    sd[k.replace(a, b)] = sd[k]
        stems[m] = sd
    return {"stems": stems, "key_to_stem": ref.key_to_stem, "keys_to_in_proj": list(ref.keys_to_in_proj),
            "modalities_trained": list(TRAINED)}


def _load_stem(net, new):
    pre = net.key_to_stem + "."
    _module(net, net.key_to_stem).load_state_dict({k[len(pre):]: v for k, v in new.items()}, strict=True)


@pytest.mark.parametrize("kind", ["resenc", "plain"])
def test_modality_four_channels(kind):
    b = _fake_bundle(kind)
    net = _net(kind, 4)
    tgt = _stem_state(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # all four trained: no warning
        new, rep = adapt_stem(b, tgt, ["T1", "T1ce", "T2", "FLAIR"])
    assert set(new) == set(tgt) and all(new[k].shape == tgt[k].shape for k in tgt)
    w_key = b["keys_to_in_proj"][0] + ".weight"
    w = new[w_key]
    for c, m in enumerate(["t1", "t1c", "t2", "flair"]):
        assert torch.equal(w[:, c], b["stems"][m][w_key][:, 0] / 4)
    assert torch.equal(w[:, 1], torch.full_like(w[:, 1], 3.0 / 4))   # t1c is trained slot 2 -> 3 / C
    for p in b["keys_to_in_proj"]:
        assert torch.equal(new[p + ".weight"], w)
    # other params: mean over the four used stems (10, 20, 30, 40)
    bias_key = b["keys_to_in_proj"][0] + ".bias"
    assert torch.allclose(new[bias_key], torch.full_like(new[bias_key], 25.0))
    _load_stem(net, new)
    sd = net.state_dict()
    for p in b["keys_to_in_proj"]:
        assert torch.equal(sd[p + ".weight"], w)
    assert [s for _, _, s in rep.channels] == ["stem t1", "stem t1c", "stem t2", "stem flair"]
    assert rep.strategy == "modality" and rep.keys_adapted == sorted(tgt) and not rep.warnings
    assert len(rep.summary().splitlines()) == 4 and "channel 1 (t1c): stem t1c" in rep.summary()


def test_modality_untrained_channel_mean_and_warning():
    b = _fake_bundle("resenc")
    net = _net("resenc", 3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        new, rep = adapt_stem(b, _stem_state(net), ["FLAIR", "DWI", "ADC"])
    msgs = [str(r.message) for r in rec]
    assert len(msgs) == 2 and "channel 1 (DWI)" in msgs[0] and "channel 2 (ADC)" in msgs[1]
    w = new["encoder.stem.convs.0.conv.weight"]
    assert torch.equal(w[:, 0], torch.full_like(w[:, 0], 1.0 / 3))
    mean_k = (1 + 2 + 3 + 4) / 4
    assert torch.allclose(w[:, 1], torch.full_like(w[:, 1], mean_k / 3))
    assert torch.allclose(w[:, 2], torch.full_like(w[:, 2], mean_k / 3))
    assert rep.channels[1] == (1, "dwi", "mean of trained stems (modality dwi not pretrained)")
    assert len(rep.warnings) == 2
    # other params come from the only stem used (flair: 10)
    assert torch.equal(new["encoder.stem.convs.0.norm.weight"], torch.full((8,), 10.0))
    _load_stem(net, new)


def test_unknown_name_reported():
    b = _fake_bundle("resenc")
    net = _net("resenc", 3)
    dj = {"channel_names": {"0": "T1", "1": "T1-IR", "2": "FLAIR"}, "labels": {"background": 0}}
    assert channel_modalities_from_dataset_json(dj) == ["t1", None, "flair"]
    mods = channel_modalities_from_dataset_json(dj, keep_unknown=True)
    assert mods == ["t1", "T1-IR", "flair"]
    with pytest.warns(UserWarning, match="T1-IR"):
        _, rep = adapt_stem(b, _stem_state(net), mods)
    assert rep.channels[1] == (1, None, "mean of trained stems (unknown modality T1-IR)")
    with pytest.warns(UserWarning, match="channel 1"):
        _, rep = adapt_stem(b, _stem_state(net), channel_modalities_from_dataset_json(dj))
    assert rep.channels[1][2] == "mean of trained stems (unknown modality)"


@pytest.mark.parametrize("kind", ["resenc", "plain"])
def test_single_channel_is_the_stem(kind):
    b = _fake_bundle(kind)
    net = _net(kind, 1)
    new, _ = adapt_stem(b, _stem_state(net), ["t1n"])
    for k, v in b["stems"]["t1"].items():
        assert torch.equal(new[k], v), k
    _load_stem(net, new)


def test_repeat_identical_slices():
    b = _fake_bundle("plain")
    net = _net("plain", 4)
    new, rep = adapt_stem(b, _stem_state(net), ["t1", "t1c", "t2", "flair"], strategy="repeat")
    w = new["encoder.stages.0.0.convs.0.conv.weight"]
    for c in range(1, 4):
        assert torch.equal(w[:, c], w[:, 0])
    assert torch.allclose(w[:, 0], torch.full_like(w[:, 0], 2.5 / 4))
    assert torch.equal(new["encoder.stages.0.0.convs.0.all_modules.0.weight"], w)
    assert torch.allclose(new["encoder.stages.0.0.convs.1.conv.weight"], torch.full((8, 8, 3, 3, 3), 25.0))
    assert all(s == "mean of trained stems (repeat)" for _, _, s in rep.channels)
    _load_stem(net, new)


def test_reinit_leaves_weights():
    b = _fake_bundle("resenc")
    net = _net("resenc", 4)
    tgt = _stem_state(net)
    before = {k: v.clone() for k, v in tgt.items()}
    new, rep = adapt_stem(b, tgt, ["t1", "t1c", "t2", "flair"], strategy="reinit")
    assert all(torch.equal(new[k], before[k]) for k in before)
    assert rep.keys_adapted == [] and all(s == "random init" for _, _, s in rep.channels)
    _load_stem(net, new)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)


def test_invalid_strategy_and_mismatches():
    b = _fake_bundle("resenc")
    tgt = _stem_state(_net("resenc", 2))
    with pytest.raises(ValueError, match="valid strategies: modality, repeat, reinit"):
        adapt_stem(b, tgt, ["t1", "t2"], strategy="average")
    assert STRATEGIES == ("modality", "repeat", "reinit")
    wide = _stem_state(_net("resenc", 2, features=(16, 16, 32)))
    with pytest.raises(ValueError) as e:
        adapt_stem(b, wide, ["t1", "t2"])
    msg = str(e.value)
    assert "encoder.stem.convs.0" in msg and "(8, 1, 3, 3, 3)" in msg and "(16, 2, 3, 3, 3)" in msg
    k5 = _stem_state(_net("resenc", 2, kernel=5))
    with pytest.raises(ValueError, match=r"\(8, 2, 5, 5, 5\)"):
        adapt_stem(b, k5, ["t1", "t2"])
    with pytest.raises(ValueError, match="lists 3"):
        adapt_stem(b, tgt, ["t1", "t2", "flair"])
    with pytest.raises(ValueError, match="does not fit the target stem"):
        adapt_stem(b, tgt | {"encoder.stem.extra.weight": torch.zeros(1)}, ["t1", "t2"])
    with pytest.raises(ValueError, match="outside the stem"):
        adapt_stem(b, _stem_state(_net("plain", 2)), ["t1", "t2"])


def test_scale_claim_forward():
    """One channel alone through the adapted C-channel conv = pretrained 1-channel conv / C (bias aside)."""
    torch.manual_seed(1)
    src = _net("resenc", 1)
    for p in src.parameters():
        p.data.normal_()
    b = {"stems": {"t1c": _stem_state(src), "t2": _stem_state(_net("resenc", 1))},
         "key_to_stem": "encoder.stem", "keys_to_in_proj": list(src.keys_to_in_proj),
         "modalities_trained": ["t1c", "t2"]}
    net = _net("resenc", 4)
    with warnings.catch_warnings(record=True) as rec:   # t1 and flair were not pretrained here
        warnings.simplefilter("always")
        new, _ = adapt_stem(b, _stem_state(net), ["t1", "t1c", "t2", "flair"])
    assert len(rec) == 2
    _load_stem(net, new)
    x = torch.randn(1, 1, 8, 8, 8)
    xc = torch.zeros(1, 4, 8, 8, 8)
    xc[:, 1] = x[:, 0]
    conv_src, conv_new = src.encoder.stem.convs[0].conv, net.encoder.stem.convs[0].conv
    with torch.no_grad():
        out_src = conv_src(x) - conv_src.bias.view(1, -1, 1, 1, 1)
        out_new = conv_new(xc) - conv_new.bias.view(1, -1, 1, 1, 1)
        assert torch.allclose(out_new, out_src / 4, atol=1e-5)
        # all four channels fed one image: the sum is the mean of the four channels' responses
        # (t1, flair: mean kernel; t1c, t2: their stems), i.e. one stem's scale, not 4x
        xs = x.expand(1, 4, 8, 8, 8)
        ws = [b["stems"][m]["encoder.stem.convs.0.conv.weight"] for m in ("t1c", "t2")]
        mean_w = (ws[0] + ws[1]) / 2
        expect = torch.nn.functional.conv3d(x, (2 * mean_w + ws[0] + ws[1]) / 4, padding=1)
        assert torch.allclose(conv_new(xs) - conv_new.bias.view(1, -1, 1, 1, 1), expect, atol=1e-4)


def test_report_dataclass():
    r = StemReport("reinit", [(0, "t1", "random init")])
    assert r.summary() == "channel 0 (t1): random init"
