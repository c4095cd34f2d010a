"""Stem adaptation: build a downstream network's C-channel stem from the pretrained
1-channel stems of an encoder bundle (docs/METHOD.md, "Input").

The pretraining encoder sees one modality at a time through a per-modality stem
(``bundle['stems'][modality]``, keys ``<key_to_stem>.*``, input projection weight
(F0, 1, k, k, k)). A downstream dataset has C channels, each carrying one modality
(dataset.json ``channel_names``). Three strategies turn the stems into the downstream stem
(input projection weight (F0, C, k, k, k)):

``modality`` (default)
    channel c's kernel slice ``W[:, c]`` is the input-projection kernel of the stem of the
    modality channel c carries, divided by C; the other stem parameters (conv bias, norm affine,
    further convs inside the stem) are the mean over the stems that supplied a kernel.
``repeat``
    the peers' (nnssl) repeat-and-average: the mean kernel over all trained stems, repeated over
    the C channels and divided by C; other parameters are the mean over all trained stems.
``reinit``
    the BrainMVP release: the stem stays as the downstream network initialised it.

Why divide by C: a conv sums over its input channels, so the pre-norm output of the adapted
input projection for an input (C, X, Y, Z) is ``sum_c (W_c / C) * x_c + b``: with one channel
present (the others zero) it is exactly ``(W_m * x) / C + b``, and with all channels present it
is the *mean* of the per-modality responses ``W_m * x_m`` (plus the bias), i.e. on the scale of
one pretrained stem seeing one modality, rather than C times that.

Only torch is used here (no nnU-Net imports); see ``nnunet_mmpretrain.transfer.bundle`` for the
bundle format.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from nnunet_mmpretrain.modalities import canonical, channels_to_modalities, is_known

#: the strategies :func:`adapt_stem` accepts
STRATEGIES: Tuple[str, ...] = ("modality", "repeat", "reinit")


@dataclass
class StemReport:
    """What :func:`adapt_stem` did.

    Attributes:
        strategy: one of :data:`STRATEGIES`.
        channels: one ``(channel index, canonical modality or None, source)`` per downstream
            channel; source e.g. ``'stem t1c'``, ``'mean of trained stems (unknown modality T1-IR)'``,
            ``'mean of trained stems (repeat)'``, ``'random init'``.
        keys_adapted: target state-dict keys written from the bundle (empty for ``reinit``).
        warnings: the warnings that were issued (also sent through :func:`warnings.warn`).
    """
    strategy: str
    channels: List[Tuple[int, Optional[str], str]] = field(default_factory=list)
    keys_adapted: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line per channel: ``channel 0 (t1): stem t1``."""
        return "\n".join(f"channel {i} ({m if m is not None else 'unknown'}): {src}"
                         for i, m, src in self.channels)


def channel_modalities_from_dataset_json(dataset_json: Union[Mapping, str],
                                         keep_unknown: bool = False) -> List[Optional[str]]:
    """Modality carried by each channel of an nnU-Net dataset, in channel order.

    Args:
        dataset_json: the dataset.json dict, or its path. ``channel_names`` is used (nnU-Net v1's
            ``modality`` as a fallback).
        keep_unknown: keep a name the vocabulary does not know as written (e.g. ``'T1-IR'``) so
            that :func:`adapt_stem` can name it in its report; default: ``None``.

    Returns:
        list of canonical modality names (``'t1'``, ``'t1c'``, ...), ``None`` (or the raw name
        with ``keep_unknown``) for names outside the vocabulary.
    """
    if isinstance(dataset_json, (str, os.PathLike)):
        with open(dataset_json) as f:
            dataset_json = json.load(f)
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(names, Mapping) or not names:
        raise ValueError("dataset.json has no 'channel_names' entry ({\"0\": \"T1\", ...})")
    out = channels_to_modalities(dict(names))
    if keep_unknown:
        raw = [names[k] for k in sorted(names, key=lambda x: int(x))]
        out = [m if m is not None else str(r) for m, r in zip(out, raw)]
    return out


# ---------------------------------------------------------------------------- helpers
def _in_proj_keys(bundle: Mapping, target_state: Mapping[str, torch.Tensor],
                  stem: Mapping[str, torch.Tensor]) -> List[str]:
    """Weight keys (all aliases) of the input projection inside the stem."""
    listed = [f"{p}.weight" for p in bundle.get("keys_to_in_proj") or ()]
    keys = [k for k in listed if k in target_state]
    if keys:
        return keys
    # older bundles without keys_to_in_proj: every conv weight that takes 1 channel in the bundle
    keys = [k for k, v in stem.items() if k.endswith(".weight") and v.ndim >= 3 and v.shape[1] == 1
            and k in target_state]
    if not keys:
        raise ValueError(f"cannot find the stem's input projection: keys_to_in_proj "
                         f"{list(bundle.get('keys_to_in_proj') or ())} name no '.weight' key of the "
                         f"target stem ({sorted(target_state)[:4]} ...)")
    return keys


def _check_stem(name: str, stem: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor],
                in_proj: Sequence[str]) -> None:
    missing = sorted(set(target_state) - set(stem))
    extra = sorted(set(stem) - set(target_state))
    if missing or extra:
        raise ValueError(f"bundle stem '{name}' does not fit the target stem: keys missing from the bundle "
                         f"{missing[:5]}, keys the target lacks {extra[:5]} (different architecture?)")
    for k, t in target_state.items():
        s = stem[k]
        if k in in_proj:
            ok = (s.ndim == t.ndim and s.shape[1] == 1 and s.shape[0] == t.shape[0]
                  and s.shape[2:] == t.shape[2:])
            want = f"(F0, 1, *kernel) = {(t.shape[0], 1) + tuple(t.shape[2:])}"
        else:
            ok = s.shape == t.shape
            want = str(tuple(t.shape))
        if not ok:
            raise ValueError(f"stem shape mismatch for key '{k}': bundle stem '{name}' has "
                             f"{tuple(s.shape)}, target has {tuple(t.shape)} (expected bundle shape "
                             f"{want}); the downstream plans must use the pretraining stem's features "
                             f"and kernel size")
    ref = stem[in_proj[0]]
    for k in in_proj[1:]:
        if not torch.equal(stem[k], ref):
            raise ValueError(f"bundle stem '{name}': aliases '{in_proj[0]}' and '{k}' of the input "
                             f"projection differ; the bundle is inconsistent, re-export it")


def _mean(stems: Sequence[Mapping[str, torch.Tensor]], key: str, like: torch.Tensor) -> torch.Tensor:
    vals = [s[key].to(device=like.device, dtype=like.dtype) for s in stems]
    if len(vals) == 1:
        return vals[0].clone()
    return torch.stack(vals).mean(0)


def in_proj_weight_keys(keys_to_in_proj, stem: Mapping[str, torch.Tensor]) -> List[str]:
    """The input projection's weight keys of one 1-channel stem (``stem``: name -> tensor): those
    ``keys_to_in_proj`` names (+ ``.weight``) the stem has, else every conv weight taking 1 channel."""
    listed = [f"{k}.weight" for k in keys_to_in_proj if f"{k}.weight" in stem]
    return listed or [k for k, v in stem.items() if k.endswith(".weight") and v.ndim >= 3 and v.shape[1] == 1]


#: mean per-filter cosine from which two modality stems count as nearly the same input filter
SAME_FILTER_COSINE = 0.9


def stem_kernel_cosines(bundle: Mapping) -> Dict[str, float]:
    """``{'a-b': c}`` for every pair of the bundle's trained modality stems: c = the mean over the
    stem's F0 filters of the cosine between the two input kernels (``keys_to_in_proj`` weight,
    (F0, 1, *kernel), one vector per filter). 1.0 = the same filter: the ``modality`` transfer then
    feeds the encoder (a multiple of) the average of those channels.

    Example: ``stem_kernel_cosines(load_bundle(folder))`` -> ``{'t1-t1c': 0.99, ...}``."""
    stems = bundle.get("stems") or {}
    mods = [m for m in bundle.get("modalities_trained") or () if m in stems]
    if len(mods) < 2:
        return {}
    keys = in_proj_weight_keys(bundle.get("keys_to_in_proj") or (), stems[mods[0]])
    if not keys:
        return {}
    key = keys[0]
    w = {m: stems[m][key].float().flatten(1) for m in mods}
    return {f"{a}-{b}": float(torch.nn.functional.cosine_similarity(w[a], w[b], dim=1).mean())
            for i, a in enumerate(mods) for b in mods[i + 1:]}


def merged_stem_parameters(stems: Sequence[Mapping[str, torch.Tensor]], in_proj: Sequence[str]
                           ) -> Dict[str, torch.Tensor]:
    """The ``modality`` rule of :func:`adapt_stem` as a differentiable function: the parameters of
    one stem for K channels carrying the modalities of ``stems`` (K parameter dicts of 1-channel
    stems, same keys), in that channel order. Each key in ``in_proj`` (the input projection's
    weight, (F0, 1, *kernel) per stem) becomes the K kernels side by side divided by K,
    (F0, K, *kernel); every other parameter is the mean over the K stems. Used by the pretraining
    network's joint view to feed the encoder exactly what the transferred stem will feed it."""
    K = len(stems)
    out = {}
    for k in stems[0]:
        if k in in_proj:
            out[k] = torch.cat([s[k] for s in stems], 1) / K
        else:
            out[k] = stems[0][k] if K == 1 else torch.stack([s[k] for s in stems]).mean(0)
    return out


def _alias_groups(target_state: Mapping[str, torch.Tensor]) -> List[List[str]]:
    """Keys of the target that share one tensor (same storage, offset, shape)."""
    groups: Dict[tuple, List[str]] = {}
    for k, v in target_state.items():
        try:
            ptr = v.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):   # e.g. meta tensors
            ptr = id(v)
        groups.setdefault((ptr, v.storage_offset(), tuple(v.shape), tuple(v.stride())), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def _warn(report: StemReport, msg: str) -> None:
    report.warnings.append(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------- main entry
def adapt_stem(bundle: Mapping, target_state: Mapping[str, torch.Tensor],
               channel_modalities: Sequence[Optional[str]], strategy: str = "modality"
               ) -> Tuple[Dict[str, torch.Tensor], StemReport]:
    """Adapt the bundle's 1-channel per-modality stems to a C-channel downstream stem.

    Args:
        bundle: dict of :func:`nnunet_mmpretrain.transfer.bundle.load_bundle` (uses ``stems``,
            ``key_to_stem``, ``keys_to_in_proj``, ``modalities_trained``).
        target_state: the downstream network's state-dict entries under ``key_to_stem``
            (``{k: v for k, v in net.state_dict().items() if k.startswith(key_to_stem + '.')}``);
            the input projection weight has shape (F0, C, *kernel), e.g. (F0, C, 3, 3, 3).
        channel_modalities: length C, the modality each downstream channel carries (any alias;
            ``None`` or a name outside the vocabulary = unknown), e.g. from
            :func:`channel_modalities_from_dataset_json`.
        strategy: ``'modality'`` (default), ``'repeat'`` or ``'reinit'`` (module docstring). With
            ``'modality'``, kernel slice ``W[:, c]`` (F0, *kernel) is the input-projection kernel
            of channel c's modality stem divided by C, so that the summed pre-norm activation
            keeps the scale a stem had with one channel (one channel alone gives exactly
            ``(W_m * x) / C + b``); a channel whose modality is unknown or not in
            ``modalities_trained`` gets the mean kernel over the trained stems (divided by C) and a
            warning naming the channel. The remaining parameters are the mean over the stems
            that supplied a channel kernel (all trained stems when none did).

    Returns:
        ``(new_stem_state, report)``: a dict with exactly the keys and shapes of
        ``target_state`` (new tensors on the target's device and dtype; every alias key of the
        input projection holds the same values), and a :class:`StemReport`.

    Raises:
        ValueError: unknown strategy (listing the valid ones); C != len(channel_modalities);
            a bundle stem whose keys or shapes do not fit the target (naming the key and both
            shapes); a bundle without trained stems.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown stem strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if not target_state:
        raise ValueError("target_state is empty: pass the downstream state-dict entries under key_to_stem")
    key_to_stem = bundle.get("key_to_stem", "")
    outside = [k for k in target_state if key_to_stem and not k.startswith(key_to_stem + ".")]
    if outside:
        raise ValueError(f"target_state keys outside the stem '{key_to_stem}': {outside[:5]}")
    C = len(channel_modalities)
    if C < 1:
        raise ValueError("channel_modalities is empty")
    report = StemReport(strategy=strategy)

    if strategy == "reinit":
        report.channels = [(c, canonical(m) if m is not None and is_known(m) else None, "random init")
                           for c, m in enumerate(channel_modalities)]
        return {k: v.detach().clone() for k, v in target_state.items()}, report

    stems_all = bundle.get("stems") or {}
    trained = [canonical(m) for m in bundle.get("modalities_trained") or ()]
    if not trained:
        raise ValueError("the bundle has no trained modality stems (modalities_trained is empty)")
    absent = [m for m in trained if m not in stems_all]
    if absent:
        raise ValueError(f"the bundle lists {absent} as trained but holds no stem for them "
                         f"(stems: {sorted(stems_all)})")
    in_proj = _in_proj_keys(bundle, target_state, stems_all[trained[0]])
    for k in in_proj:
        if target_state[k].shape[1] != C:
            raise ValueError(f"target stem key '{k}' has {target_state[k].shape[1]} input channels "
                             f"(shape {tuple(target_state[k].shape)}) but channel_modalities lists {C}: "
                             f"{list(channel_modalities)}")
    for m in trained:
        _check_stem(m, stems_all[m], target_state, in_proj)

    like = target_state[in_proj[0]]
    trained_stems = [stems_all[m] for m in trained]
    mean_kernel = _mean(trained_stems, in_proj[0], like)[:, 0]          # (F0, *kernel)

    # per-channel kernel source
    sources: List[Optional[str]] = []
    for c, name in enumerate(channel_modalities):
        if name is not None and is_known(name) and canonical(name) in trained and strategy == "modality":
            m = canonical(name)
            sources.append(m)
            report.channels.append((c, m, f"stem {m}"))
            continue
        sources.append(None)
        mod = canonical(name) if name is not None and is_known(name) else None
        if strategy == "repeat":
            report.channels.append((c, mod, "mean of trained stems (repeat)"))
            continue
        if name is None:
            why = "unknown modality"
        elif mod is None:
            why = f"unknown modality {name}"
        else:
            why = f"modality {mod} not pretrained"
        report.channels.append((c, mod, f"mean of trained stems ({why})"))
        _warn(report, f"stem adaptation: channel {c} ({name if name is not None else 'no modality name'}): "
                      f"{why}; it gets the mean input kernel of the trained stems {trained}")

    used = sorted({s for s in sources if s is not None}, key=trained.index)
    other_from = [stems_all[m] for m in used] if used else trained_stems

    new: Dict[str, torch.Tensor] = {}
    weight = torch.empty_like(like)
    for c, src in enumerate(sources):
        k = stems_all[src][in_proj[0]].to(like.device, like.dtype)[:, 0] if src is not None else mean_kernel
        weight[:, c] = k / C
    for k in in_proj:
        new[k] = weight.clone()
    for k, t in target_state.items():
        if k not in new:
            new[k] = _mean(other_from, k, t)
    for group in _alias_groups(target_state):   # keys sharing one tensor in the target: one value
        for k in group[1:]:
            new[k] = new[group[0]].clone()
    report.keys_adapted = sorted(new)
    return {k: new[k] for k in target_state}, report
