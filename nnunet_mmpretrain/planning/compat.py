"""Whether pretraining and downstream plans can share encoder weights: configurations resolved
through ``inherits_from``, topology differences per stage, and the check that raises.

Plain dict functions with no back-imports: planning, transfer and training all use them.
"""
from __future__ import annotations

from copy import deepcopy
from typing import List

#: architecture arguments that decide whether encoder weights fit (input channels are the stem's
#: business and handled by stem adaptation)
TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage",
                 "n_conv_per_stage", "conv_op", "norm_op", "conv_bias")


class IncompatiblePlansError(ValueError):
    """Pretraining and downstream topologies cannot share encoder weights."""


def resolved_configuration(plans: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain merged (as nnU-Net's PlansManager does)."""
    confs = plans["configurations"]
    if name not in confs:
        raise KeyError(f"plans {plans.get('plans_name', '?')} have no configuration {name!r} "
                       f"(have {', '.join(confs)})")
    c = deepcopy(confs[name])
    if "inherits_from" in c:
        parent = resolved_configuration(plans, c.pop("inherits_from"))
        parent.update(c)
        c = parent
    return c


def topology_differences(pre_arch: dict, down_arch: dict) -> List[str]:
    """Human-readable differences between two plans ``architecture`` blocks, per stage where
    possible (e.g. ``"stage 2 stride: pretraining [2, 2, 2] vs downstream [2, 2, 1]"``)."""
    out = []
    if pre_arch["network_class_name"] != down_arch["network_class_name"]:
        out.append(f"network class: pretraining {pre_arch['network_class_name']} vs downstream "
                   f"{down_arch['network_class_name']}")
    a, b = pre_arch["arch_kwargs"], down_arch["arch_kwargs"]
    for k in TOPOLOGY_KEYS:
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            if len(va) != len(vb):
                out.append(f"{k}: {len(va)} stages in pretraining vs {len(vb)} downstream ({va} vs {vb})")
                continue
            for i, (x, y) in enumerate(zip(va, vb)):
                if x != y:
                    out.append(f"stage {i} {k}: pretraining {x} vs downstream {y}")
        else:
            out.append(f"{k}: pretraining {va} vs downstream {vb}")
    return out


def check_compatible(pre_arch: dict, down_arch: dict, what: str = "",
                     fix: str = "Fine-tune with the transferred plans (nnUNetv2_mmpretrain_transfer_plans without "
                                "--check-against), or pretrain with --like pointing at the downstream plans file.") -> None:
    """Raise IncompatiblePlansError listing every differing stage / entry, then ``fix``."""
    diffs = topology_differences(pre_arch, down_arch)
    if diffs:
        raise IncompatiblePlansError(
            f"the pretrained encoder does not fit {what or 'the downstream plans'}:\n  - " + "\n  - ".join(diffs) +
            "\n" + fix)
