"""Modality templates: crops at atlas positions, zero padding, gradients, normalisation,
position-free mode, state round trip, NIfTI export."""
import os

import numpy as np
import pytest
import torch

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.pretrain.templates import ModalityTemplates

GRID = (12, 10, 8)


def _ramp_templates():
    """Template of slot s holds s * 1000 + linear voxel index (min-max range known); BrainMVP's
    [0, 1] value space, so crops equal the normalised ramp."""
    n = int(np.prod(GRID))
    init = np.stack([s * 1000 + np.arange(n, dtype=np.float32).reshape(GRID)
                     for s in range(len(MODALITIES))])
    return ModalityTemplates(GRID, init=init, eps=0.0, value_space="minmax"), n


def test_default_shape_and_nbytes():
    t = ModalityTemplates(GRID)
    assert t.templates.shape == (8, *GRID) and t.modalities == MODALITIES
    assert t.nbytes() == 8 * int(np.prod(GRID)) * 4
    assert torch.count_nonzero(t.templates) == 0


def test_zero_init_gives_zeros_without_nan():
    t = ModalityTemplates(GRID)
    out = t(torch.tensor([0, 3]), torch.tensor([[0, 0, 0], [2, 2, 2]]), (4, 4, 4))
    assert out.shape == (2, 1, 4, 4, 4)
    assert torch.isfinite(out).all() and out.abs().sum() == 0
    out.sum().backward()
    assert torch.isfinite(t.templates.grad).all()


def test_crop_at_known_offset_returns_the_right_voxels():
    t, n = _ramp_templates()
    ref = np.arange(n, dtype=np.float32).reshape(GRID) / (n - 1)  # normalised ramp
    out = t(torch.tensor([2, 5]), torch.tensor([[3, 1, 2], [0, 4, 0]]), (4, 5, 6))
    assert np.allclose(out[0, 0].detach().numpy(), ref[3:7, 1:6, 2:8], atol=1e-6)
    assert np.allclose(out[1, 0].detach().numpy(), ref[0:4, 4:9, 0:6], atol=1e-6)


def test_min_max_range():
    torch.manual_seed(0)
    t = ModalityTemplates(GRID, init=torch.randn(8, *GRID) * 50 + 7, value_space="minmax")
    vol = t.volume("t2")
    assert abs(vol.min().item()) < 1e-6 and abs(vol.max().item() - 1) < 1e-5
    out = t(torch.arange(8), torch.zeros(8, 3, dtype=torch.long), GRID)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(8), atol=1e-5)


def test_out_of_range_crop_zero_pads():
    t, n = _ramp_templates()
    ref = np.arange(n, dtype=np.float32).reshape(GRID) / (n - 1)
    out = t(torch.tensor([1, 1, 1]), torch.tensor([[-2, 8, -1], [100, 0, 0], [-50, -50, -50]]),
            (4, 4, 4)).detach().numpy()
    exp = np.zeros((4, 4, 4), np.float32)
    exp[2:4, 0:2, 1:4] = ref[0:2, 8:10, 0:3]
    assert np.allclose(out[0, 0], exp, atol=1e-6)
    assert np.all(out[1] == 0) and np.all(out[2] == 0)
    # a patch larger than the grid
    big = t(torch.tensor([1]), torch.tensor([[-1, -1, -1]]), (14, 12, 10))
    assert big.shape == (1, 1, 14, 12, 10)
    assert np.allclose(big[0, 0, 1:13, 1:11, 1:9].detach().numpy(), ref, atol=1e-6)


def test_gradient_reaches_the_template_through_the_crop():
    torch.manual_seed(1)
    t = ModalityTemplates(GRID, init=torch.randn(8, *GRID))
    out = t(torch.tensor([4]), torch.tensor([[2, 2, 2]]), (3, 3, 3))
    out.sum().backward()
    g = t.templates.grad
    assert g is not None and g[4, 2:5, 2:5, 2:5].abs().min() > 0
    others = torch.ones(8, dtype=torch.bool)
    others[4] = False
    assert g[others].abs().sum() == 0
    # the zero-initialised min-max template also gets a signal (through the min-max statistics)
    z = ModalityTemplates(GRID, value_space="minmax")
    crop = z(torch.tensor([0]), torch.tensor([[0, 0, 0]]), (4, 4, 4))
    (crop * torch.randn(1, 1, 4, 4, 4)).sum().backward()
    assert z.templates.grad[0].abs().sum() > 0


def test_position_free_modes():
    t, n = _ramp_templates()
    t.position_free = "center"
    c = t(torch.tensor([0, 0]), None, (4, 4, 4))
    assert torch.equal(c[0], c[1])
    ref = np.arange(n, dtype=np.float32).reshape(GRID) / (n - 1)
    assert np.allclose(c[0, 0].detach().numpy(), ref[4:8, 3:7, 2:6], atol=1e-6)
    t.position_free = "random"
    g = torch.Generator().manual_seed(0)
    r = t(torch.zeros(16, dtype=torch.long), None, (4, 4, 4), generator=g).detach().numpy()
    firsts = {float(x) for x in r[:, 0, 0, 0, 0]}
    assert len(firsts) > 4  # different positions
    for k in range(16):  # every crop is a contiguous in-grid window of the ramp
        v = int(round(r[k, 0, 0, 0, 0] * (n - 1)))
        i, j, l = np.unravel_index(v, GRID)
        assert i + 4 <= GRID[0] and j + 4 <= GRID[1] and l + 4 <= GRID[2]
        assert np.allclose(r[k, 0], ref[i:i + 4, j:j + 4, l:l + 4], atol=1e-6)
    # a patch longer than the grid on one axis is centred and zero-padded there
    wide = t(torch.zeros(4, dtype=torch.long), None, (16, 4, 4), generator=g).detach().numpy()
    assert np.all(wide[:, 0, :2] == 0) and np.all(wide[:, 0, 14:] == 0)
    assert np.all(wide[:, 0, 3:13].reshape(4, -1).max(1) > 0)


def test_subset_of_modalities_and_errors():
    t = ModalityTemplates(GRID, modalities=["T2", "t1ce"])
    assert t.modalities == ("t2", "t1c")
    out = t(torch.tensor([MODALITIES.index("t1c")]), torch.zeros(1, 3, dtype=torch.long), (2, 2, 2))
    assert out.shape == (1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="no template for modality"):
        t(torch.tensor([MODALITIES.index("adc")]), None, (2, 2, 2))


def test_init_from_mapping_and_state_round_trip(tmp_path):
    mean_t1 = np.random.default_rng(0).normal(size=GRID).astype(np.float32)
    t = ModalityTemplates(GRID, init={"T1": mean_t1}, position_free="center")
    assert np.allclose(t.templates[1].detach().numpy(), mean_t1)
    assert t.templates[0].abs().sum() == 0
    path = tmp_path / "tpl.pt"
    torch.save(t.state(), path)
    state = torch.load(path, weights_only=True)
    u = ModalityTemplates.from_state(state)
    assert torch.equal(u.templates, t.templates) and u.position_free == "center"
    w = ModalityTemplates(GRID)
    param = w.templates
    w.load_state(state)
    assert w.templates is param and torch.equal(w.templates, t.templates)
    with pytest.raises(ValueError):
        ModalityTemplates((4, 4, 4)).load_state(state)


def test_export_nifti(tmp_path):
    import nibabel as nib
    torch.manual_seed(2)
    t = ModalityTemplates(GRID, modalities=["t1", "flair"], init=torch.randn(2, *GRID))
    paths = t.export_nifti(str(tmp_path / "tpl"), spacing=(1.0, 1.0, 2.0), origin=(-5, 0, 3))
    assert [os.path.basename(p) for p in paths] == ["template_t1.nii.gz", "template_flair.nii.gz"]
    assert not [f for f in os.listdir(tmp_path / "tpl") if f.startswith(".tmp")]
    img = nib.load(paths[0])
    assert img.shape == GRID
    assert np.allclose(img.affine[:3, :3], np.diag([1, 1, 2]))
    assert np.allclose(img.affine[:3, 3], [-5, 0, 3])
    written = np.asarray(img.dataobj)
    assert np.allclose(written, t.volume("t1").detach().numpy(), atol=1e-6)
    p = t.export_nifti(str(tmp_path / "raw"), transpose=(2, 1, 0), normalised=False,
                       modalities=["flair"])
    assert nib.load(p[0]).shape == GRID[::-1]


@pytest.mark.parametrize("space", ["data", "minmax"])
def test_forward_and_gradient_match_a_naive_reference(space):
    torch.manual_seed(3)
    init = torch.randn(8, *GRID)
    t = ModalityTemplates(GRID, init=init, value_space=space)
    ref = ModalityTemplates(GRID, init=init, value_space=space)
    idx = torch.tensor([1, 6, 1])
    starts = torch.tensor([[-1, 3, 2], [4, 4, 4], [9, -2, 5]])
    w = torch.randn(3, 1, 5, 5, 5)
    out = t(idx, starts, (5, 5, 5))
    (out * w).sum().backward()
    expected = []
    for slot, (sx, sy, sz) in zip(idx.tolist(), starts.tolist()):
        vol = torch.nn.functional.pad(ref.volume(slot), (5, 5, 5, 5, 5, 5))
        expected.append(vol[sx + 5:sx + 10, sy + 5:sy + 10, sz + 5:sz + 10])
    expected = torch.stack(expected).unsqueeze(1)
    (expected * w).sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(t.templates.grad, ref.templates.grad, atol=1e-4)


def test_data_space_templates_are_used_as_they_are():
    """Default value space: a z-score-like template (negative and > 1 values) is cropped unchanged,
    so it can represent dark and bright tissue; outside the grid the fill is 0 (background)."""
    init = torch.randn(8, *GRID) * 2 - 0.5
    t = ModalityTemplates(GRID, init=init)
    assert t.value_space == "data"
    out = t(torch.tensor([3]), torch.tensor([[2, 1, -1]]), (4, 4, 4))[0, 0]
    assert torch.equal(out[:, :, 1:], init[3, 2:6, 1:5, 0:3])
    assert torch.all(out[:, :, 0] == 0)
    assert out.min() < 0 and out.max() > 1
    with pytest.raises(ValueError, match="value_space"):
        ModalityTemplates(GRID, value_space="unit")
