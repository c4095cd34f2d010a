"""The combined BrainMVP objective (docs/METHOD.md, "The proxy tasks") and the masked-voxel
diagnostics of "Watching the proxy tasks".

``total = w_md * L_MD + w_cmr * L_CMR + w_mcl * L_MCL`` where L_MD is the reconstruction loss of
the template-filled view, L_CMR that of the cross-modal view and L_MCL the symmetric InfoNCE
between the two views' pooled (optionally projected) bottleneck features. Defaults follow the
released code: weights 10 / 1 / 1, MCL from 2/3 of training, template fill in the cross-modal
view during the first 20 % of epochs, MSE over the whole patch.

Shapes: B = batch, (X, Y, Z) = patch, D = embedding size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet_mmpretrain.pretrain.contrastive import info_nce, multi_positive_info_nce, pool_features


def _first_epoch_at(fraction: float, num_epochs: int) -> int:
    # ceil with a tolerance: 2/3 of 1500 is epoch 1000 despite 2/3 being inexact in binary
    return int(math.ceil(fraction * num_epochs - 1e-9))


@dataclass(frozen=True)
class ObjectiveConfig:
    """Weights and schedule of the BrainMVP objective.

    Attributes:
        w_md: weight of the template-view reconstruction (10 in the code; the paper says equal).
        w_cmr: weight of the cross-modal reconstruction.
        w_mcl: weight of the contrastive term.
        mcl_start_fraction: MCL is on from epoch ``ceil(fraction * num_epochs)`` (code: 1000/1500).
        template_warmup_fraction: during epochs ``< ceil(fraction * num_epochs)`` the cross-modal
            view is filled with the template too (code: first 20 %).
        recon_region: ``'patch'`` (MSE over the whole patch, as the code) or ``'masked'`` (MSE over
            masked voxels only).
        temperature: InfoNCE temperature (1.0 as the code; 0.1-0.2 recommended).
        gather: gather contrastive negatives across ranks.
        positives: ``'views'`` (BrainMVP: the two views of a sample are the positive pair) or
            ``'subject'`` (Wen et al. 2023: every view of the same subject, whatever its
            modality, is a positive; multi-positive InfoNCE over both views of the batch).
        w_joint: weight of the joint view (not in BrainMVP; 0 = off): the target m and the
            partner n, each block-masked and template-filled, enter together (their stems
            averaged) and both are rebuilt on their masked voxels, so the encoder learns to
            combine modalities as a downstream multi-channel stem feeds it.
        joint_all: the joint view takes *every* modality of the case instead of the pair (m, n),
            each with a block mask of its own, and rebuilds each on its masked voxels (the loader
            must provide the case's stack of modalities). Downstream the encoder sees all of a
            case's channels at once; this view trains it on that input.
        joint_stem: how the joint view mixes its modalities: ``'mean'`` (each through its own
            stem, the stem outputs averaged) or ``'downstream'`` (exactly as the transferred
            ``modality`` stem mixes a case's channels: the input kernels side by side, divided by
            the number of modalities, summed *before* the stem's normalisation; the other stem
            parameters averaged). With ``'downstream'`` two modality stems that learned the same
            kernel mix their modalities into one channel, which the joint view's reconstruction
            of each modality penalises.
    """

    w_md: float = 10.0
    w_cmr: float = 1.0
    w_mcl: float = 1.0
    mcl_start_fraction: float = 2.0 / 3.0
    template_warmup_fraction: float = 0.2
    recon_region: str = "patch"
    temperature: float = 1.0
    gather: bool = False
    positives: str = "views"
    w_joint: float = 0.0
    joint_all: bool = False
    joint_stem: str = "mean"

    def __post_init__(self):
        if self.positives not in ("views", "subject"):
            raise ValueError(f"positives must be 'views' or 'subject', got {self.positives!r}")
        if self.joint_stem not in ("mean", "downstream"):
            raise ValueError(f"joint_stem must be 'mean' or 'downstream', got {self.joint_stem!r}")
        if self.recon_region not in ("patch", "masked"):
            raise ValueError(f"recon_region must be 'patch' or 'masked', got {self.recon_region!r}")
        for name in ("mcl_start_fraction", "template_warmup_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    def mcl_start_epoch(self, num_epochs: int) -> int:
        """First epoch (0-based) with the contrastive term."""
        return _first_epoch_at(self.mcl_start_fraction, num_epochs)

    def mcl_active(self, epoch: int, num_epochs: int) -> bool:
        """Whether L_MCL is part of the objective at ``epoch`` (0-based)."""
        return self.w_mcl > 0 and epoch >= self.mcl_start_epoch(num_epochs)

    def use_template_in_cmr_view(self, epoch: int, num_epochs: int) -> bool:
        """True during the template warm-up: fill the cross-modal view with the template too."""
        return epoch < _first_epoch_at(self.template_warmup_fraction, num_epochs)

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints / logs)."""
        return asdict(self)

    def compute(self, **kwargs) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Same as the module-level :func:`compute` with this config."""
        return compute(self, **kwargs)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                        mask: Optional[torch.Tensor] = None, region: str = "patch") -> torch.Tensor:
    """MSE between ``pred`` and ``target`` (B, 1, X, Y, Z).

    ``region='patch'``: mean over all voxels. ``region='masked'``: mean over voxels where ``mask``
    (B, 1, X, Y, Z) is True (0 with the graph kept when nothing is masked). Returns a scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if region == "patch":
        return F.mse_loss(pred.float(), target.float())
    if region != "masked":
        raise ValueError(f"region must be 'patch' or 'masked', got {region!r}")
    if mask is None:
        raise ValueError("region='masked' needs the mask")
    w = mask.expand_as(pred).to(torch.float32)
    return ((pred.float() - target.float()) ** 2 * w).sum() / w.sum().clamp(min=1.0)


def compute(config: ObjectiveConfig, *, target: torch.Tensor, recon_md: torch.Tensor,
            recon_cmr: torch.Tensor, mask_md: Optional[torch.Tensor] = None,
            mask_cmr: Optional[torch.Tensor] = None, z_md: Optional[torch.Tensor] = None,
            z_cmr: Optional[torch.Tensor] = None, epoch: int = 0,
            num_epochs: int = 1, subject_ids=None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total BrainMVP loss and its terms.

    Args:
        config: weights and schedule.
        target: (B, 1, X, Y, Z) original modality m (the reconstruction target of both views).
        recon_md: (B, 1, X, Y, Z) reconstruction from the template-filled view.
        recon_cmr: (B, 1, X, Y, Z) reconstruction from the cross-modal view.
        mask_md, mask_cmr: (B, 1, X, Y, Z) bool masks of the views (needed for
            ``recon_region='masked'``).
        z_md, z_cmr: view embeddings (B, D), or bottleneck features (B, C, x, y, z) that are
            average-pooled here. Needed only while MCL is active; the term is skipped (logged as
            0) when either is None.
        epoch, num_epochs: 0-based current epoch and total, for the MCL switch.
        subject_ids: (B,) subject of each sample, needed for ``positives='subject'``.

    Returns:
        (total scalar tensor, dict of floats: ``loss``, ``l_md``, ``l_cmr``, ``l_mcl``,
        ``mcl_active`` (0/1)).
    """
    l_md = reconstruction_loss(recon_md, target, mask_md, config.recon_region)
    l_cmr = reconstruction_loss(recon_cmr, target, mask_cmr, config.recon_region)
    total = config.w_md * l_md + config.w_cmr * l_cmr
    active = config.mcl_active(epoch, num_epochs) and z_md is not None and z_cmr is not None
    l_mcl = None
    if active:
        if config.positives == "subject":
            if subject_ids is None:
                raise ValueError("positives='subject' needs subject_ids")
            ids = list(subject_ids) * 2 if not torch.is_tensor(subject_ids) else torch.cat([subject_ids, subject_ids])
            l_mcl = multi_positive_info_nce(torch.cat([pool_features(z_md), pool_features(z_cmr)]), ids,
                                            config.temperature, gather=config.gather)
        else:
            l_mcl = info_nce(pool_features(z_md), pool_features(z_cmr), config.temperature, gather=config.gather)
        total = total + config.w_mcl * l_mcl
    logs = {"loss": float(total.detach()), "l_md": float(l_md.detach()),
            "l_cmr": float(l_cmr.detach()),
            "l_mcl": float(l_mcl.detach()) if l_mcl is not None else 0.0,
            "mcl_active": 1.0 if active else 0.0}
    return total, logs


@torch.no_grad()
def masked_error_report(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        filled_input: torch.Tensor) -> Dict[str, float]:
    """Is the masked-voxel task being learned? (docs/METHOD.md, "Watching the proxy tasks")

    Args:
        pred: (B, 1, X, Y, Z) reconstruction.
        target: (B, 1, X, Y, Z) original.
        mask: (B, 1, X, Y, Z) bool, True = masked (filled) voxels.
        filled_input: (B, 1, X, Y, Z) the network's input (target with the fill in the mask).

    Returns:
        floats (MSE over masked voxels of the whole batch): ``masked_mse`` of the prediction,
        ``baseline_patch_mean`` of predicting each sample's patch mean (mean of the target over
        the whole patch, an oracle constant), ``baseline_fill`` of leaving the fill in place, and
        ``rel_to_patch_mean`` = masked_mse / baseline_patch_mean (< 1 means better than a constant).
        NaN when nothing is masked.
    """
    m = mask.expand_as(target).bool()
    n = int(m.sum())
    if n == 0:
        nan = float("nan")
        return {"masked_mse": nan, "baseline_patch_mean": nan, "baseline_fill": nan,
                "rel_to_patch_mean": nan}
    t = target.float()
    patch_mean = t.flatten(1).mean(1).view(-1, *([1] * (t.dim() - 1))).expand_as(t)

    def mse(a: torch.Tensor) -> float:
        return float(((a.float() - t)[m] ** 2).mean())

    err, base_mean = mse(pred), mse(patch_mean)
    return {"masked_mse": err, "baseline_patch_mean": base_mean, "baseline_fill": mse(filled_input),
            "rel_to_patch_mean": err / base_mean if base_mean > 0 else float("nan")}
