"""Canonical modality vocabulary shared by every stage of the plugin.

The vocabulary follows BrainMVP's released code (docs/METHOD.md): eight slots, in this
order, each with the aliases found in the public releases (BraTS 2021/2023, IXI, UCSF-PDGM,
ISLES 2022, MSD). The slot index is what the pretraining templates and the per-modality stems are
indexed by, so the order is part of the checkpoint format and must never change; new modalities
are appended.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

#: canonical names, in slot order (the index is stored in checkpoints)
MODALITIES: Tuple[str, ...] = ("flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc")

#: how a canonical modality is written in an nnU-Net dataset.json ``channel_names`` entry
DISPLAY_NAMES: Dict[str, str] = {
    "flair": "FLAIR", "t1": "T1", "t1c": "T1ce", "t2": "T2", "mra": "MRA", "pd": "PD",
    "dwi": "DWI", "adc": "ADC",
}

#: aliases (after lower-casing and removing spaces, '-', '_' and '.') -> canonical name
_ALIASES: Dict[str, str] = {
    # FLAIR
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2wflair": "flair", "fl": "flair",
    # T1 (native)
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "t1pre": "t1", "mprage": "t1",
    # T1 post contrast
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1wce": "t1c", "t1contrast": "t1c",
    "t1cgd": "t1c",
    # T2
    "t2": "t2", "t2w": "t2",
    # others
    "mra": "mra", "tof": "mra", "pd": "pd", "pdw": "pd", "dwi": "dwi", "dw": "dwi", "adc": "adc",
}


class UnknownModalityError(ValueError):
    """A modality name that the vocabulary does not know."""


def _key(name: str) -> str:
    return re.sub(r"[\s\-_.]", "", str(name).strip().lower())


def is_known(name: str) -> bool:
    """True when ``name`` (any alias, any case) maps to a canonical modality."""
    return _key(name) in _ALIASES


def canonical(name: str, where: str = "") -> str:
    """Map an alias such as ``'T1ce'``, ``'t2f'`` or ``'T2w'`` to its canonical name.

    Raises UnknownModalityError naming ``where`` (a file or dataset) and listing the known names.
    """
    key = _key(name)
    if key in _ALIASES:
        return _ALIASES[key]
    loc = f" in {where}" if where else ""
    raise UnknownModalityError(
        f"unknown modality '{name}'{loc}. Known modalities: {', '.join(MODALITIES)} "
        f"(aliases: {', '.join(sorted(set(_ALIASES) - set(MODALITIES)))}). "
        f"Rename it to one of these.")


def index(name: str) -> int:
    """Slot index of a modality (alias accepted) in :data:`MODALITIES`."""
    return MODALITIES.index(canonical(name))


def display_name(name: str) -> str:
    """Channel name as written in nnU-Net's dataset.json (``'t1c'`` -> ``'T1ce'``)."""
    return DISPLAY_NAMES[canonical(name)]


def channels_to_modalities(channel_names: Dict[str, str], strict: bool = False) -> List[str | None]:
    """Map a dataset.json ``channel_names`` dict ({"0": "T1", ...}) to canonical names in channel
    order. Unknown names give ``None`` (or raise with ``strict=True``)."""
    out: List[str | None] = []
    for k in sorted(channel_names, key=lambda x: int(x)):
        n = channel_names[k]
        if is_known(n):
            out.append(canonical(n))
        elif strict:
            canonical(n, where=f"dataset.json channel {k}")
        else:
            out.append(None)
    return out


def sort_modalities(names: Iterable[str]) -> List[str]:
    """Canonical names in vocabulary (slot) order, duplicates removed."""
    can = {canonical(n) for n in names}
    return [m for m in MODALITIES if m in can]
