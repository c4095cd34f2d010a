"""One BrainMVP pretraining forward pass as a plain function (the trainer and the benchmark call
it), and a plain masked-autoencoder step on the same network as the reference point.

Batch tensors: ``target`` / ``partner`` (B, 1, X, Y, Z), ``m_idx`` / ``n_idx`` (B,) vocabulary
slots (n = -1: the case has no partner; its cross-modal view uses the template), ``starts``
(B, 3) atlas-grid positions or None (position-free templates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from nnunet_mmpretrain.pretrain.cross_modal import cross_modal_fill
from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig, compute, masked_error_report, reconstruction_loss


@dataclass(frozen=True)
class MaskSpec:
    ratio: float = 0.875
    block_size: int = 8


def brainmvp_forward(network, net, target: torch.Tensor, partner: torch.Tensor, m_idx: torch.Tensor,
                     n_idx: torch.Tensor, starts: Optional[torch.Tensor], objective: ObjectiveConfig,
                     epoch: int, num_epochs: int, mask: MaskSpec = MaskSpec(), subject_ids=None
                     ) -> Tuple[torch.Tensor, Dict[str, float], tuple]:
    """Two views of the target, one forward pass of 2B samples, the combined loss.

    ``network`` is what is called (possibly DDP-wrapped), ``net`` the unwrapped
    :class:`MMPretrainNetwork` (for its templates). Returns (loss, per-term floats including the
    masked-voxel error of the cross-modal view and its two baselines, (target, view_md, view_cmr,
    recon) for pictures).
    """
    B, P = target.shape[0], tuple(target.shape[2:])
    mask_md = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
    mask_cmr = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
    tmpl = net.templates(m_idx, starts, P) if net.templates is not None else torch.zeros_like(target)
    view_md = apply_fill(target, mask_md, tmpl)
    if objective.use_template_in_cmr_view(epoch, num_epochs):
        fill = tmpl
    else:
        fill = torch.where((n_idx < 0).view(-1, 1, 1, 1, 1), tmpl, partner)
    view_cmr = cross_modal_fill(target, fill, mask_cmr)
    recon, _, z = network(torch.cat([view_md, view_cmr]), torch.cat([m_idx, m_idx]))
    loss, logs = compute(objective, target=target, recon_md=recon[:B], recon_cmr=recon[B:], mask_md=mask_md,
                         mask_cmr=mask_cmr, z_md=z[:B], z_cmr=z[B:], epoch=epoch, num_epochs=num_epochs,
                         subject_ids=subject_ids)
    logs.update(masked_error_report(recon[B:].detach(), target, mask_cmr, view_cmr))
    return loss, logs, (target, view_md, view_cmr, recon.detach())


def mae_forward(network, target: torch.Tensor, m_idx: torch.Tensor, mask: MaskSpec = MaskSpec()
                ) -> torch.Tensor:
    """Plain single-view masked autoencoder on the same network: masked blocks zeroed, MSE."""
    B, P = target.shape[0], tuple(target.shape[2:])
    m = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
    recon, _, _ = network(apply_fill(target, m, torch.zeros_like(target)), m_idx)
    return reconstruction_loss(recon, target)
