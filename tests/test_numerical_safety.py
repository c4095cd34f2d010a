"""Numerical safety of the losses and augmentations: a sample never loses every modality, empty
masks and empty foregrounds give defined (finite) losses with a gradient, never NaN."""
import numpy as np
import pytest
import torch

from nnunet_mmpretrain.pretrain.contrastive import info_nce, multi_positive_info_nce
from nnunet_mmpretrain.pretrain.dad import dad, foreground_stats
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig, masked_error_report, reconstruction_loss
from nnunet_mmpretrain.pretrain.step import MaskSpec, PretrainBatch, brainmvp_forward, dad_views
from nnunet_mmpretrain.transfer.aligned import draw_substitutions


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6])
def test_template_substitution_never_replaces_every_channel(channels):
    rng = np.random.default_rng(0)
    chosen = draw_substitutions(2000, list(range(channels)), channels, max_channels=10, rng=rng)
    assert max(len(c) for c in chosen) == channels - 1          # at least one real channel stays
    assert all(len(set(c)) == len(c) and all(0 <= i < channels for i in c) for c in chosen)


def test_empty_mask_gives_a_finite_zero_loss_with_a_gradient():
    pred = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    target = torch.randn(2, 1, 8, 8, 8)
    empty = torch.zeros(2, 1, 8, 8, 8, dtype=torch.bool)
    loss = reconstruction_loss(pred, target, empty, "masked")
    loss.backward()
    assert float(loss.detach()) == 0.0 and pred.grad is not None and torch.isfinite(pred.grad).all()
    rep = masked_error_report(pred.detach(), target, empty, target)
    assert all(np.isnan(v) for v in rep.values())                 # "nothing measured", not a crash


def test_contrastive_terms_are_finite_for_one_sample_and_for_no_positive():
    z = torch.randn(1, 16, requires_grad=True)
    assert torch.isfinite(info_nce(z, z.roll(1, 1), 0.2))
    zz = torch.randn(4, 16, requires_grad=True)
    loss = multi_positive_info_nce(zz, ["a", "b", "c", "d"], 0.2)   # every subject seen once
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zz.grad).all()


def test_dad_on_an_empty_foreground_leaves_the_sample_finite():
    x = torch.zeros(2, 1, 8, 8, 8)
    x[1, 0, 2:6, 2:6, 2:6] = torch.randn(4, 4, 4)
    mean, std = foreground_stats(x, batched=True)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    out = dad_views(x, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and torch.equal(out[0], x[0])   # nothing to re-express in sample 0
    assert torch.isfinite(dad(x, mean.roll(1, 0), std.roll(1, 0).clamp(min=1e-3), batched=True)).all()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)

    def forward(self, x, m):
        y = self.conv(x)
        return y, y, y.flatten(1)[:, :8]


def test_a_step_with_nothing_masked_is_finite():
    B, P = 2, (8, 8, 8)
    batch = PretrainBatch(torch.randn(B, 1, *P), torch.randn(B, 1, *P), torch.tensor([0, 1]), torch.tensor([1, -1]))
    none = torch.zeros(B, 1, *P, dtype=torch.bool)
    loss, logs, _ = brainmvp_forward(_Net(), batch, objective=ObjectiveConfig(recon_region="masked", w_mcl=1.0),
                                     epoch=9, num_epochs=10, mask=MaskSpec(0.5, 4), masks=(none, none))
    loss.backward()
    assert torch.isfinite(loss) and logs["l_md"] == 0.0 and logs["l_cmr"] == 0.0
