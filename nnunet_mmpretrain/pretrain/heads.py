"""Reconstruction heads for pretraining.

* :class:`ReconstructionDecoder`: BrainMVP's light, skip-free decoder: transposed convolutions
  from the bottleneck back to full resolution and a 1x1x1 head. Without skip connections the
  encoder has to carry the information, but a deep bottleneck (4^3 at a 32^3 patch) can only
  paint block-sized detail.
* :class:`HypercolumnDecoder`: a 1x1x1 readout of every encoder stage (no spatial kernel), so
  each stage must compute what the reconstruction needs at its own resolution.

Shapes: B = batch, C = bottleneck channels, (x, y, z) = bottleneck size,
(X, Y, Z) = (x, y, z) * total stride per axis.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

StrideLike = Union[int, Sequence[int]]


def _stage_strides(strides: Sequence[StrideLike], ndim: Optional[int]) -> List[tuple]:
    if ndim is None:
        ndim = next((len(s) for s in strides if not isinstance(s, int)), 3)
    out = []
    for s in strides:
        t = (int(s),) * ndim if isinstance(s, int) else tuple(int(v) for v in s)
        if len(t) != ndim or any(v < 1 for v in t):
            raise ValueError(f"bad stride {s} (expected {ndim} values >= 1)")
        out.append(t)
    return out


def total_stride(strides: Sequence[StrideLike], ndim: Optional[int] = None) -> tuple:
    """Product of per-stage strides per axis, e.g. [[1,1,1],[2,2,2],[2,2,1]] -> (4, 4, 2)."""
    st = _stage_strides(strides, ndim)
    tot = [1] * len(st[0]) if st else [1] * (ndim or 3)
    for s in st:
        tot = [a * b for a, b in zip(tot, s)]
    return tuple(tot)


class ReconstructionDecoder(nn.Module):
    """Stack of ConvTranspose (kernel = stride) + norm + LeakyReLU, one per encoder stage with a
    stride > 1 (deepest first), then a 1x1x1 convolution to ``out_channels``.

    Args:
        in_channels: C, bottleneck channels.
        strides: the encoder's per-stage strides as in nnU-Net plans (``[[1,1,1],[2,2,2],[2,2,1]]``
            or ints per stage); anisotropic strides are fine. The spatial dimension (2 or 3) is
            taken from them.
        channels: channels after each upsampling step (default: halve per step, at least
            ``min_channels``).
        min_channels: floor for the default channel schedule.
        out_channels: output channels (1 for the reconstruction).
        norm: ``'instance'`` (affine InstanceNorm, nnU-Net's default), ``'batch'`` or ``'none'``.

    Input (B, C, x, y, z) -> output (B, out_channels, X, Y, Z).
    """

    def __init__(self, in_channels: int, strides: Sequence[StrideLike],
                 channels: Optional[Sequence[int]] = None, min_channels: int = 16,
                 out_channels: int = 1, norm: str = "instance"):
        super().__init__()
        stages = [s for s in _stage_strides(strides, None) if any(v > 1 for v in s)]
        ndim = len(stages[0]) if stages else len(_stage_strides(strides, None)[0])
        conv_t = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        norms = {"instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[ndim],
                 "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim]}
        if norm not in (*norms, "none"):
            raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {norm!r}")
        stages = stages[::-1]  # deepest stage first
        if channels is None:
            channels = [max(min_channels, in_channels // 2 ** (i + 1)) for i in range(len(stages))]
        if len(channels) != len(stages):
            raise ValueError(f"{len(channels)} channel entries for {len(stages)} upsampling steps")
        self.strides = [list(s) for s in stages]
        layers: List[nn.Module] = []
        c_in = in_channels
        for s, c_out in zip(stages, channels):
            layers.append(conv_t(c_in, c_out, kernel_size=s, stride=s, bias=norm == "none"))
            if norm == "instance":
                layers.append(norms[norm](c_out, affine=True))
            elif norm == "batch":
                layers.append(norms[norm](c_out))
            layers.append(nn.LeakyReLU(0.01, inplace=True))
            c_in = c_out
        self.up = nn.Sequential(*layers)
        self.head = conv(c_in, out_channels, kernel_size=1)

    @classmethod
    def from_total_stride(cls, in_channels: int, total: Sequence[int],
                          **kwargs) -> "ReconstructionDecoder":
        """Decoder for a total stride per axis (e.g. (16, 16, 8)): steps of 2 on every axis that
        still needs it (a final odd factor becomes its own step)."""
        remaining = [int(t) for t in total]
        steps = []
        while any(r > 1 for r in remaining):
            step = [2 if r % 2 == 0 else (r if r > 1 else 1) for r in remaining]
            steps.append(step)
            remaining = [r // s for r, s in zip(remaining, step)]
        return cls(in_channels, steps[::-1] if steps else [[1] * len(remaining)], **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, x, y, z) -> (B, out_channels, X, Y, Z)."""
        return self.head(self.up(x))


class HypercolumnDecoder(nn.Module):
    """A readout that leaves all spatial reasoning to the encoder: each stage's features (skips,
    shallowest first) go through a 1x1x1 convolution to ``width`` channels, are upsampled
    (trilinear) to the patch, concatenated, and a LeakyReLU + 1x1x1 convolution gives the output.
    No spatial kernel: whatever the reconstruction needs must be computed by the encoder stages,
    at every resolution, in a form the downstream U-Net decoder can read from its skips.

    Args:
        stage_channels: channels of each encoder stage's output (shallowest first).
        width: channels per stage after the 1x1x1 projection.
        out_channels: output channels (1 for the reconstruction).

    Input: list of (B, C_s, X_s, Y_s, Z_s) -> output (B, out_channels, X_0, Y_0, Z_0).
    """

    def __init__(self, stage_channels: Sequence[int], width: int = 8, out_channels: int = 1):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv3d(int(c), width, kernel_size=1) for c in stage_channels])
        self.act = nn.LeakyReLU(0.01)
        self.head = nn.Conv3d(width * len(stage_channels), out_channels, kernel_size=1)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of stage outputs -> (B, out_channels, X, Y, Z) at the first stage's resolution."""
        size = skips[0].shape[2:]
        parts = [p(s) if s.shape[2:] == size else
                 nn.functional.interpolate(p(s), size=size, mode="trilinear", align_corners=False)
                 for p, s in zip(self.proj, skips)]
        return self.head(self.act(torch.cat(parts, 1)))
