"""Contrastive losses: BrainMVP's modality-aware contrastive learning (MCL, symmetric InfoNCE
between the two views of a sample) and the DAD paper's multi-positive loss (same subject, other
modality or view = positive), with optional negatives gathered across torch.distributed ranks.
docs/METHOD.md ("The proxy tasks").

Shapes: B = local batch, N = local number of embeddings, D = embedding size, C = channels.

Distributed semantics (``gather=True`` with an initialised process group of W ranks): every
rank computes the loss of its *local* anchors against the keys of *all* ranks, scaled so that
the mean over ranks of the returned losses equals the loss of one process holding the whole
batch (also with unequal local batch sizes). The gather's backward sums the key gradients of
all ranks, so the gradient a rank receives for its inputs is the gradient of the *sum* of the
per-rank losses, i.e. W x the single-process gradient of its samples; DDP averages parameter
gradients over the W ranks, which makes the parameter gradients exactly the single-process ones.
Use the loss under DDP as usual (no extra scaling). Without an initialised process group (or
W = 1) ``gather`` is a no-op.
"""
from __future__ import annotations

import zlib
from typing import List, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _dist_world() -> Tuple[int, int]:
    """(world size, rank); (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather_sizes(n: int, device: torch.device) -> List[int]:
    world, _ = _dist_world()
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def _padded_all_gather(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """all_gather of tensors whose first dimension differs between ranks (no autograd)."""
    world, _ = _dist_world()
    max_n = max(sizes)
    x = x.contiguous()
    if x.shape[0] != max_n:
        pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    bufs = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(bufs, x)
    return torch.cat([b[:n] for b, n in zip(bufs, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's tensor. Backward: all-reduce (sum) of the incoming
    gradient, then this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: List[int]) -> torch.Tensor:  # noqa: D401
        world, rank = _dist_world()
        ctx.sizes, ctx.rank, ctx.world = list(sizes), rank, world
        return _padded_all_gather(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sizes, rank, world = ctx.sizes, ctx.rank, ctx.world
        max_n = max(sizes)
        padded = grad.new_zeros((world, max_n, *grad.shape[1:]))
        off = 0
        for r, n in enumerate(sizes):
            padded[r, :n] = grad[off:off + n]
            off += n
        dist.all_reduce(padded, op=dist.ReduceOp.SUM)
        return padded[rank, :sizes[rank]].contiguous(), None


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n_r, ...) of all ranks into (sum_r n_r, ...) in rank order, keeping the
    autograd graph (backward: all-reduce sum of the gradient, this rank's slice). Local sizes may
    differ between ranks. Identity when torch.distributed is not initialised or W = 1."""
    world, _ = _dist_world()
    if world == 1:
        return x
    return _AllGatherWithGrad.apply(x, _gather_sizes(x.shape[0], x.device))


def _gather_keys(*tensors: torch.Tensor, gather: bool):
    """Gathered copies of ``tensors`` (same first dimension), this rank's row offset and W."""
    world, rank = _dist_world()
    if not gather or world == 1:
        return tensors, 0, 1
    sizes = _gather_sizes(tensors[0].shape[0], tensors[0].device)
    out = tuple(_AllGatherWithGrad.apply(t, sizes) if t.requires_grad or t.is_floating_point()
                else _padded_all_gather(t, sizes) for t in tensors)
    return out, sum(sizes[:rank]), world


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0, gather: bool = False,
             normalize: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE between two views; row i of ``z1`` and ``z2`` are positives, the other
    samples of the (gathered) batch are negatives.

    ``loss = 1/2 [CE(z1 z2^T / t, I) + CE(z2 z1^T / t, I)]`` averaged over anchors, with cosine
    similarities when ``normalize`` (default). The default temperature 1.0 matches BrainMVP's
    released code; it gives a weak signal (logits within [-1, 1]), 0.1-0.2 is recommended.

    Args:
        z1: (B, D) embeddings of view 1 (e.g. template-filled view).
        z2: (B, D) embeddings of view 2 (e.g. cross-modal view), same order.
        temperature: softmax temperature t > 0.
        gather: use the negatives of all ranks (see the module docstring for the semantics).
        normalize: L2-normalise the embeddings first.

    Returns:
        scalar tensor (float32).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (B, D)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z1, z2 = z1.float(), z2.float()
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    (k1, k2), offset, world = _gather_keys(z1, z2, gather=gather)
    n_total = k1.shape[0]
    labels = torch.arange(z1.shape[0], device=z1.device) + offset
    l12 = F.cross_entropy(z1 @ k2.t() / temperature, labels, reduction="sum")
    l21 = F.cross_entropy(z2 @ k1.t() / temperature, labels, reduction="sum")
    return 0.5 * (l12 + l21) * (world / n_total)


def subject_id_tensor(subject_ids: Union[torch.Tensor, Sequence], device=None) -> torch.Tensor:
    """Subject ids as LongTensor (N,). Strings are mapped with CRC32 (stable across processes and
    ranks, so gathered ids compare correctly); integers are kept."""
    if torch.is_tensor(subject_ids):
        return subject_ids.to(device=device, dtype=torch.long).reshape(-1)
    vals = [zlib.crc32(str(s).encode("utf-8")) if isinstance(s, str) else int(s)
            for s in subject_ids]
    return torch.tensor(vals, dtype=torch.long, device=device)


def multi_positive_info_nce(z: torch.Tensor, subject_ids: Union[torch.Tensor, Sequence],
                            temperature: float = 0.1, gather: bool = False,
                            normalize: bool = True) -> torch.Tensor:
    """Multi-positive (SupCon-style) InfoNCE: embeddings of the same subject (other modality or
    view) are positives, all other embeddings negatives (Wen et al. 2023).

    For anchor i with positives P(i) (same subject id, j != i):
    ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) )``;
    the loss is the mean of l_i over anchors with at least one positive (anchors without
    positives are excluded; when no anchor has one, the result is a zero that keeps the graph).

    Args:
        z: (N, D) embeddings, e.g. several modalities / DAD views per subject stacked.
        subject_ids: (N,) LongTensor or a sequence of ints / strings (see
            :func:`subject_id_tensor`); use ids that are unique across ranks when gathering.
        temperature: t > 0 (SupCon-like default 0.1).
        gather: use the keys of all ranks (module docstring).
        normalize: cosine similarities (L2-normalise first).

    Returns:
        scalar tensor (float32).
    """
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got {tuple(z.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ids = subject_id_tensor(subject_ids, device=z.device)
    if ids.shape[0] != z.shape[0]:
        raise ValueError(f"{ids.shape[0]} subject ids for {z.shape[0]} embeddings")
    z = z.float()
    if normalize:
        z = F.normalize(z, dim=1)
    (keys, key_ids), offset, world = _gather_keys(z, ids, gather=gather)
    n = z.shape[0]
    cols = torch.arange(keys.shape[0], device=z.device)
    self_mask = cols[None, :] == (torch.arange(n, device=z.device) + offset)[:, None]
    logits = (z @ keys.t() / temperature).masked_fill(self_mask, torch.finfo(torch.float32).min / 2)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (ids[:, None] == key_ids[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    valid = n_pos > 0
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1) / n_pos.clamp(min=1)
    total = per_anchor[valid].sum()
    n_valid = valid.sum()
    if world > 1:
        n_valid = n_valid.clone()
        dist.all_reduce(n_valid, op=dist.ReduceOp.SUM)
    n_valid_i = int(n_valid.item())
    if n_valid_i == 0:
        return z.sum() * 0.0
    return total * (world / n_valid_i)


class ProjectionHead(nn.Module):
    """Linear - norm - ReLU - Linear projection for the contrastive terms.

    Args:
        in_dim: C, pooled encoder channels.
        hidden_dim: width of the hidden layer.
        out_dim: D, embedding size.
        norm: ``'layer'`` (default; independent of the batch, safe with 2-3 samples per GPU),
            ``'batch'`` (BatchNorm1d; convert to SyncBatchNorm under DDP) or ``'none'``.

    Input (B, C) -> output (B, D).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, norm: str = "layer"):
        super().__init__()
        norms = {"layer": lambda: nn.LayerNorm(hidden_dim),
                 "batch": lambda: nn.BatchNorm1d(hidden_dim), "none": nn.Identity}
        if norm not in norms:
            raise ValueError(f"norm must be one of {sorted(norms)}, got {norm!r}")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), norms[norm](),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, D)."""
        return self.net(x)


def pool_features(feat: torch.Tensor) -> torch.Tensor:
    """Global average pool over all spatial axes: (B, C, x, y, z) (or (B, C, x, y)) -> (B, C);
    a (B, C) input is returned unchanged."""
    if feat.dim() == 2:
        return feat
    return feat.flatten(2).mean(-1)
