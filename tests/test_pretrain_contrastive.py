"""Contrastive losses: hand-computed InfoNCE, log(B) limit, multi-positive behaviour, heads, and the
cross-rank gather checked against a single process with 2 gloo CPU processes."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunet_mmpretrain.pretrain.contrastive import (ProjectionHead, all_gather_with_grad, info_nce,
                                                    multi_positive_info_nce, pool_features,
                                                    subject_id_tensor)


def test_info_nce_hand_computed_2x2():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # S = z1 z2^T = [[1, .6], [0, .8]]; rows of S and of S^T, cross-entropy on the diagonal
    expected = 0.25 * (math.log1p(math.exp(-0.4)) + math.log1p(math.exp(-0.8))
                       + math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-0.2)))
    assert info_nce(z1, z2, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # temperature 0.5 on identical orthonormal views: log(1 + e^-2)
    expected_id = math.log1p(math.exp(-2))
    assert info_nce(z1, z1, temperature=0.5).item() == pytest.approx(expected_id, abs=1e-6)
    # normalisation: scaling the features changes nothing
    assert info_nce(3 * z1, 7 * z2).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_random_features_high_temperature_is_log_b():
    g = torch.Generator().manual_seed(0)
    b = 16
    z1, z2 = torch.randn(b, 64, generator=g), torch.randn(b, 64, generator=g)
    assert info_nce(z1, z2, temperature=100.0).item() == pytest.approx(math.log(b), abs=0.01)
    # aligned views at a sane temperature are much better than log(B)
    assert info_nce(z1, z1 + 0.01 * z2, temperature=0.1).item() < 0.1


def test_info_nce_gather_without_process_group_is_noop():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert torch.equal(info_nce(z1, z2, 0.2, gather=True), info_nce(z1, z2, 0.2))
    assert all_gather_with_grad(z1) is z1


def _manual_supcon(z, ids, t):
    z = torch.nn.functional.normalize(z, dim=1)
    s = z @ z.t() / t
    losses = []
    for i in range(len(ids)):
        others = [a for a in range(len(ids)) if a != i]
        pos = [p for p in others if ids[p] == ids[i]]
        if not pos:
            continue
        den = torch.logsumexp(s[i, others], 0)
        losses.append(-sum(s[i, p] - den for p in pos) / len(pos))
    return torch.stack(losses).mean()


def test_multi_positive_matches_formula_and_excludes_lonely_anchors():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(7, 5, generator=g)
    ids = [3, 3, 3, 9, 9, 4, 11]  # subjects 4 and 11 have no positive
    got = multi_positive_info_nce(z, ids, temperature=0.3)
    assert got.item() == pytest.approx(_manual_supcon(z, ids, 0.3).item(), abs=1e-5)
    # strings work and give the same grouping
    sids = ["a", "a", "a", "b", "b", "c", "d"]
    assert multi_positive_info_nce(z, sids, 0.3).item() == pytest.approx(got.item(), abs=1e-6)
    assert subject_id_tensor(sids)[0] == subject_id_tensor(["a"])[0]


def test_multi_positive_no_positives_is_zero_with_graph():
    z = torch.randn(4, 6, requires_grad=True)
    loss = multi_positive_info_nce(z, [0, 1, 2, 3])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_multi_positive_lower_when_positives_aligned():
    g = torch.Generator().manual_seed(3)
    subjects, views, d = 6, 3, 32
    centres = torch.randn(subjects, d, generator=g)
    ids = torch.arange(subjects).repeat_interleave(views)
    aligned = centres[ids] + 0.1 * torch.randn(subjects * views, d, generator=g)
    shuffled = torch.randn(subjects * views, d, generator=g)
    la = multi_positive_info_nce(aligned, ids, 0.1)
    lr = multi_positive_info_nce(shuffled, ids, 0.1)
    assert la.item() < 0.5 * lr.item()
    # SupCon bounds: log|P| (positives identical, negatives far) <= loss; log(N - 1) for
    # uninformative similarities (high temperature)
    assert math.log(views - 1) - 1e-4 <= la.item() < math.log(views - 1) + 0.05
    hot = multi_positive_info_nce(shuffled, ids, 100.0).item()
    assert hot == pytest.approx(math.log(subjects * views - 1), abs=0.01)


def test_projection_head_and_pool():
    feat = torch.randn(3, 16, 2, 3, 2)
    pooled = pool_features(feat)
    assert pooled.shape == (3, 16) and torch.allclose(pooled, feat.mean(dim=(2, 3, 4)))
    assert pool_features(pooled) is pooled
    for norm in ("layer", "batch", "none"):
        assert ProjectionHead(16, 32, 8, norm=norm)(pooled).shape == (3, 8)
    with pytest.raises(ValueError):
        ProjectionHead(16, norm="group")


# ---------------------------------------------------------------- distributed gather (2 ranks)
D = 8


def _data():
    g = torch.Generator().manual_seed(123)
    z1, z2 = torch.randn(6, D, generator=g), torch.randn(6, D, generator=g)
    zm = torch.randn(10, D, generator=g)
    ids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2, 0, 5])  # positives cross the rank boundary
    lin = nn.Linear(D, D)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(D, D, generator=g))
        lin.bias.copy_(torch.randn(D, generator=g))
    return z1, z2, zm, ids, lin


# rank 0 holds 4 of the 6 InfoNCE samples and 5 of the 10 multi-positive ones
SLICES_NCE = [slice(0, 4), slice(4, 6)]
SLICES_MP = [slice(0, 5), slice(5, 10)]


def _losses(z1, z2, zm, ids, lin, gather):
    a1, a2, am = (t.clone().requires_grad_(True) for t in (z1, z2, zm))
    l_nce = info_nce(lin(a1), lin(a2), temperature=0.5, gather=gather)
    l_mp = multi_positive_info_nce(lin(am), ids, temperature=0.5, gather=gather)
    (l_nce + l_mp).backward()
    return (l_nce.detach(), l_mp.detach(), a1.grad, a2.grad, am.grad,
            lin.weight.grad.clone(), lin.bias.grad.clone())


def _worker(rank, world, init_method, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        z1, z2, zm, ids, lin = _data()
        sn, sm = SLICES_NCE[rank], SLICES_MP[rank]
        res = list(_losses(z1[sn], z2[sn], zm[sm], ids[sm], lin, gather=True))
        for k in (5, 6):  # what DDP does with parameter gradients: average over ranks
            dist.all_reduce(res[k])
            res[k] /= world
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_matches_single_process(tmp_path):
    world = 2
    init = "file://" + str(tmp_path / "pg_init")
    mp.spawn(_worker, args=(world, init, str(tmp_path)), nprocs=world, join=True)
    r = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in range(world)]
    z1, z2, zm, ids, lin = _data()
    single = _losses(z1, z2, zm, ids, lin, gather=False)
    # mean of per-rank losses = single-process loss
    for k in (0, 1):
        assert ((r[0][k] + r[1][k]) / world).item() == pytest.approx(single[k].item(), abs=1e-5)
    # per-rank input gradients = W x single-process gradients of that rank's samples
    for k, slices in ((2, SLICES_NCE), (3, SLICES_NCE), (4, SLICES_MP)):
        full = torch.cat([r[0][k], r[1][k]]) / world
        assert torch.allclose(full, single[k], atol=1e-5), k
        assert torch.allclose(r[1][k], world * single[k][slices[1]], atol=1e-5)
    # DDP-averaged parameter gradients = single-process gradients, identical on both ranks
    for k in (5, 6):
        assert torch.allclose(r[0][k], single[k], atol=1e-5)
        assert torch.allclose(r[1][k], single[k], atol=1e-5)
