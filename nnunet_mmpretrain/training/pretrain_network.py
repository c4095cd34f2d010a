"""The pretraining network: the plans' own encoder, one stem per vocabulary modality, a light
skip-free reconstruction decoder, the modality templates and a projection head.

Key contract (dynamic-network-architectures): the nnU-Net network built from the plans names its
encoder ``key_to_encoder`` (``encoder.stages``) and its stem ``key_to_stem`` (``encoder.stem``
for ResEnc, ``encoder.stages.0`` for PlainConv; dynamic-network-architectures also allows a stem
outside the encoder). Here the stem's slot is an ``nn.Identity`` and the real stems live in ``stems[slot]`` (slot = index in
:data:`nnunet_mmpretrain.modalities.MODALITIES`), so

* ``encoder.*`` keys are exactly the nnU-Net network's ``encoder.*`` keys minus the stem,
* ``stems.<slot>.*`` are the stem's keys for one modality (``key_to_stem`` + the rest).

Running modality m through its own stem tells the network which modality it must rebuild from a
patch whose masked blocks hold another modality (without it the target is ambiguous; docs/METHOD.md).
"""
from __future__ import annotations

from copy import deepcopy
from typing import Optional, Sequence

import torch
from torch import nn

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.pretrain.contrastive import ProjectionHead, pool_features
from nnunet_mmpretrain.pretrain.heads import HypercolumnDecoder, ReconstructionDecoder
from nnunet_mmpretrain.pretrain.templates import ModalityTemplates
from nnunet_mmpretrain.transfer.stem import in_proj_weight_keys, merged_stem_parameters


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


def _set(module: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_key, _, last = dotted.rpartition(".")
    parent = _get(module, parent_key) if parent_key else module
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def _with_parameters(module: nn.Module, params: dict) -> nn.Module:
    """A throwaway copy of ``module`` whose parameters are the given tensors (names as in
    ``named_parameters``; shapes may differ, gradients flow into the tensors). A copy, because
    torch.func.functional_call does not restore a module's tied parameters when shapes change."""
    m = deepcopy(module)
    for name, t in params.items():
        owner, _, attr = name.rpartition(".")
        sub = m.get_submodule(owner) if owner else m
        delattr(sub, attr)
        setattr(sub, attr, t)
    return m


class MMPretrainNetwork(nn.Module):
    """Args:
        nnunet_net: the network nnU-Net builds from the plans (1 input channel); only its encoder
            and stem are kept.
        template_grid: (GX, GY, GZ) of the canonical grid, or None for no templates.
        strides: the plans' per-stage strides (for the decoder).
        proj_dim: projection head output size (0: contrastive term on pooled features directly).
        position_free: template crop mode when patches carry no atlas position.
        decoder: ``'skipfree'`` (BrainMVP's light decoder from the bottleneck) or
            ``'hypercolumn'`` (1x1x1 readout of every stage, :class:`HypercolumnDecoder`).
        template_init: starting templates (see :class:`ModalityTemplates`), e.g. corpus means.
        template_space: ``'data'`` or ``'minmax'`` (see :class:`ModalityTemplates`).
        joint: also build the joint-view readout (:meth:`forward` with ``joint=``), a second
            hypercolumn readout with one output channel per vocabulary modality.
        joint_stem: how the joint view mixes modalities (``ObjectiveConfig.joint_stem``):
            ``'mean'`` averages the stem outputs; ``'downstream'`` runs one stem built from the
            sample's modality stems by the transfer's ``modality`` rule
            (:func:`~nnunet_mmpretrain.transfer.stem.merged_stem_parameters`).
    """

    def __init__(self, nnunet_net: nn.Module, template_grid: Optional[Sequence[int]],
                 strides: Sequence, proj_dim: int = 128, position_free: str = "random",
                 decoder: str = "skipfree", template_init="zeros", template_space: str = "data",
                 joint: bool = False, joint_stem: str = "mean"):
        super().__init__()
        self.key_to_encoder: str = nnunet_net.key_to_encoder
        self.key_to_stem: str = nnunet_net.key_to_stem
        self.keys_to_in_proj = tuple(getattr(nnunet_net, "keys_to_in_proj", ()))
        encoder = nnunet_net.encoder
        stem = _get(nnunet_net, self.key_to_stem)
        self.stems = nn.ModuleList([deepcopy(stem) for _ in MODALITIES])
        # the stem's slot becomes an identity wherever key_to_stem puts it (inside the encoder, or
        # beside it: then the encoder already takes the stem's output)
        _set(nnunet_net, self.key_to_stem, nn.Identity())
        if decoder not in ("skipfree", "hypercolumn"):
            raise ValueError(f"decoder must be 'skipfree' or 'hypercolumn', got {decoder!r}")
        if joint and decoder != "hypercolumn":
            raise ValueError("the joint view needs decoder='hypercolumn'")
        if joint_stem not in ("mean", "downstream"):
            raise ValueError(f"joint_stem must be 'mean' or 'downstream', got {joint_stem!r}")
        self.joint_stem = joint_stem
        prefix = self.key_to_stem + "."   # the stem's input-projection weights, named inside one stem
        self._in_proj = in_proj_weight_keys([k[len(prefix):] for k in self.keys_to_in_proj if k.startswith(prefix)],
                                             dict(stem.named_parameters()))
        encoder.return_skips = decoder == "hypercolumn"
        self.encoder = encoder
        bottleneck = int(encoder.output_channels[-1])
        self.decoder = ReconstructionDecoder(bottleneck, strides) if decoder == "skipfree" else \
            HypercolumnDecoder([int(c) for c in encoder.output_channels])
        self.proj = ProjectionHead(bottleneck, max(bottleneck, 128), proj_dim) if proj_dim else None
        self.joint_decoder = HypercolumnDecoder([int(c) for c in encoder.output_channels],
                                                out_channels=len(MODALITIES)) if joint else None
        self.templates = ModalityTemplates(template_grid, position_free=position_free, init=template_init,
                                           value_space=template_space) if template_grid else None

    def stem_forward(self, x: torch.Tensor, modality_idx: torch.Tensor) -> torch.Tensor:
        """x (B, 1, X, Y, Z), modality_idx (B,) vocabulary slots -> stem features (B, F0, X', Y', Z')."""
        out = None
        for m in torch.unique(modality_idx).tolist():
            sel = (modality_idx == m).nonzero(as_tuple=True)[0]
            y = self.stems[m](x[sel])
            if out is None:
                out = y.new_empty((x.shape[0],) + tuple(y.shape[1:]))
            out[sel] = y
        return out

    def joint_stem_forward(self, xs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """xs (J, K, X, Y, Z), idx (J, K) (the modalities first, -1 after) -> stem features
        (J, F0, X', Y', Z') of each sample's modalities mixed (``joint_stem``)."""
        J, K = idx.shape
        if self.joint_stem == "mean":
            s = self.stem_forward(xs.reshape(J * K, 1, *xs.shape[2:]), idx.reshape(-1).clamp(min=0))
            s = s.view(J, K, *s.shape[1:])
            w = (idx >= 0).to(s.dtype).view(J, K, *([1] * (s.dim() - 2)))
            return (s * w).sum(1) / w.sum(1).clamp(min=1.0)
        out = None
        for row in torch.unique(idx, dim=0):
            sel = (idx == row).all(1).nonzero(as_tuple=True)[0]
            mods = [int(m) for m in row.tolist() if m >= 0]
            params = merged_stem_parameters([dict(self.stems[m].named_parameters()) for m in mods], self._in_proj)
            y = _with_parameters(self.stems[mods[0]], params)(xs[sel, :len(mods)])
            if out is None:
                out = y.new_empty((J,) + tuple(y.shape[1:]))
            out[sel] = y
        return out

    def forward(self, x: torch.Tensor, modality_idx: torch.Tensor, joint=None):
        """x (B, 1, X, Y, Z) -> (reconstruction (B, 1, X, Y, Z), bottleneck (B, C, x, y, z),
        embedding (B, D) for the contrastive term).

        ``joint=(xs, idx)`` (xs (J, K, X, Y, Z): K modalities of each sample, masked and filled;
        idx (J, K) their vocabulary slots, -1 = no modality in that slot) adds the joint view: the
        sample's modalities mixed by :meth:`joint_stem_forward`, one pass through the
        encoder together with ``x``, and a fourth output (J, V, X, Y, Z): one reconstruction per
        vocabulary modality. Everything goes through this one call so that a DDP wrapper sees
        every parameter's use."""
        stem = self.stem_forward(x, modality_idx)
        if joint is not None:
            if self.joint_decoder is None:
                raise ValueError("this network was built without the joint view (joint=False)")
            stem = torch.cat([stem, self.joint_stem_forward(*joint)])
        out = self.encoder(stem)
        B = x.shape[0]
        single = [o[:B] for o in out] if isinstance(out, (list, tuple)) else out[:B]
        feat = single[-1] if isinstance(single, list) else single
        pooled = pool_features(feat)
        z = self.proj(pooled) if self.proj is not None else pooled
        if joint is None:
            return self.decoder(single), feat, z
        return self.decoder(single), feat, z, self.joint_decoder([o[B:] for o in out])
