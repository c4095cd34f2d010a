"""The ablation ladder of the phantom suite (plain MAE, CMR, +MD, +MCL, +DAD): each trainer
variant changes only the proxy tasks, and each does what its name says on the step function."""
import pytest
import torch

from nnunet_mmpretrain.pretrain.step import MaskSpec, PretrainBatch, brainmvp_forward
from nnunet_mmpretrain.pretrain.templates import ModalityTemplates
from nnunet_mmpretrain.training import pretrain_variants as pv

P = (16, 16, 16)
LADDER = [pv.nnUNetTrainerMMPretrain_demoMAE, pv.nnUNetTrainerMMPretrain_demoCMR, pv.nnUNetTrainerMMPretrain_demoCMRMD,
          pv.nnUNetTrainerMMPretrain_demoCMRMDMCL, pv.nnUNetTrainerMMPretrain_demoCMRMDMCLDAD]


class ConvNet(torch.nn.Module):
    """A tiny differentiable stand-in: recon = conv(x), features = x, z = pooled conv(x)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x, m):
        r = self.conv(x)
        return r, x, torch.cat([r.mean(dim=(2, 3, 4)), r.std(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)


def _run(cls, partner_scale=1.0, epoch=19):
    g = torch.Generator().manual_seed(0)
    target, partner = torch.randn(4, 1, *P, generator=g), torch.randn(4, 1, *P, generator=g) * partner_scale
    batch = PretrainBatch(target, partner, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0]),
                          torch.zeros(4, 3, dtype=torch.long), ["a", "b", "c", "d"])
    tm = ModalityTemplates((20, 20, 20), init=torch.randn(8, 20, 20, 20, generator=g))
    loss, logs, _ = brainmvp_forward(ConvNet(), batch, objective=cls.objective, epoch=epoch, num_epochs=20,
                                     mask=MaskSpec(cls.mask_ratio, 8), templates=tm if cls.template_fill else None,
                                     dad_p=cls.dad_p, generator=torch.Generator().manual_seed(1))
    loss.backward()
    return float(loss.detach()), logs, 0.0 if tm.templates.grad is None else float(tm.templates.grad.abs().sum())


def test_the_ladder_shares_the_demo_budget_and_changes_only_the_proxy_tasks():
    demo = pv.nnUNetTrainerMMPretrain_demo
    for cls in LADDER:
        assert issubclass(cls, demo)
        for attr in ("schedule", "mask_ratio", "block_size", "lr", "warmup_epochs", "decoder"):
            assert getattr(cls, attr) == getattr(demo, attr), (cls.__name__, attr)
        assert cls.objective.w_joint == 0 and cls.objective.recon_region == "masked"


def test_the_gpu_ladder_shares_brainmvps_budget():
    base = pv.nnUNetTrainerMMPretrain
    for cls in (pv.nnUNetTrainerMMPretrain_MAE, pv.nnUNetTrainerMMPretrain_CMR, pv.nnUNetTrainerMMPretrain_CMRMD,
                pv.nnUNetTrainerMMPretrain_dad):
        for attr in ("schedule", "mask_ratio", "block_size", "lr", "warmup_epochs", "decoder", "template_init"):
            assert getattr(cls, attr) == getattr(base, attr), (cls.__name__, attr)
        assert cls.objective.recon_region == base.objective.recon_region == "patch"
    assert pv.nnUNetTrainerMMPretrain_CMRMD.objective.w_md == base.objective.w_md == 10.0


@pytest.mark.parametrize("cls", [pv.nnUNetTrainerMMPretrain_demoMAE, pv.nnUNetTrainerMMPretrain_MAE])
def test_plain_mae_rebuilds_the_modality_from_itself(cls):
    loss, logs, tgrad = _run(cls)
    loss2, _, _ = _run(cls, partner_scale=5.0)
    assert loss == pytest.approx(loss2, rel=1e-6)          # the partner never enters the loss
    assert tgrad == 0 and logs["l_mcl"] == 0               # no templates, no contrastive term
    assert loss == pytest.approx(logs["l_md"], rel=1e-6)


@pytest.mark.parametrize("cls", [pv.nnUNetTrainerMMPretrain_demoCMR, pv.nnUNetTrainerMMPretrain_CMR])
def test_cmr_alone_depends_on_the_partner_and_uses_no_template(cls):
    loss, logs, tgrad = _run(cls)
    loss2, _, _ = _run(cls, partner_scale=5.0)
    assert loss != pytest.approx(loss2, rel=1e-3)
    assert tgrad == 0 and loss == pytest.approx(logs["l_cmr"], rel=1e-6)


def test_md_adds_the_templates_and_mcl_the_contrastive_term_late_in_training():
    _, logs, tgrad = _run(pv.nnUNetTrainerMMPretrain_demoCMRMD, epoch=0)   # template warm-up epoch
    assert tgrad > 0 and logs["l_mcl"] == 0
    _, early, _ = _run(pv.nnUNetTrainerMMPretrain_demoCMRMDMCL, epoch=0)
    _, late, _ = _run(pv.nnUNetTrainerMMPretrain_demoCMRMDMCL, epoch=19)
    assert early["mcl_active"] == 0 and late["mcl_active"] == 1 and late["l_mcl"] > 0
    assert pv.nnUNetTrainerMMPretrain_demoCMRMDMCLDAD.dad_p > 0 == pv.nnUNetTrainerMMPretrain_demoCMRMDMCL.dad_p
    a, _, _ = _run(pv.nnUNetTrainerMMPretrain_demoCMRMDMCL)
    b, _, _ = _run(pv.nnUNetTrainerMMPretrain_demoCMRMDMCLDAD)
    assert a != pytest.approx(b, rel=1e-4)                 # DAD changes the inputs the network sees
