"""Domain adaptive denormalization: target moments on the foreground, background untouched,
batchgeneratorsv2 transform probabilities."""
import pytest
import torch

from nnunet_mmpretrain.pretrain.dad import DADTransform, dad, foreground_stats


def _image(seed=0, c=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, 10, 12, 8, generator=g) * 40 + 300
    bg = torch.zeros(10, 12, 8, dtype=torch.bool)
    bg[:3] = True
    x[:, bg] = 0.0
    return x, ~bg


def test_foreground_moments_equal_target_and_background_unchanged():
    x, fg = _image()
    out = dad(x, target_mean=[1.5, -2.0], target_std=[0.5, 3.0])
    assert out.shape == x.shape
    mean, std = foreground_stats(out, fg)
    assert torch.allclose(mean, torch.tensor([1.5, -2.0]), atol=1e-4)
    assert torch.allclose(std, torch.tensor([0.5, 3.0]), atol=1e-4)
    assert torch.equal(out[:, ~fg], x[:, ~fg])


def test_explicit_mask_keeps_values_outside():
    x, _ = _image(1, c=1)
    x = x + 5.0  # background no longer zero: use a mask
    mask = torch.zeros(1, 10, 12, 8, dtype=torch.bool)
    mask[:, 4:, 2:10] = True
    out = dad(x, 10.0, 2.0, mask=mask)
    mean, std = foreground_stats(out, mask)
    assert mean.item() == pytest.approx(10.0, abs=1e-4)
    assert std.item() == pytest.approx(2.0, abs=1e-4)
    assert torch.equal(out[~mask], x[~mask])


def test_batched_per_sample_targets_and_constant_foreground():
    x = torch.stack([_image(2)[0], _image(3)[0]])  # (B, C, X, Y, Z)
    tm = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    ts = torch.tensor([[1.0, 2.0], [0.5, 0.25]])
    out = dad(x, tm, ts)
    mean, std = foreground_stats(out)
    assert torch.allclose(mean, tm, atol=1e-4) and torch.allclose(std, ts, atol=1e-4)
    const = torch.zeros(1, 4, 4, 4)
    const[:, 1:3] = 7.0
    o = dad(const, 2.0, 1.0)
    assert torch.isfinite(o).all() and torch.all(o[:, 1:3] == 2.0) and torch.all(o[:, 0] == 0)
    empty = torch.zeros(1, 4, 4, 4)
    assert torch.equal(dad(empty, 2.0, 1.0), empty)


def test_jitter_changes_statistics_reproducibly():
    x, fg = _image(4, c=1)
    a = dad(x, 0.0, 1.0, jitter=0.2, generator=torch.Generator().manual_seed(0))
    b = dad(x, 0.0, 1.0, jitter=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    mean, std = foreground_stats(a, fg)
    assert abs(mean.item()) > 1e-3 or abs(std.item() - 1) > 1e-3
    assert torch.equal(a[:, ~fg], x[:, ~fg])


def test_transform_p1_applies_bank_statistics():
    torch.manual_seed(0)
    bank = [[10.0, 2.0], [-5.0, 0.5]]
    t = DADTransform(bank, p=1.0)
    x, fg = _image(5, c=3)
    out = t(image=x.clone())["image"]
    mean, std = foreground_stats(out, fg)
    for c in range(3):
        pair = (round(mean[c].item(), 3), round(std[c].item(), 3))
        assert pair in {(10.0, 2.0), (-5.0, 0.5)}
    assert torch.equal(out[:, ~fg], x[:, ~fg])


def test_transform_p0_and_p_per_channel0_leave_image():
    x, _ = _image(6)
    seg = torch.zeros(1, *x.shape[1:])
    for t in (DADTransform([[1.0, 1.0]], p=0.0),
              DADTransform([[1.0, 1.0]], p=1.0, p_per_channel=0.0)):
        d = t(image=x.clone(), segmentation=seg.clone())
        assert torch.equal(d["image"], x) and torch.equal(d["segmentation"], seg)


def test_transform_segmentation_mask_and_probability():
    torch.manual_seed(1)
    x, fg = _image(7, c=1)
    x = x + 1.0  # nonzero everywhere: foreground must come from the segmentation
    seg = torch.where(fg, 0.0, -1.0)[None]
    t = DADTransform([[0.0, 1.0]], p=1.0, mask_from="segmentation")
    out = t(image=x.clone(), segmentation=seg)["image"]
    assert torch.equal(out[:, ~fg], x[:, ~fg])
    mean, std = foreground_stats(out, fg)
    assert mean.item() == pytest.approx(0.0, abs=1e-4)
    assert std.item() == pytest.approx(1.0, abs=1e-4)
    half = DADTransform([[0.0, 1.0]], p=0.5)
    applied = sum(not torch.equal(half(image=x.clone())["image"], x) for _ in range(200))
    assert 70 < applied < 130
    with pytest.raises(ValueError):
        DADTransform([[0.0, -1.0]])
