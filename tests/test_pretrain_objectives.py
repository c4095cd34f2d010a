"""BrainMVP objective: schedule switches, weights, reconstruction regions, diagnostics."""
import math

import pytest
import torch

from nnunet_mmpretrain.pretrain.contrastive import info_nce
from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask
from nnunet_mmpretrain.pretrain.objectives import (ObjectiveConfig, compute, masked_error_report,
                                                   reconstruction_loss)


def test_schedule_switches_by_epoch():
    cfg = ObjectiveConfig()
    assert cfg.mcl_start_epoch(1500) == 1000  # BrainMVP: epoch 1000 of 1500
    assert not cfg.mcl_active(999, 1500) and cfg.mcl_active(1000, 1500)
    assert cfg.use_template_in_cmr_view(0, 1500) and cfg.use_template_in_cmr_view(299, 1500)
    assert not cfg.use_template_in_cmr_view(300, 1500)
    assert [cfg.use_template_in_cmr_view(e, 10) for e in range(4)] == [True, True, False, False]
    assert [cfg.mcl_active(e, 10) for e in range(5, 10)] == [False, False, True, True, True]
    assert not ObjectiveConfig(w_mcl=0).mcl_active(9, 10)
    assert not ObjectiveConfig(template_warmup_fraction=0).use_template_in_cmr_view(0, 10)
    with pytest.raises(ValueError):
        ObjectiveConfig(recon_region="foreground")


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(3, 1, 8, 8, 8, generator=g)
    r_md = target + 0.1 * torch.randn(3, 1, 8, 8, 8, generator=g)
    r_cmr = target + 0.3 * torch.randn(3, 1, 8, 8, 8, generator=g)
    m_md = block_mask(3, (8, 8, 8), 4, 0.5, generator=g)
    m_cmr = block_mask(3, (8, 8, 8), 4, 0.5, generator=g)
    z = torch.randn(3, 16, 2, 2, 2, generator=g), torch.randn(3, 16, 2, 2, 2, generator=g)
    return target, r_md, r_cmr, m_md, m_cmr, z


def test_compute_weights_and_mcl_switch():
    target, r_md, r_cmr, m_md, m_cmr, (z1, z2) = _batch()
    cfg = ObjectiveConfig(temperature=0.2)
    kw = dict(target=target, recon_md=r_md, recon_cmr=r_cmr, mask_md=m_md, mask_cmr=m_cmr,
              z_md=z1, z_cmr=z2, num_epochs=9)
    l_md = torch.mean((r_md - target) ** 2).item()
    l_cmr = torch.mean((r_cmr - target) ** 2).item()
    early, logs = compute(cfg, epoch=5, **kw)
    assert logs["mcl_active"] == 0 and logs["l_mcl"] == 0
    assert early.item() == pytest.approx(10 * l_md + l_cmr, rel=1e-5)
    assert logs["l_md"] == pytest.approx(l_md, rel=1e-5)
    assert logs["loss"] == pytest.approx(early.item())
    late, logs = cfg.compute(epoch=6, **kw)
    l_mcl = info_nce(z1.mean((2, 3, 4)), z2.mean((2, 3, 4)), 0.2).item()
    assert logs["mcl_active"] == 1 and logs["l_mcl"] == pytest.approx(l_mcl, rel=1e-5)
    assert late.item() == pytest.approx(10 * l_md + l_cmr + l_mcl, rel=1e-5)
    # missing embeddings: the term is skipped rather than failing
    _, logs = compute(cfg, epoch=8, target=target, recon_md=r_md, recon_cmr=r_cmr, num_epochs=9)
    assert logs["mcl_active"] == 0
    assert all(isinstance(v, float) for v in logs.values())


def test_gradients_flow_to_both_reconstructions_and_embeddings():
    target, r_md, r_cmr, m_md, m_cmr, (z1, z2) = _batch(1)
    leaves = [t.clone().requires_grad_(True) for t in (r_md, r_cmr, z1, z2)]
    total, _ = compute(ObjectiveConfig(), target=target, recon_md=leaves[0], recon_cmr=leaves[1],
                       z_md=leaves[2], z_cmr=leaves[3], epoch=9, num_epochs=10)
    total.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)


def test_masked_region_loss():
    target = torch.zeros(1, 1, 4, 4, 4)
    pred = torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    mask[..., :2] = True
    pred[mask] = 2.0
    pred[~mask] = 1.0
    assert reconstruction_loss(pred, target, mask, "masked").item() == pytest.approx(4.0)
    assert reconstruction_loss(pred, target, mask, "patch").item() == pytest.approx(2.5)
    cfg = ObjectiveConfig(recon_region="masked", w_md=1.0)
    total, logs = compute(cfg, target=target, recon_md=pred, recon_cmr=target, mask_md=mask,
                          mask_cmr=mask)
    assert logs["l_md"] == pytest.approx(4.0) and logs["l_cmr"] == 0.0
    with pytest.raises(ValueError):
        reconstruction_loss(pred, target, None, "masked")


def test_masked_error_report_baselines():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(2, 1, 8, 8, 8, generator=g) + 3.0
    fill = torch.randn(2, 1, 8, 8, 8, generator=g)
    mask = block_mask(2, (8, 8, 8), 4, 0.5, generator=g)
    inp = apply_fill(target, mask, fill)
    rep = masked_error_report(target, target, mask, inp)  # perfect prediction
    assert rep["masked_mse"] == 0.0 and rep["rel_to_patch_mean"] == 0.0
    exp_fill = ((fill - target)[mask] ** 2).mean().item()
    assert rep["baseline_fill"] == pytest.approx(exp_fill, rel=1e-5)
    pm = target.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(target)
    exp_mean = ((pm - target)[mask] ** 2).mean().item()
    assert rep["baseline_patch_mean"] == pytest.approx(exp_mean, rel=1e-5)
    # predicting the patch mean scores exactly the baseline
    rep2 = masked_error_report(pm, target, mask, inp)
    assert rep2["rel_to_patch_mean"] == pytest.approx(1.0)
    empty = masked_error_report(target, target, torch.zeros_like(mask), inp)
    assert math.isnan(empty["masked_mse"])


def test_subject_positives_use_the_multi_positive_loss():
    """positives='subject' (Wen et al. 2023): views of one subject attract across modalities."""
    import torch
    from nnunet_mmpretrain.pretrain.contrastive import multi_positive_info_nce
    from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig, compute
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 1, 8, 8, 8, generator=g)
    z1, z2 = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    subj = ["a", "a", "b", "c"]
    cfg = ObjectiveConfig(w_md=0.0, w_cmr=0.0, w_mcl=1.0, mcl_start_fraction=0.0, temperature=0.1, positives="subject")
    total, logs = compute(cfg, target=t, recon_md=t, recon_cmr=t, z_md=z1, z_cmr=z2, epoch=0, num_epochs=1,
                          subject_ids=subj)
    ref = multi_positive_info_nce(torch.cat([z1, z2]), subj * 2, 0.1)
    assert torch.allclose(total, ref) and logs["mcl_active"] == 1.0
    with pytest.raises(ValueError, match="needs subject_ids"):
        compute(cfg, target=t, recon_md=t, recon_cmr=t, z_md=z1, z_cmr=z2, epoch=0, num_epochs=1)
    with pytest.raises(ValueError, match="positives"):
        ObjectiveConfig(positives="cases")
