"""One BrainMVP pretraining forward pass as a plain function (the trainer and the benchmarks call
it), and a plain single-view masked-autoencoder step on the same network as the reference point.

Shapes: B = batch, (X, Y, Z) = patch, D = embedding size. A :class:`PretrainBatch` holds
``target`` / ``partner`` (B, 1, X, Y, Z) (the modality m to rebuild and another modality n of the
same case), ``m_idx`` / ``n_idx`` (B,) vocabulary slots (n = -1: the case has a single modality;
its cross-modal view uses the template), ``starts`` (B, 3) template-grid positions or None
(position-free templates) and the subject of each sample; for the joint view over all modalities
(``ObjectiveConfig(joint_all=True)``) also ``stack`` (B, K, X, Y, Z), every modality of the case,
and ``stack_idx`` (B, K) their vocabulary slots (-1 = padding for cases with fewer than K).

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
    stack: Optional[torch.Tensor] = None
    stack_idx: Optional[torch.Tensor] = None


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


def _draw_masks(n: int, patch: tuple, mask: MaskSpec, generator: Optional[torch.Generator], device
                ) -> torch.Tensor:
    """n block masks (n, 1, X, Y, Z) drawn from ``generator`` (on its device), moved to ``device``."""
    g_dev = generator.device if generator is not None else None
    return block_mask(n, patch, mask.block_size, mask.ratio, generator=generator, device=g_dev).to(device)


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
        masks: fixed (mask_md, mask_cmr) (B, 1, X, Y, Z) bool, e.g. for a fixed validation set,
            plus the stack's masks (B, K, X, Y, Z) as a third entry with ``joint_all``; drawn from
            ``generator`` otherwise.
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
        masks = tuple(_draw_masks(B, P, mask, generator, target.device) for _ in range(2))
    mask_md, mask_cmr = masks[0], masks[1]
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
        joint = joint_inputs(batch, view_md, mask_md, mask_cmr, templates, objective.joint_all,
                             stack_mask=masks[2] if len(masks) > 2 else None, mask=mask, generator=generator)
    out = network(inputs, torch.cat([batch.m_idx, batch.m_idx]), joint=joint[:2]) if joint is not None \
        else network(inputs, torch.cat([batch.m_idx, batch.m_idx]))
    recon, z = out[0], out[2]
    loss, logs = compute(objective, target=target, recon_md=recon[:B], recon_cmr=recon[B:], mask_md=mask_md,
                         mask_cmr=mask_cmr, z_md=z[:B], z_cmr=z[B:], epoch=epoch, num_epochs=num_epochs,
                         subject_ids=batch.subject_ids)
    for view, r, m, v in (("md", recon[:B], mask_md, view_md), ("cmr", recon[B:], mask_cmr, view_cmr)):
        rep = masked_error_report(r.detach(), target, m, v)
        logs.update({f"{view}_{k}": rep[k] for k in ("masked_mse", "baseline_patch_mean", "baseline_fill")})
    if joint is not None:
        loss = loss + objective.w_joint * _joint_term(out[3], joint, logs, objective.recon_region)
        logs["loss"] = float(loss.detach())
    with torch.no_grad():
        zn = torch.nn.functional.normalize(z.detach().float().flatten(1), dim=1)
        logs["emb_std"] = float(zn.std(0).mean()) if zn.shape[0] > 1 else float("nan")
    return loss, logs, (target, view_md, view_cmr, recon.detach())


def joint_inputs(batch: PretrainBatch, view_md: torch.Tensor, mask_md: torch.Tensor, mask_cmr: torch.Tensor,
                 templates, joint_all: bool, stack_mask: Optional[torch.Tensor] = None, mask: MaskSpec = MaskSpec(),
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, ...]:
    """Inputs of the joint view: (xs, idx, targets, masks), xs / targets / masks (B, K, X, Y, Z)
    (masked blocks of each modality hold its template), idx (B, K) vocabulary slots (-1: none).

    ``joint_all=False`` (the pair): K = 2, the target m as in the template view (``mask_md``) and
    the partner n with the cross-modal view's mask. ``joint_all=True``: every modality of the case
    (``batch.stack``), each with a block mask of its own (``stack_mask`` or drawn), so a block
    hidden in one modality is often visible in another and has to be inferred across them."""
    P = tuple(batch.target.shape[2:])

    def fill(idx: torch.Tensor, starts) -> torch.Tensor:   # idx (N,) -> templates (N, 1, X, Y, Z)
        if templates is None:
            return torch.zeros((idx.shape[0], 1) + P, dtype=batch.target.dtype, device=batch.target.device)
        return templates(idx.clamp(min=0), starts, P, generator=generator).to(batch.target.dtype)

    if not joint_all:
        xs = torch.cat([view_md, apply_fill(batch.partner, mask_cmr, fill(batch.n_idx, batch.starts))], 1)
        return (xs, torch.stack([batch.m_idx, batch.n_idx], 1), torch.cat([batch.target, batch.partner], 1),
                torch.cat([mask_md, mask_cmr], 1))
    if batch.stack is None or batch.stack_idx is None:
        raise ValueError("joint_all needs the batch's stack and stack_idx (CorpusPatchLoader(all_modalities=True))")
    B, K = batch.stack_idx.shape
    if stack_mask is None:
        stack_mask = _draw_masks(B * K, P, mask, generator, batch.target.device).view(B, K, *P)
    starts = batch.starts.repeat_interleave(K, 0) if batch.starts is not None else None
    tmpl = fill(batch.stack_idx.reshape(-1), starts).view(B, K, *P)
    return apply_fill(batch.stack, stack_mask, tmpl), batch.stack_idx, batch.stack, stack_mask


def _joint_term(recon_joint: torch.Tensor, joint: tuple, logs: Dict[str, float], region: str) -> torch.Tensor:
    """Loss of the joint view: recon_joint (B, V, X, Y, Z) read at each slot's modality against
    that modality on its masked voxels, summed over the K slots (each slot over the samples that
    have a modality there); logs ``l_joint`` and slot 0's ``joint_masked_mse`` / baselines (the
    target m for the pair)."""
    xs, idx, targets, masks = joint

    def channel(recon: torch.Tensor, i: torch.Tensor) -> torch.Tensor:   # (N, V, ...) -> (N, 1, ...) at i
        return recon.gather(1, i.view(-1, 1, 1, 1, 1).expand(-1, 1, *recon.shape[2:]))

    term = torch.zeros((), device=recon_joint.device)
    for k in range(idx.shape[1]):
        have = idx[:, k] >= 0
        if bool(have.any()):
            term = term + reconstruction_loss(channel(recon_joint[have], idx[have, k]), targets[have, k:k + 1],
                                              masks[have, k:k + 1], region)
    logs["l_joint"] = float(term.detach())
    have = idx[:, 0] >= 0
    rep = masked_error_report(channel(recon_joint[have], idx[have, 0]).detach(), targets[have, :1], masks[have, :1],
                              xs[have, :1])
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
