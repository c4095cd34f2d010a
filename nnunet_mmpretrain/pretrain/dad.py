"""Domain adaptive denormalization (DAD), Wen et al. 2023; docs/METHOD.md.

An image is re-expressed with the first two moments of another domain (another modality,
scanner or case): ``x' = sigma_t * (x - mu_s) / sigma_s + mu_t`` on the foreground, per channel,
where (mu_s, sigma_s) are the image's own foreground statistics (population std) and
(mu_t, sigma_t) the target statistics, optionally jittered. Nothing is learned. Background voxels
keep their values.

Note for nnU-Net-space use: after nnU-Net's z-score normalisation every channel already has
foreground mean 0 and std 1, so a bank of *normalised* statistics does nothing; fill the bank
with statistics that carry the domain differences (e.g. per-case foreground statistics measured
before normalisation and divided by the dataset-level ones).

Shapes: B = batch, C = channels, (X, Y, Z) = spatial.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform

StatLike = Union[float, Tuple[float, ...], np.ndarray, torch.Tensor]


def _batched(x: torch.Tensor, batched: Optional[bool]) -> Tuple[torch.Tensor, bool]:
    if batched is None:
        if x.dim() not in (4, 5):
            raise ValueError(f"expected (C, X, Y, Z) or (B, C, X, Y, Z), got {tuple(x.shape)}; "
                             f"pass batched= for other layouts")
        batched = x.dim() == 5
    return (x if batched else x.unsqueeze(0)), batched


def _foreground(xb: torch.Tensor, mask: Optional[torch.Tensor], batched: bool) -> torch.Tensor:
    """Bool foreground of the shape of ``xb`` (B, C, *spatial)."""
    if mask is None:
        return xb != 0
    m = torch.as_tensor(mask, device=xb.device).bool()
    n_spatial = xb.dim() - 2
    if m.dim() == n_spatial:
        m = m[None, None]
    elif not batched and m.dim() == n_spatial + 1:
        m = m[None]
    if m.dim() != xb.dim():
        img_shape = tuple(xb.shape if batched else xb.shape[1:])
        raise ValueError(f"mask {tuple(m.shape)} does not match image {img_shape}")
    return m.expand_as(xb)


def _per_bc(v: StatLike, b: int, c: int, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    if t.dim() == 0:
        return t.expand(b, c)
    if t.dim() == 1:
        return t[None].expand(b, c)
    return t.expand(b, c)


def foreground_stats(x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     batched: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel foreground mean and population standard deviation.

    Args:
        x: (C, X, Y, Z) or (B, C, X, Y, Z) (``batched`` overrides the guess from ``x.dim()``).
        mask: bool foreground broadcastable per sample: (X, Y, Z), (1 or C, X, Y, Z) or, batched,
            (B, 1 or C, X, Y, Z). None = nonzero voxels of each channel.

    Returns:
        mean, std: (C,) or (B, C); 0 for channels without foreground.
    """
    xb, batched = _batched(x, batched)
    fg = _foreground(xb, mask, batched)
    w = fg.to(xb.dtype)
    count = w.flatten(2).sum(-1).clamp(min=1)
    mean = (xb * w).flatten(2).sum(-1) / count
    shape = mean.shape + (1,) * (xb.dim() - 2)
    var = (((xb - mean.view(shape)) * w) ** 2).flatten(2).sum(-1) / count
    std = var.sqrt()
    return (mean, std) if batched else (mean[0], std[0])


def dad(x: torch.Tensor, target_mean: StatLike, target_std: StatLike,
        mask: Optional[torch.Tensor] = None, jitter: float = 0.0,
        generator: Optional[torch.Generator] = None, eps: float = 1e-8,
        batched: Optional[bool] = None) -> torch.Tensor:
    """Domain adaptive denormalization.

    ``x' = sigma_t * (x - mu_s) / max(sigma_s, eps) + mu_t`` on the foreground, ``x`` elsewhere.
    With ``jitter = j > 0`` the target statistics are perturbed per sample and channel:
    ``mu_t += j * sigma_t * e1``, ``sigma_t *= exp(j * e2)`` with e1, e2 ~ N(0, 1).

    Args:
        x: (C, X, Y, Z) or (B, C, X, Y, Z) float image.
        target_mean, target_std: scalar, (C,) or (B, C) target statistics.
        mask: foreground as in :func:`foreground_stats` (None = nonzero voxels).
        jitter: relative jitter of the target statistics.
        generator: CPU generator for the jitter.
        eps: floor on sigma_s (a constant foreground maps to mu_t).

    Returns:
        tensor of the shape of ``x``; its foreground has mean mu_t and std sigma_t per channel
        (exactly, without jitter).
    """
    xb, was_batched = _batched(x, batched)
    b, c = xb.shape[:2]
    fg = _foreground(xb, mask, was_batched)
    mu_s, sd_s = foreground_stats(xb, fg, batched=True)
    mu_t = _per_bc(target_mean, b, c, xb)
    sd_t = _per_bc(target_std, b, c, xb)
    if jitter > 0:
        e = torch.randn(2, b, c, generator=generator).to(device=xb.device, dtype=xb.dtype)
        mu_t = mu_t + jitter * sd_t * e[0]
        sd_t = sd_t * torch.exp(jitter * e[1])
    shape = (b, c) + (1,) * (xb.dim() - 2)
    scale = (sd_t / sd_s.clamp(min=eps)).view(shape)
    out = (xb - mu_s.view(shape)) * scale + mu_t.view(shape)
    out = torch.where(fg, out, xb)
    return out if was_batched else out[0]


class DADTransform(ImageOnlyTransform):
    """batchgeneratorsv2 transform: with probability ``p`` per sample, re-normalise each channel
    (with probability ``p_per_channel``) with (mean, std) drawn from ``stats_bank``.

    Args:
        stats_bank: (K, 2) array-like of target (mean, std) pairs, e.g. foreground statistics of
            other modalities / cases / scanners.
        p: probability that a sample is transformed.
        p_per_channel: probability per channel, given the sample is transformed.
        jitter: relative jitter of the drawn statistics (see :func:`dad`).
        synchronize_channels: draw one bank entry for all channels (default: one per channel).
        mask_from: ``'nonzero'`` (foreground = nonzero voxels of the channel) or
            ``'segmentation'`` (foreground = ``segmentation[0] >= 0``: nnU-Net marks voxels outside
            the nonzero region with -1; falls back to nonzero when there is no segmentation).

    Works on one sample: ``image`` (C, X, Y, Z), ``segmentation`` (1, X, Y, Z) untouched.
    """

    def __init__(self, stats_bank, p: float = 0.5, p_per_channel: float = 1.0, jitter: float = 0.0,
                 synchronize_channels: bool = False, mask_from: str = "nonzero"):
        super().__init__()
        bank = torch.as_tensor(np.asarray(stats_bank, dtype=np.float32))
        if bank.dim() != 2 or bank.shape[1] != 2 or bank.shape[0] == 0:
            raise ValueError(f"stats_bank must be a non-empty (K, 2) array of (mean, std), got "
                             f"shape {tuple(bank.shape)}")
        if (bank[:, 1] <= 0).any():
            raise ValueError("stats_bank standard deviations must be > 0")
        if mask_from not in ("nonzero", "segmentation"):
            raise ValueError(f"mask_from must be 'nonzero' or 'segmentation', got {mask_from!r}")
        self.stats_bank = bank
        self.p = float(p)
        self.p_per_channel = float(p_per_channel)
        self.jitter = float(jitter)
        self.synchronize_channels = bool(synchronize_channels)
        self.mask_from = mask_from

    def get_parameters(self, **data_dict) -> dict:
        """Draw whether to apply, the channels, the bank entries and the jitter."""
        img = data_dict["image"]
        c = img.shape[0]
        if torch.rand(1).item() >= self.p:
            return {"apply": False}
        channels = torch.rand(c) < self.p_per_channel
        k = self.stats_bank.shape[0]
        if self.synchronize_channels:
            entry = torch.randint(k, (1,)).expand(c)
        else:
            entry = torch.randint(k, (c,))
        mean, std = self.stats_bank[entry, 0].clone(), self.stats_bank[entry, 1].clone()
        if self.jitter > 0:
            e = torch.randn(2, c)
            mean = mean + self.jitter * std * e[0]
            std = std * torch.exp(self.jitter * e[1])
        mask = None
        seg = data_dict.get("segmentation")
        if self.mask_from == "segmentation" and seg is not None:
            mask = torch.as_tensor(seg[0]) >= 0
        return {"apply": True, "channels": channels, "mean": mean, "std": std, "mask": mask}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        """(C, X, Y, Z) -> (C, X, Y, Z)."""
        if not params.get("apply") or not params["channels"].any():
            return img
        out = dad(img, params["mean"], params["std"], mask=params["mask"], batched=False)
        keep = ~params["channels"].to(img.device)
        if keep.any():
            out[keep] = img[keep]
        return out
