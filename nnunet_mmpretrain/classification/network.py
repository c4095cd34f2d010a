"""The classifier network: the encoder of the plans' own segmentation network, global average
pooling and a small head.

Shapes: input ``x`` (B, C_in, X, Y, Z), the whole preprocessed case cropped or padded to the
planned input size; features (B, F) after pooling, F = channels of the bottleneck (the last
encoder stage, default) or of the last decoder stage (``features="decoder"``, full resolution);
output logits (B, K).

The encoder keeps the segmentation network's module names (``encoder.*``), ``key_to_stem`` and
``keys_to_in_proj``, so an encoder bundle is injected exactly as for segmentation
(:func:`nnunet_mmpretrain.transfer.inject.inject_bundle`, same stem strategies).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

FEATURES = ("bottleneck", "decoder")


class ClassificationHead(nn.Module):
    """(B, F, X, Y, Z) -> global average pool -> dropout -> [Linear F->H, ReLU, dropout] -> Linear -> (B, K)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, hidden: int = 0):
        super().__init__()
        layers: List[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden > 0:
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            in_features = hidden
        layers.append(nn.Linear(in_features, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats.flatten(2).mean(2))


class EncoderClassifier(nn.Module):
    """Logits (B, K) for input (B, C_in, X, Y, Z); built from an nnU-Net segmentation network."""

    def __init__(self, seg_net: nn.Module, num_classes: int, features: str = "bottleneck", dropout: float = 0.0,
                 hidden: int = 0):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.features = features
        self.encoder = seg_net.encoder
        self.encoder.return_skips = True
        for attr in ("key_to_stem", "keys_to_in_proj"):
            if hasattr(seg_net, attr):
                setattr(self, attr, getattr(seg_net, attr))
        chans = list(self.encoder.output_channels)
        if features == "decoder":
            self.decoder = seg_net.decoder
            self.decoder.seg_layers = nn.ModuleList()    # no segmentation output: only its features
            n_feat = chans[0]
        else:
            n_feat = chans[-1]
        self.head = ClassificationHead(n_feat, num_classes, dropout, hidden)

    def _decoder_features(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last decoder stage's output (B, F0, X, Y, Z), as UNetDecoder.forward computes it."""
        x = skips[-1]
        for s in range(len(self.decoder.stages)):
            x = self.decoder.transpconvs[s](x)
            x = self.decoder.stages[s](torch.cat((x, skips[-(s + 2)]), 1))
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        return self._decoder_features(skips) if self.features == "decoder" else skips[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_classifier(configuration_manager, num_input_channels: int, num_classes: int, features: str = "bottleneck",
                     dropout: float = 0.0, hidden: int = 0) -> EncoderClassifier:
    """The plans' network (nnU-Net's own builder, nnU-Net's initialisation), its encoder kept."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    cm = configuration_manager
    seg = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, num_input_channels, 2, allow_init=True,
                                 deep_supervision=False)
    return EncoderClassifier(seg, num_classes, features, dropout, hidden)


def total_stride(configuration_manager) -> List[int]:
    """Product of the encoder strides per axis (the input must be a multiple for decoder features)."""
    strides = configuration_manager.network_arch_init_kwargs.get("strides") or configuration_manager.pool_op_kernel_sizes
    return [int(v) for v in np.prod(np.array(strides, dtype=int), axis=0)]


def plan_input_size(case_shapes: Sequence[Sequence[int]], stride: Sequence[int]) -> List[int]:
    """Whole-case input size: the per-axis maximum of the preprocessed case shapes (no training
    case is cropped), rounded up to a multiple of ``stride``."""
    mx = np.max(np.array([list(s) for s in case_shapes], dtype=int), axis=0)
    return [int(math.ceil(m / st) * st) for m, st in zip(mx, stride)]
