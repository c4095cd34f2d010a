"""Cross-modal reconstruction (CMR) inputs: pick (target m, partner n != m) per sample from the
modalities each case actually has, and fill the masked blocks of m with n's co-registered voxels
(docs/METHOD.md, "The proxy tasks").

Shapes: B = batch, C_i = channels of case i, X, Y, Z = patch size.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from nnunet_mmpretrain.modalities import MODALITIES, canonical
from nnunet_mmpretrain.pretrain.masking import apply_fill

Pair = Tuple[str, Optional[str]]


def _dedup_canonical(names: Sequence[str], where: str) -> List[str]:
    out: List[str] = []
    for n in names:
        c = canonical(n, where=where)
        if c not in out:
            out.append(c)
    return out


def _randint(high: int, generator: Optional[torch.Generator]) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


def draw_pairs(available: Sequence[Sequence[str]], generator: Optional[torch.Generator] = None,
               allow_single: bool = False,
               case_ids: Optional[Sequence[str]] = None) -> List[Pair]:
    """Draw (target m, partner n) per sample, both from the case's own modalities, n != m.

    Args:
        available: for each of the B samples, the modality names its case has (aliases accepted,
            duplicates ignored).
        generator: CPU torch.Generator for the draw (global RNG when None).
        allow_single: when a case has one modality, return ``(m, None)`` instead of raising.
        case_ids: optional names of the cases, used in error messages.

    Returns:
        list of B tuples ``(m, n)`` of canonical names; m uniform over the case's modalities,
        n uniform over the others (``None`` only for single-modality cases with
        ``allow_single=True``).

    Raises:
        ValueError naming the case when it has no modality, or only one and ``allow_single`` is
        False (cross-modal reconstruction is impossible for it).
    """
    pairs: List[Pair] = []
    for i, names in enumerate(available):
        label = f"case '{case_ids[i]}'" if case_ids is not None else f"case {i} of the batch"
        mods = _dedup_canonical(names, where=label)
        if not mods:
            raise ValueError(f"{label} has no modality")
        if len(mods) == 1:
            if not allow_single:
                raise ValueError(
                    f"{label} has a single modality ({mods[0]}): cross-modal reconstruction needs "
                    f"at least two modalities of the same case. Remove the case from the "
                    f"pretraining corpus, or pass allow_single=True to fill it with the template.")
            pairs.append((mods[0], None))
            continue
        m = mods[_randint(len(mods), generator)]
        others = [n for n in mods if n != m]
        pairs.append((m, others[_randint(len(others), generator)]))
    return pairs


def modality_slots(names: Sequence[Optional[str]],
                   device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Vocabulary slot (index in :data:`MODALITIES`) of each name; ``None`` gives -1.

    Returns:
        LongTensor (B,).
    """
    return torch.tensor([MODALITIES.index(canonical(n)) if n is not None else -1 for n in names],
                        dtype=torch.long, device=device)


def select_pair_channels(patches: Union[torch.Tensor, Sequence[torch.Tensor]],
                         available: Sequence[Sequence[str]], pairs: Sequence[Pair]
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the target and partner channels of every sample.

    Args:
        patches: (B, C, X, Y, Z) tensor or a list of B tensors (C_i, X, Y, Z); channel j of
            sample i holds modality ``available[i][j]``.
        available: per-sample channel modality names (aliases accepted).
        pairs: output of :func:`draw_pairs` for the same samples.

    Returns:
        target (B, 1, X, Y, Z), partner (B, 1, X, Y, Z) (zeros where the partner is None),
        target_idx LongTensor (B,) of vocabulary slots, partner_idx LongTensor (B,) (-1 where the
        partner is None; ``partner_idx >= 0`` is the "has a partner" mask).
    """
    if len(patches) != len(available) or len(pairs) != len(available):
        raise ValueError(f"got {len(patches)} patches, {len(available)} modality lists and "
                         f"{len(pairs)} pairs; they must match")
    targets, partners = [], []
    for i, (names, (m, n)) in enumerate(zip(available, pairs)):
        chans = [canonical(c, where=f"case {i} of the batch") for c in names]
        x = patches[i]
        if x.shape[0] < len(chans):
            raise ValueError(f"case {i}: {len(chans)} modalities listed but the patch has "
                             f"{x.shape[0]} channels")
        targets.append(x[chans.index(m)])
        partners.append(x[chans.index(n)] if n is not None else torch.zeros_like(x[0]))
    dev = targets[0].device
    target = torch.stack(targets).unsqueeze(1)
    partner = torch.stack(partners).unsqueeze(1)
    return (target, partner, modality_slots([p[0] for p in pairs], dev),
            modality_slots([p[1] for p in pairs], dev))


def cross_modal_fill(target: torch.Tensor, partner: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Cross-modal view: the masked blocks of ``target`` hold the partner's co-registered voxels.

    Args:
        target: (B, 1, X, Y, Z) modality m.
        partner: (B, 1, X, Y, Z) modality n of the same case, same grid.
        mask: BoolTensor (B, 1, X, Y, Z), True = replaced.

    Returns:
        (B, 1, X, Y, Z): ``target`` outside the mask, ``partner`` inside.
    """
    if target.shape != partner.shape:
        raise ValueError(f"target {tuple(target.shape)} and partner {tuple(partner.shape)} must "
                         f"have the same shape (co-registered patches)")
    return apply_fill(target, mask, partner)
