"""The BrainMVP step as a plain function: per-view diagnostics, fixed masks, evaluation mode,
DAD on the views; the corpus means and the grid geometry it relies on."""
import numpy as np
import pytest
import torch

from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig
from nnunet_mmpretrain.pretrain.step import MaskSpec, PretrainBatch, brainmvp_forward, dad_views
from nnunet_mmpretrain.pretrain.templates import ModalityTemplates

P = (16, 16, 16)


class EchoNet(torch.nn.Module):
    """Returns its input as the reconstruction (a network that leaves the fill in place)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, m):
        return x * self.w, x.mean(dim=(2, 3, 4), keepdim=True), torch.randn(x.shape[0], 4)


def _batch(B=3):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(B, 1, *P, generator=g)
    partner = torch.randn(B, 1, *P, generator=g)
    return PretrainBatch(target, partner, torch.tensor([1, 2, 3][:B]), torch.tensor([2, -1, 1][:B]),
                         torch.zeros(B, 3, dtype=torch.long))


def test_per_view_errors_equal_the_fill_baseline_for_a_network_that_copies_its_input():
    batch = _batch()
    tm = ModalityTemplates((20, 20, 20), init=torch.randn(8, 20, 20, 20))
    _, logs, (target, view_md, view_cmr, recon) = brainmvp_forward(
        EchoNet(), batch, objective=ObjectiveConfig(), epoch=5, num_epochs=10, mask=MaskSpec(0.5, 4), templates=tm)
    for v in ("md", "cmr"):
        assert logs[f"{v}_masked_mse"] == pytest.approx(logs[f"{v}_baseline_fill"], rel=1e-6)
        assert logs[f"{v}_baseline_patch_mean"] > 0
    # the single-modality sample (n = -1) gets the template in its cross-modal view
    m = view_cmr[1] != target[1]
    assert torch.allclose(view_cmr[1][m], tm(batch.m_idx[1:2], batch.starts[1:2], P)[0][m])
    assert 0 <= logs["emb_std"] < 1


def test_fixed_masks_and_evaluation_mode_make_validation_reproducible():
    batch = _batch()
    g = torch.Generator().manual_seed(3)
    from nnunet_mmpretrain.pretrain.masking import block_mask
    masks = tuple(block_mask(3, P, 4, 0.5, generator=g) for _ in range(2))
    tm = ModalityTemplates((20, 20, 20), init=torch.randn(8, 20, 20, 20))
    net = EchoNet()
    # during the template warm-up (epoch 0 of 10) training fills the cross-modal view with the
    # template; evaluation always measures the final task (the partner), so curves are comparable
    kw = dict(objective=ObjectiveConfig(template_warmup_fraction=0.5), num_epochs=10, templates=tm, masks=masks)
    _, train_logs, (_, _, v_train, _) = brainmvp_forward(net, batch, epoch=0, **kw)
    _, a, (_, _, v_eval, _) = brainmvp_forward(net, batch, epoch=0, evaluate=True, **kw)
    _, b, _ = brainmvp_forward(net, batch, epoch=9, evaluate=True, **kw)
    assert not torch.equal(v_train, v_eval)
    assert torch.equal(v_eval[0][masks[1][0]], batch.partner[0][masks[1][0]])
    for k in ("md_masked_mse", "cmr_masked_mse", "md_baseline_patch_mean", "cmr_baseline_fill"):
        assert a[k] == b[k]


def test_dad_views_borrows_another_samples_foreground_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 8, 8, 8)
    x[0, 0, 2:6, 2:6, 2:6] = torch.randn(4, 4, 4, generator=g) * 0.5 + 1.0
    x[1, 0, 1:7, 1:7, 1:7] = torch.randn(6, 6, 6, generator=g) * 2.0 - 3.0
    out = dad_views(x, p=1.0, jitter=0.0, generator=g)
    fg0, fg1 = x[0] != 0, x[1] != 0
    assert out[0][fg0].mean().item() == pytest.approx(x[1][fg1].mean().item(), abs=1e-4)
    assert out[0][fg0].std(unbiased=False).item() == pytest.approx(x[1][fg1].std(unbiased=False).item(), rel=1e-3)
    assert torch.all(out[0][~fg0] == 0)                       # background stays
    assert torch.equal(dad_views(x, p=0.0), x)


def test_corpus_means_place_cases_at_their_grid_offsets():
    from nnunet_mmpretrain.corpus.means import corpus_means
    grid = (10, 12, 8)
    props = {}
    cases = {}
    for k, (off, val) in enumerate((((1, 2, 0), 1.0), ((3, 0, 2), 3.0))):
        shape = (5, 6, 4)
        props[f"c{k}"] = {"spacing": [2.0, 2.0, 2.0], "shape_before_cropping": grid,
                          "bbox_used_for_cropping": [[o, o + s] for o, s in zip(off, shape)],
                          "modalities": ["t1", "t2"] if k == 0 else ["t1"]}
        cases[f"c{k}"] = np.stack([np.full(shape, val, np.float32)] * len(props[f"c{k}"]["modalities"]))
    means = corpus_means(lambda k: cases[k], props, [0, 1, 2], [2.0, 2.0, 2.0], grid)
    assert set(means) == {"t1", "t2"}
    assert means["t1"][1, 2, 0] == 1.0 and means["t1"][4, 4, 2] == 2.0 and means["t1"][7, 5, 5] == 3.0
    assert means["t1"][9, 11, 7] == 0.0 and means["t2"][3, 2, 2] == 1.0 and means["t2"][7, 5, 5] == 0.0


def test_grid_geometry_writes_a_volume_on_the_reference_image():
    import SimpleITK as sitk
    from nnunet_mmpretrain.geometry import GridGeometry
    props = {"sitk_stuff": {"spacing": (1.0, 2.0, 3.0), "origin": (5.0, -4.0, 2.0),
                            "direction": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)},
             "shape_before_cropping": (7, 9, 11)}                  # transposed order (transpose 2, 1, 0)
    geo = GridGeometry.from_case(props, transpose_backward=(2, 1, 0))
    vol = np.arange(7 * 9 * 11, dtype=np.float32).reshape(7, 9, 11)
    img = geo.to_image(vol)
    assert img.GetSpacing() == (1.0, 2.0, 3.0) and img.GetOrigin() == (5.0, -4.0, 2.0)
    assert np.array_equal(sitk.GetArrayFromImage(img), np.transpose(vol, (2, 1, 0)))
    assert GridGeometry.from_dict(geo.to_dict()) == geo
    half = geo.to_image(vol[::2, ::3, ::1])                     # a coarser grid is resampled back
    assert sitk.GetArrayFromImage(half).shape == (11, 9, 7)


class JointEchoNet(EchoNet):
    """Joint view: returns each modality's own (filled) input in its vocabulary channel."""

    def forward(self, x, m, joint=None):
        out = super().forward(x, m)
        if joint is None:
            return out
        xs, idx = joint
        rec = torch.zeros(xs.shape[0], 8, *xs.shape[2:])
        for i in range(xs.shape[0]):
            for k in reversed(range(xs.shape[1])):
                if idx[i, k] >= 0:
                    rec[i, idx[i, k]] = xs[i, k]
        return out + (rec * self.w,)


def test_joint_view_rebuilds_both_modalities_on_their_own_masks():
    batch = _batch()
    tm = ModalityTemplates((20, 20, 20), init=torch.randn(8, 20, 20, 20))
    g = torch.Generator().manual_seed(1)
    from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask
    masks = tuple(block_mask(3, P, 4, 0.5, generator=g) for _ in range(2))
    obj = ObjectiveConfig(w_md=1.0, recon_region="masked", w_joint=2.0)
    loss, logs, _ = brainmvp_forward(JointEchoNet(), batch, objective=obj, epoch=5, num_epochs=10,
                                     mask=MaskSpec(0.5, 4), templates=tm, masks=masks)
    # a network that leaves the fill in place scores the fill baseline on the target ...
    assert logs["joint_masked_mse"] == pytest.approx(logs["joint_baseline_fill"], rel=1e-6)
    # ... and the term adds the partner's masked error where the case has a partner (samples 0, 2)
    with torch.no_grad():
        P_fill = apply_fill(batch.partner, masks[1], tm(batch.n_idx.clamp(min=0), batch.starts, P))
        T_fill = apply_fill(batch.target, masks[0], tm(batch.m_idx, batch.starts, P))
    two = batch.n_idx >= 0
    m = masks[1][two].expand_as(batch.partner[two])
    l_n = float(((P_fill[two] - batch.partner[two])[m] ** 2).mean())
    l_m = float(((T_fill - batch.target)[masks[0].expand_as(batch.target)] ** 2).mean())
    assert logs["l_joint"] == pytest.approx(l_m + l_n, rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["l_md"] + logs["l_cmr"] + 2.0 * logs["l_joint"], rel=1e-5)


def test_joint_view_trains_both_stems_and_its_readout():
    from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    torch.manual_seed(0)
    base = ResidualEncoderUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1],
                               conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                               nonlin=torch.nn.LeakyReLU)
    net = MMPretrainNetwork(base, (20, 20, 20), [1, 2, 2], proj_dim=0, decoder="hypercolumn", joint=True)
    batch = _batch()
    loss, logs, _ = brainmvp_forward(net, batch, objective=ObjectiveConfig(w_md=0, w_cmr=0, w_mcl=0, w_joint=1.0),
                                     epoch=0, num_epochs=10, mask=MaskSpec(0.5, 4), templates=net.templates)
    loss.backward()
    grad = lambda mod: sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)
    assert grad(net.joint_decoder) > 0
    for slot in (1, 2, 3):        # targets 1, 2, 3 and partners 2, 1 all reach their stems
        assert grad(net.stems[slot]) > 0
    assert grad(net.stems[0]) == 0
    with pytest.raises(ValueError, match="joint"):
        MMPretrainNetwork(base, None, [1, 2, 2], decoder="skipfree", joint=True)


def _stack_batch():
    """Three cases: four modalities, two (padded), one (padded)."""
    batch = _batch()
    g = torch.Generator().manual_seed(7)
    batch.stack = torch.randn(3, 4, *P, generator=g)
    batch.stack_idx = torch.tensor([[0, 1, 2, 3], [2, 4, -1, -1], [5, -1, -1, -1]])
    batch.stack[1, 2:] = 0
    batch.stack[2, 1:] = 0
    return batch


def test_joint_view_over_all_modalities_masks_each_on_its_own_and_skips_padding():
    from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask
    from nnunet_mmpretrain.pretrain.step import joint_inputs
    batch = _stack_batch()
    tm = ModalityTemplates((20, 20, 20), init=torch.randn(8, 20, 20, 20))
    g = torch.Generator().manual_seed(1)
    masks = tuple(block_mask(3, P, 4, 0.5, generator=g) for _ in range(2))
    stack_mask = block_mask(12, P, 4, 0.5, generator=g).view(3, 4, *P)
    obj = ObjectiveConfig(w_md=1.0, recon_region="masked", w_joint=0.5, joint_all=True)
    loss, logs, _ = brainmvp_forward(JointEchoNet(), batch, objective=obj, epoch=5, num_epochs=10,
                                     mask=MaskSpec(0.5, 4), templates=tm, masks=masks + (stack_mask,))
    # every channel keeps its own mask: the masks of a case's modalities differ
    assert not torch.equal(stack_mask[0, 0], stack_mask[0, 1])
    with torch.no_grad():
        xs, idx, targets, m = joint_inputs(batch, None, masks[0], masks[1], tm, True, stack_mask=stack_mask)
        filled = apply_fill(batch.stack, stack_mask,
                            tm(batch.stack_idx.reshape(-1).clamp(min=0), batch.starts.repeat_interleave(4, 0),
                               P).view(3, 4, *P))
    assert torch.equal(xs, filled) and torch.equal(idx, batch.stack_idx)
    # a network that leaves the fill in place: per slot, the fill's masked error over the cases
    # that have a modality there (slot 0: all three, slots 2 and 3: case 0 only), summed
    expect = 0.0
    for k, cases in ((0, [0, 1, 2]), (1, [0, 1]), (2, [0]), (3, [0])):
        sel = stack_mask[cases, k]
        expect += float(((filled[cases, k] - batch.stack[cases, k])[sel] ** 2).mean())
    assert logs["l_joint"] == pytest.approx(expect, rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["l_md"] + logs["l_cmr"] + 0.5 * logs["l_joint"], rel=1e-5)
    with pytest.raises(ValueError, match="stack"):
        batch.stack = None
        brainmvp_forward(JointEchoNet(), batch, objective=obj, epoch=5, num_epochs=10, mask=MaskSpec(0.5, 4),
                         templates=tm, masks=masks)


def test_joint_view_averages_the_stems_of_the_modalities_a_case_has():
    from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    torch.manual_seed(0)
    base = ResidualEncoderUNet(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1],
                               conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                               nonlin=torch.nn.LeakyReLU)
    net = MMPretrainNetwork(base, (20, 20, 20), [1, 2, 2], proj_dim=0, decoder="hypercolumn", joint=True).eval()
    seen = []
    net.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    batch = _stack_batch()
    x = torch.randn(1, 1, *P)
    with torch.no_grad():
        net(x, torch.tensor([0]), joint=(batch.stack, batch.stack_idx))
        stems = [[net.stems[int(m)](batch.stack[i, k:k + 1].unsqueeze(0)) for k, m in enumerate(batch.stack_idx[i])
                  if m >= 0] for i in range(3)]
    joint_in = seen[0][1:]
    for i in range(3):
        assert torch.allclose(joint_in[i], torch.stack(stems[i]).mean(0)[0], atol=1e-6)
    # the padded slots reach no stem's gradient
    net.train()
    out = net(x, torch.tensor([0]), joint=(batch.stack[2:], batch.stack_idx[2:]))
    out[3].sum().backward()
    grad = lambda mod: sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)
    assert grad(net.stems[5]) > 0 and grad(net.stems[1]) == 0


def test_downstream_joint_stem_feeds_the_encoder_what_the_transferred_stem_will():
    """joint_stem='downstream': the joint view's stem output for a case's modalities equals the
    output of the C-channel stem that adapt_stem ('modality') builds from the same stems."""
    from nnunet_mmpretrain.modalities import MODALITIES
    from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
    from nnunet_mmpretrain.transfer.stem import adapt_stem
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    def unet(c):
        torch.manual_seed(c)
        return ResidualEncoderUNet(c, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1],
                                   conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                                   nonlin=torch.nn.LeakyReLU)
    net = MMPretrainNetwork(unet(1), (20, 20, 20), [1, 2, 2], proj_dim=0, decoder="hypercolumn", joint=True,
                            joint_stem="downstream")
    with torch.no_grad():                       # stems that differ in every parameter
        for i, st in enumerate(net.stems):
            for p in st.parameters():
                p.add_(0.1 * (i + 1) * torch.randn_like(p))
    mods = ["t2", "flair", "t1"]
    idx = torch.tensor([[MODALITIES.index(m) for m in mods] + [-1], [MODALITIES.index("t1c"), -1, -1, -1]])
    xs = torch.randn(2, 4, *P)
    got = net.joint_stem_forward(xs, idx)
    down = unet(3)
    ks = net.key_to_stem
    bundle = {"key_to_stem": ks, "keys_to_in_proj": list(net.keys_to_in_proj), "modalities_trained": mods,
              "stems": {m: {f"{ks}.{k}": v.detach() for k, v in net.stems[MODALITIES.index(m)].state_dict().items()}
                        for m in mods}}
    target = {k: v for k, v in down.state_dict().items() if k.startswith(ks + ".")}
    new, _ = adapt_stem(bundle, target, mods, "modality")
    down.load_state_dict(new, strict=False)
    with torch.no_grad():
        want = down.encoder.stem(xs[:1, :3])
        one = net.stems[MODALITIES.index("t1c")](xs[1:, :1])
    assert torch.allclose(got[:1], want, atol=1e-5)
    assert torch.allclose(got[1:], one, atol=1e-6)            # a single modality: its own stem
    assert all(st.convs[0].conv.weight.shape[1] == 1 for st in net.stems)   # the stems stay as they were
    got.sum().backward()                                      # every mixed stem learns from the view
    for m in mods + ["t1c"]:
        assert float(net.stems[MODALITIES.index(m)].convs[0].conv.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="joint_stem"):
        ObjectiveConfig(joint_stem="sum")
