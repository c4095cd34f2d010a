"""Block masking for the BrainMVP proxy tasks (docs/METHOD.md, "The proxy tasks").

A patch (X, Y, Z) is cut into cubes of ``block_size`` voxels per axis; a fixed number of those
blocks is masked per sample and later *replaced* (not zeroed) by a fill: the partner modality's
voxels (cross-modal view) or the modality template (template view). Each view draws its own mask
by calling :func:`block_mask` again.

Shapes: B = batch, C = channels, X, Y, Z = patch size in voxels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

SizeLike = Union[int, Sequence[int]]


def _as_tuple(v: SizeLike, ndim: int, name: str) -> Tuple[int, ...]:
    if isinstance(v, int):
        out = (int(v),) * ndim
    else:
        out = tuple(int(i) for i in v)
        if len(out) != ndim:
            raise ValueError(f"{name} has {len(out)} entries, expected {ndim}")
    if any(i < 1 for i in out):
        raise ValueError(f"{name} must be >= 1 per axis, got {out}")
    return out


def block_grid_shape(patch_shape: Sequence[int], block_size: SizeLike = 8) -> Tuple[int, ...]:
    """Number of blocks per axis: ``ceil(patch / block)``; partial blocks at the upper border count
    as blocks (they are masked or kept as a whole, clipped to the patch)."""
    patch = tuple(int(s) for s in patch_shape)
    block = _as_tuple(block_size, len(patch), "block_size")
    return tuple(math.ceil(p / b) for p, b in zip(patch, block))


def num_masked_blocks(n_blocks: int, ratio: float) -> int:
    """Masked blocks per sample: ``ratio * n_blocks`` rounded half up (so 0.5 -> 1, 2.5 -> 3)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return min(n_blocks, int(math.floor(ratio * n_blocks + 0.5)))


def block_mask(batch: int, patch_shape: Sequence[int], block_size: SizeLike = 8,
               ratio: float = 0.875, generator: Optional[torch.Generator] = None,
               device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Random block mask, drawn independently for every sample.

    Args:
        batch: B, number of samples.
        patch_shape: spatial patch size (X, Y, Z) (2D (X, Y) also works). Sizes that are not a
            multiple of ``block_size`` are fine: border blocks are partial.
        block_size: block edge in voxels, an int or one value per axis.
        ratio: fraction of blocks masked; every sample gets exactly
            :func:`num_masked_blocks` ``(n_blocks, ratio)`` masked blocks, i.e.
            ``round(ratio * n_blocks)`` (half up). The masked *voxel* fraction equals ``ratio`` only
            when the patch is a multiple of the block size.
        generator: torch.Generator used for the draw (its device decides where the random numbers
            are drawn); the global RNG when None.
        device: device of the returned mask (default: the generator's device, else CPU).

    Returns:
        BoolTensor (B, 1, X, Y, Z), True = masked (to be replaced by a fill).
    """
    patch = tuple(int(s) for s in patch_shape)
    block = _as_tuple(block_size, len(patch), "block_size")
    grid = block_grid_shape(patch, block)
    n_blocks = math.prod(grid)
    k = num_masked_blocks(n_blocks, ratio)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # rank of a uniform random key per block: the k smallest keys are masked -> exactly k per row
    keys = torch.rand(batch, n_blocks, generator=generator, device=gen_device)
    order = keys.argsort(dim=1)
    flat = torch.zeros(batch, n_blocks, dtype=torch.bool, device=gen_device)
    flat.scatter_(1, order[:, :k], True)
    m = flat.view(batch, *grid)
    for axis, b in enumerate(block):
        m = m.repeat_interleave(b, dim=axis + 1)
    m = m[(slice(None),) + tuple(slice(0, p) for p in patch)]
    out = m.unsqueeze(1).contiguous()
    return out.to(device) if device is not None else out


def apply_fill(x: torch.Tensor, mask: torch.Tensor,
               fill: Union[torch.Tensor, float]) -> torch.Tensor:
    """Replace the masked voxels of ``x`` by ``fill``: ``x * ~mask + fill * mask``.

    Args:
        x: (B, C, X, Y, Z) image.
        mask: BoolTensor broadcastable to ``x``, typically (B, 1, X, Y, Z) from :func:`block_mask`.
        fill: tensor broadcastable to ``x`` (e.g. (B, 1, X, Y, Z) partner or template crop) or a
            scalar.

    Returns:
        (B, C, X, Y, Z) tensor. Gradients flow into ``fill`` at masked voxels and into ``x`` at the
        others (implemented with ``torch.where``, so a non-finite value in the discarded operand
        cannot leak NaN into the result or its gradient).
    """
    if mask.dtype != torch.bool:
        mask = mask.bool()
    if not torch.is_tensor(fill):
        fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(mask, fill.to(x.dtype), x)
