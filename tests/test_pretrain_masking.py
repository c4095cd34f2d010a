"""Block masking: exact ratio per sample, independence, partial border blocks, fill semantics."""
import math

import pytest
import torch

from nnunet_mmpretrain.pretrain.masking import (apply_fill, block_grid_shape, block_mask,
                                                num_masked_blocks)


def _block_states(mask, block):
    """(B, nx, ny, nz) masked state per block, asserting each block is uniform."""
    b = mask.shape[0]
    m = mask[:, 0]
    grid = block_grid_shape(m.shape[1:], block)
    out = torch.zeros(b, *grid, dtype=torch.bool)
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):
                blk = m[:, i * block:(i + 1) * block, j * block:(j + 1) * block,
                        k * block:(k + 1) * block]
                flat = blk.reshape(b, -1)
                assert (flat.all(1) == flat.any(1)).all(), "block not uniformly masked"
                out[:, i, j, k] = flat[:, 0]
    return out


@pytest.mark.parametrize("patch,ratio,k", [((32, 32, 32), 0.875, 56), ((20, 17, 9), 0.875, 16),
                                           ((16, 24, 8), 0.8, 5), ((8, 8, 8), 0.5, 1)])
def test_exact_block_count_per_sample(patch, ratio, k):
    g = torch.Generator().manual_seed(0)
    mask = block_mask(5, patch, 8, ratio, generator=g)
    assert mask.shape == (5, 1, *patch) and mask.dtype == torch.bool
    states = _block_states(mask, 8)
    n_blocks = math.prod(block_grid_shape(patch, 8))
    assert k == math.floor(ratio * n_blocks + 0.5)  # round half up
    assert states.flatten(1).sum(1).tolist() == [k] * 5


def test_voxel_ratio_when_divisible():
    mask = block_mask(3, (32, 32, 16), 8, 0.875, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mask.float().flatten(1).mean(1), torch.full((3,), 0.875))


def test_masks_differ_between_samples_and_calls():
    g = torch.Generator().manual_seed(2)
    a = block_mask(4, (32, 32, 32), 8, 0.5, generator=g)
    b = block_mask(4, (32, 32, 32), 8, 0.5, generator=g)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    # reproducible with the same seed
    c = block_mask(4, (32, 32, 32), 8, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, c)


def test_rounding_and_extremes():
    assert num_masked_blocks(8, 0.875) == 7
    assert num_masked_blocks(2, 0.25) == 1  # half up
    assert block_mask(2, (9, 9, 9), 8, 0.0).sum() == 0
    assert block_mask(2, (9, 9, 9), 8, 1.0).all()
    with pytest.raises(ValueError):
        block_mask(1, (8, 8, 8), 8, 1.5)


def test_anisotropic_block_size():
    mask = block_mask(2, (16, 16, 4), (8, 8, 4), 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 1, 16, 16, 4)
    assert mask[:, 0].reshape(2, -1).float().mean(1).tolist() == [0.75, 0.75]


def test_apply_fill_only_masked_and_gradient():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 16, 16, 16, generator=g)
    fill = torch.randn(2, 1, 16, 16, 16, generator=g, requires_grad=True)
    mask = block_mask(2, (16, 16, 16), 8, 0.5, generator=g)
    y = apply_fill(x, mask, fill)
    assert torch.equal(y[~mask], x[~mask])
    assert torch.equal(y[mask], fill.detach()[mask])
    y.sum().backward()
    assert torch.equal(fill.grad, mask.float())


def test_apply_fill_scalar_and_channels():
    x = torch.ones(1, 3, 8, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    y = apply_fill(x, mask, 0.0)
    assert y[..., :4].abs().sum() == 0 and torch.equal(y[..., 4:], x[..., 4:])
