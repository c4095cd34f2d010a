"""Cross-modal pair drawing and fill."""
import pytest
import torch

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.pretrain.cross_modal import (cross_modal_fill, draw_pairs, modality_slots,
                                                    select_pair_channels)
from nnunet_mmpretrain.pretrain.masking import block_mask


def test_pairs_come_from_the_case_and_differ():
    available = [["T1", "t1ce", "T2", "FLAIR"], ["t1", "t2"], ["t1n", "t2w", "pd", "mra"],
                 ["flair", "dwi", "adc"]]
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        pairs = draw_pairs(available, generator=g)
        assert len(pairs) == 4
        for (m, n), names in zip(pairs, available):
            can = {MODALITIES[i] for i in modality_slots(names).tolist()}
            assert m in can and n in can and m != n
            seen.add((m, n))
    # all ordered pairs of the 2-modality case are reached, and a good share of the others
    assert ("t1", "t2") in seen and ("t2", "t1") in seen
    assert len(seen) > 20


def test_single_modality_case():
    with pytest.raises(ValueError, match=r"case 'sub-007'.*single modality \(t1\)"):
        draw_pairs([["t1", "t2"], ["T1w"]], case_ids=["sub-001", "sub-007"])
    with pytest.raises(ValueError, match="case 1 of the batch"):
        draw_pairs([["t1", "t2"], ["t1", "T1"]])  # duplicates collapse to one modality
    pairs = draw_pairs([["t1", "t2"], ["t1"]], allow_single=True)
    assert pairs[1] == ("t1", None)


def test_select_channels_and_slots():
    g = torch.Generator().manual_seed(1)
    # channel c of case i holds the constant 10 * i + slot(c) so the selection can be read back
    available = [["t1", "t2", "flair"], ["adc", "dwi"]]
    patches = []
    for i, names in enumerate(available):
        vals = 10.0 * i + modality_slots(names).float()
        patches.append(vals.view(-1, 1, 1, 1).expand(-1, 4, 4, 4).clone())
    pairs = draw_pairs(available, generator=g)
    target, partner, t_idx, p_idx = select_pair_channels(patches, available, pairs)
    assert target.shape == (2, 1, 4, 4, 4) and partner.shape == (2, 1, 4, 4, 4)
    assert t_idx.dtype == torch.long
    for i, (m, n) in enumerate(pairs):
        assert t_idx[i].item() == MODALITIES.index(m) and p_idx[i].item() == MODALITIES.index(n)
        assert torch.all(target[i] == 10 * i + MODALITIES.index(m))
        assert torch.all(partner[i] == 10 * i + MODALITIES.index(n))
    # tensor input and single-modality partner
    t2, p2, _, p_idx2 = select_pair_channels(torch.ones(1, 1, 4, 4, 4), [["t1"]], [("t1", None)])
    assert p_idx2.tolist() == [-1] and p2.abs().sum() == 0 and t2.sum() == 64


def test_cross_modal_fill_uses_partner_voxels_in_mask_only():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(3, 1, 16, 16, 8, generator=g)
    partner = torch.randn(3, 1, 16, 16, 8, generator=g)
    mask = block_mask(3, (16, 16, 8), 8, 0.75, generator=g)
    out = cross_modal_fill(target, partner, mask)
    assert torch.equal(out[mask], partner[mask])
    assert torch.equal(out[~mask], target[~mask])
    with pytest.raises(ValueError):
        cross_modal_fill(target, partner[:, :, :8], mask)
