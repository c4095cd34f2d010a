"""One BrainMVP pretraining forward pass as a plain function (the trainer and the benchmarks call
it), and a plain single-view masked-autoencoder step on the same network as the reference point.

Shapes: B = batch, (X, Y, Z) = patch, D = embedding size. A :class:`PretrainBatch` holds
``target`` / ``partner`` (B, 1, X, Y, Z) (the modality m to rebuild and another modality n of the
same case), ``m_idx`` / ``n_idx`` (B,) vocabulary slots (n = -1: the case has a single modality;
its cross-modal view uses the template), ``starts`` (B, 3) template-grid positions or None
(position-free templates) and the subject of each sample.

Example::

    batch = PretrainBatch(target, partner, m_idx, n_idx, starts=None)
    loss, logs, pics = brainmvp_forward(net, batch, objective=ObjectiveConfig(), epoch=0, num_epochs=10)
    loss.backward()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from nnunet_mmpretrain.pretrain.cross_modal import cross_modal_fill
from nnunet_mmpretrain.pretrain.dad import dad, foreground_stats
from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig, compute, masked_error_report, reconstruction_loss


@dataclass(frozen=True)
class MaskSpec:
    """Block masking: ``ratio`` of the ``block_size``^3 blocks of a patch are replaced."""
    ratio: float = 0.875
    block_size: int = 8


@dataclass
class PretrainBatch:
    """Tensors of one pretraining batch (see the module docstring for shapes)."""
    target: torch.Tensor
    partner: torch.Tensor
    m_idx: torch.Tensor
    n_idx: torch.Tensor
    starts: Optional[torch.Tensor] = None
    subject_ids: Optional[Sequence] = None


def dad_views(x: torch.Tensor, p: float, jitter: float = 0.1, generator: Optional[torch.Generator] = None
              ) -> torch.Tensor:
    """Domain adaptive denormalization of pretraining inputs (B, 1, X, Y, Z): with probability
    ``p`` a sample's foreground (nonzero voxels) is re-expressed with the foreground mean and std
    of *another sample of the batch* (another case, source or modality; the batch rolled by one),
    jittered by ``jitter``. The reconstruction target stays the original, so the network learns
    to see through the domain's intensity statistics."""
    if p <= 0 or x.shape[0] < 2:
        return x
    mean, std = foreground_stats(x, batched=True)                     # (B, 1)
    mean_o, std_o = mean.roll(1, 0), std.roll(1, 0).clamp(min=1e-3)
    out = dad(x, mean_o, std_o, jitter=jitter, generator=generator, batched=True)
    pick = (torch.rand(x.shape[0], generator=generator) < p).to(x.device).view(-1, 1, 1, 1, 1)
    return torch.where(pick, out, x)


def brainmvp_forward(network, batch: PretrainBatch, *, objective: ObjectiveConfig, epoch: int, num_epochs: int,
                     mask: MaskSpec = MaskSpec(), templates=None, masks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                     evaluate: bool = False, dad_p: float = 0.0, generator: Optional[torch.Generator] = None
                     ) -> Tuple[torch.Tensor, Dict[str, float], tuple]:
    """Two views of the target, one forward pass of 2B samples, the combined loss.

    Args:
        network: what is called, ``(x (N, 1, X, Y, Z), modality (N,)) -> (recon, features, z)``
            (possibly DDP-wrapped).
        batch: the inputs.
        objective: weights and schedule.
        epoch, num_epochs: for the schedule (contrastive start, template warm-up).
        mask: masking parameters.
        templates: the :class:`~nnunet_mmpretrain.pretrain.templates.ModalityTemplates` (None:
            zeros as the template fill).
        masks: fixed (mask_md, mask_cmr) (B, 1, X, Y, Z) bool, e.g. for a fixed validation set;
            drawn from ``generator`` otherwise.
        evaluate: measure the final tasks whatever the schedule (the cross-modal view is filled
            with the partner even during the template warm-up), for comparable monitoring.
        dad_p: probability of :func:`dad_views` on each view (0: off).
        generator: CPU generator for masks, DAD and position-free template crops.

    Returns:
        (loss, floats: the objective's terms, per view ``{md,cmr}_masked_mse`` /
        ``_baseline_patch_mean`` / ``_baseline_fill``, ``emb_std`` (std of the normalised
        embeddings over the batch, ~0 = collapse), (target, view_md, view_cmr, recon) for pictures).
    """
    target = batch.target
    B, P = target.shape[0], tuple(target.shape[2:])
    if masks is None:
        g_dev = generator.device if generator is not None else None
        masks = tuple(block_mask(B, P, mask.block_size, mask.ratio, generator=generator, device=g_dev).to(target.device)
                      for _ in range(2))
    mask_md, mask_cmr = masks
    if templates is not None:
        tmpl = templates(batch.m_idx, batch.starts, P, generator=generator).to(target.dtype)
    else:
        tmpl = torch.zeros_like(target)
    view_md = apply_fill(target, mask_md, tmpl)
    if objective.use_template_in_cmr_view(epoch, num_epochs) and not evaluate:
        fill = tmpl
    else:
        fill = torch.where((batch.n_idx < 0).view(-1, 1, 1, 1, 1), tmpl, batch.partner)
    view_cmr = cross_modal_fill(target, fill, mask_cmr)
    inputs = torch.cat([view_md, view_cmr])
    if dad_p > 0:
        inputs = dad_views(inputs, dad_p, generator=generator)
    joint = None
    if objective.w_joint > 0:
        tmpl_n = templates(batch.n_idx.clamp(min=0), batch.starts, P, generator=generator).to(target.dtype) \
            if templates is not None else torch.zeros_like(target)
        joint = (view_md, batch.m_idx, apply_fill(batch.partner, mask_cmr, tmpl_n), batch.n_idx)
    out = network(inputs, torch.cat([batch.m_idx, batch.m_idx]), joint=joint) if joint is not None \
        else network(inputs, torch.cat([batch.m_idx, batch.m_idx]))
    recon, z = out[0], out[2]
    loss, logs = compute(objective, target=target, recon_md=recon[:B], recon_cmr=recon[B:], mask_md=mask_md,
                         mask_cmr=mask_cmr, z_md=z[:B], z_cmr=z[B:], epoch=epoch, num_epochs=num_epochs,
                         subject_ids=batch.subject_ids)
    for view, r, m, v in (("md", recon[:B], mask_md, view_md), ("cmr", recon[B:], mask_cmr, view_cmr)):
        rep = masked_error_report(r.detach(), target, m, v)
        logs.update({f"{view}_{k}": rep[k] for k in ("masked_mse", "baseline_patch_mean", "baseline_fill")})
    if joint is not None:
        loss = loss + objective.w_joint * _joint_term(out[3], batch, target, mask_md, mask_cmr, joint, logs,
                                                      objective.recon_region)
        logs["loss"] = float(loss.detach())
    with torch.no_grad():
        zn = torch.nn.functional.normalize(z.detach().float().flatten(1), dim=1)
        logs["emb_std"] = float(zn.std(0).mean()) if zn.shape[0] > 1 else float("nan")
    return loss, logs, (target, view_md, view_cmr, recon.detach())


def _joint_term(recon_joint: torch.Tensor, batch: PretrainBatch, target: torch.Tensor, mask_m: torch.Tensor,
                mask_n: torch.Tensor, joint: tuple, logs: Dict[str, float], region: str) -> torch.Tensor:
    """Loss of the joint view: recon_joint (B, V, X, Y, Z) read at m (and at n where the case has
    a partner) against target / partner on their masked voxels; logs ``l_joint`` and the target's
    ``joint_masked_mse`` / baselines."""
    def channel(recon: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:   # (N, V, ...) -> (N, 1, ...) at idx
        return recon.gather(1, idx.view(-1, 1, 1, 1, 1).expand(-1, 1, *recon.shape[2:]))

    rec_m = channel(recon_joint, batch.m_idx)
    l_m = reconstruction_loss(rec_m, target, mask_m, region)
    two = batch.n_idx >= 0
    l_n = torch.zeros((), device=target.device)
    if bool(two.any()):
        l_n = reconstruction_loss(channel(recon_joint[two], batch.n_idx[two]), batch.partner[two], mask_n[two], region)
    term = l_m + l_n
    logs["l_joint"] = float(term.detach())
    rep = masked_error_report(rec_m.detach(), target, mask_m, joint[0])
    logs.update({f"joint_{k}": rep[k] for k in ("masked_mse", "baseline_patch_mean", "baseline_fill")})
    return term


def mae_forward(network, target: torch.Tensor, m_idx: torch.Tensor, mask: MaskSpec = MaskSpec(),
                region: str = "patch") -> torch.Tensor:
    """Plain single-view masked autoencoder on the same network: masked blocks zeroed, MSE over
    the patch (``region='patch'``) or the masked voxels (``'masked'``)."""
    B, P = target.shape[0], tuple(target.shape[2:])
    m = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
    recon = network(apply_fill(target, m, torch.zeros_like(target)), m_idx)[0]
    return reconstruction_loss(recon, target, m, region)
