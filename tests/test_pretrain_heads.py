"""Skip-free reconstruction decoder."""
import pytest
import torch

from nnunet_mmpretrain.pretrain.heads import ReconstructionDecoder, total_stride


def test_total_stride():
    assert total_stride([[1, 1, 1], [2, 2, 2], [2, 2, 1]]) == (4, 4, 2)
    assert total_stride([1, 2, 2, 2]) == (8, 8, 8)


@pytest.mark.parametrize("strides,bottleneck", [
    ([[1, 1, 1], [2, 2, 2], [2, 2, 1]], (3, 2, 5)),
    ([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]], (2, 2, 2)),
    ([1, 2, 2], (2, 3, 2)),
])
def test_output_shape_anisotropic(strides, bottleneck):
    dec = ReconstructionDecoder(32, strides)
    x = torch.randn(2, 32, *bottleneck)
    out = dec(x)
    tot = total_stride(strides)
    assert out.shape == (2, 1, *(b * s for b, s in zip(bottleneck, tot)))
    out.mean().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_from_total_stride_and_options():
    dec = ReconstructionDecoder.from_total_stride(16, (8, 4, 2), norm="batch")
    assert dec(torch.randn(2, 16, 1, 2, 3)).shape == (2, 1, 8, 8, 6)
    assert ReconstructionDecoder.from_total_stride(8, (6, 2, 1))(torch.randn(1, 8, 1, 1, 1)).shape \
        == (1, 1, 6, 2, 1)
    dec = ReconstructionDecoder(64, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], channels=[24, 12],
                                out_channels=2, norm="none")
    assert dec(torch.randn(1, 64, 2, 2, 2)).shape == (1, 2, 8, 8, 8)
    # no upsampling at all: just the head
    plain = ReconstructionDecoder(4, [[1, 1, 1]])
    assert plain(torch.randn(1, 4, 3, 3, 3)).shape == (1, 1, 3, 3, 3)
    # 2D strides
    assert ReconstructionDecoder(8, [[1, 1], [2, 2]])(torch.randn(1, 8, 4, 4)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError):
        ReconstructionDecoder(8, [[2, 2, 2]], channels=[4, 4])
