"""Inject an encoder bundle into a network nnU-Net built from downstream plans.

Loading goes through ``network.encoder.load_state_dict(strict=True)``: the decoder keeps a
reference to the same encoder modules, so its ``decoder.encoder.*`` aliases see the new values
(writing a *full* state dict under ``encoder.*`` only would let the stale ``decoder.encoder.*``
copy win). The stem is adapted to the downstream channels
(:mod:`nnunet_mmpretrain.transfer.stem`); everything outside the encoder stays as nnU-Net
initialised it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from nnunet_mmpretrain.planning.compat import IncompatiblePlansError, check_compatible
from nnunet_mmpretrain.transfer.stem import adapt_stem


def unwrap(network):
    """The plain network under DDP (``.module``) and torch.compile (``._orig_mod``)."""
    net = getattr(network, "module", network)
    return getattr(net, "_orig_mod", net)


@dataclass
class InjectionReport:
    strategy: str
    loaded: List[str] = field(default_factory=list)      # encoder keys taken from the bundle
    adapted: List[str] = field(default_factory=list)     # stem keys built by the stem strategy
    random: List[str] = field(default_factory=list)      # keys left as initialised (decoder, heads)
    stem_summary: str = ""

    def summary(self) -> str:
        return (f"pretrained encoder injected ({self.strategy} stem): {len(self.loaded)} encoder tensors loaded, "
                f"{len(self.adapted)} stem tensors adapted, {len(self.random)} tensors left randomly initialised "
                f"(decoder and segmentation heads)\n{self.stem_summary}")

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "loaded": self.loaded, "adapted": self.adapted, "random": self.random,
                "stem": self.stem_summary}


def check_bundle_fits(bundle: dict, arch: dict, where: str = "the downstream plans") -> None:
    """Raise IncompatiblePlansError naming each differing stage when the bundle's topology differs."""
    pre = {"network_class_name": bundle["network_class_name"], "arch_kwargs": json.loads(bundle["arch_kwargs"])}
    check_compatible(pre, arch, where,
                     fix="Make downstream plans with the pretraining topology: nnUNetv2_mmpretrain_transfer_plans -s "
                         "CORPUS_ID -t DATASET_ID --preprocess, then train with -p mmPretrainPlans.")


def inject_bundle(network, bundle: dict, channel_modalities: Sequence[Optional[str]], strategy: str = "modality",
                  arch: Optional[dict] = None) -> InjectionReport:
    """Load ``bundle`` into ``network`` (an nnU-Net network, possibly wrapped) in place.

    ``channel_modalities``: canonical modality per input channel (an unknown one as its dataset.json
    name, or None).
    ``arch``: the configuration's ``architecture`` block, checked first when given.
    """
    net = unwrap(network)
    if arch is not None:
        check_bundle_fits(bundle, arch)
    key_to_stem = bundle["key_to_stem"]
    if getattr(net, "key_to_stem", key_to_stem) != key_to_stem:
        raise IncompatiblePlansError(f"the bundle's stem is {key_to_stem!r} but this network's is {net.key_to_stem!r}")
    full = net.state_dict()
    target_stem = {k: v for k, v in full.items() if k.startswith(key_to_stem + ".")}
    new_stem, stem_report = adapt_stem(bundle, target_stem, list(channel_modalities), strategy)
    enc = {**bundle["encoder"], **new_stem}
    mismatched = [f"{k}: bundle {tuple(v.shape)} vs network {tuple(full[k].shape)}"
                  for k, v in enc.items() if k in full and tuple(full[k].shape) != tuple(v.shape)]
    missing = sorted(k for k in full if k.startswith("encoder.") and k not in enc)
    unknown = sorted(k for k in enc if k not in full)
    if mismatched or missing or unknown:
        raise IncompatiblePlansError(
            "the encoder bundle does not match this network: " +
            "; ".join(mismatched[:5] + [f"missing in bundle: {k}" for k in missing[:5]] +
                      [f"not in network: {k}" for k in unknown[:5]]))
    with torch.no_grad():
        net.encoder.load_state_dict({k[len("encoder."):]: v for k, v in enc.items()}, strict=True)
    loaded_ids = {id(t) for t in net.encoder.state_dict(keep_vars=True).values()}
    rand = [k for k, v in net.state_dict(keep_vars=True).items() if id(v) not in loaded_ids]
    return InjectionReport(strategy=strategy, loaded=sorted(bundle["encoder"]), adapted=sorted(new_stem),
                           random=sorted(rand), stem_summary=stem_report.summary())
