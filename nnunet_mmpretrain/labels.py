"""Label conventions of the public brain-MRI releases, per dataset and year, in one registry.

Every brain-tumour dataset this package writes uses one convention, the BraTS-2023 one (the
*house* convention, :data:`BRATS_LABELS`): ``1`` necrosis / non-enhancing tumour core, ``2``
edema (surrounding non-enhancing FLAIR hyperintensity), ``3`` enhancing tumour, with nnU-Net
regions whole tumour (1, 2, 3), tumour core (1, 3), enhancing tumour (3) and
``regions_class_order`` [2, 1, 3]. A :class:`LabelConvention` says what a release's label values
mean and how they are written:

=====================  ==========================================  =========================
release                values as shipped                           written as
=====================  ==========================================  =========================
BraTS 2018-2021,       1 necrosis/NCR(+NET), 2 edema, 4 enhancing  1, 2, 3 (4 -> 3)
UPENN-GBM
BraTS 2023 (all)       1 NETC, 2 SNFH, 3 ET                        unchanged
BraTS 2024 GLI         1 NETC, 2 SNFH, 3 ET, 4 resection cavity    unchanged (RC its own
                                                                   class), or RC -> 0 / ignore
BraTS 2024 MET, SSA    1 NETC, 2 SNFH, 3 ET (as 2023)              unchanged
MSD Task01             1 edema, 2 non-enhancing, 3 enhancing       1 -> 2, 2 -> 1, 3 -> 3
ISLES 2022             1 lesion                                    unchanged
VS-seg                 1 vestibular schwannoma                     unchanged
MRBrainS13             1-8 brain structures                        unchanged, or the 3
                                                                   evaluated tissue classes
=====================  ==========================================  =========================

Converters read their mapping, dataset.json labels and regions from here
(:func:`convention`); ``hints`` explain values a release must not hold (a BraTS 2023 file with a
4 is a BraTS 2024 GLI file: the hint says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

#: the house convention (BraTS 2023) as nnU-Net labels with regions
BRATS_LABELS: Dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                                "enhancing tumor": [3]}
BRATS_REGIONS_CLASS_ORDER: List[int] = [2, 1, 3]
#: release value -> house value, for releases that use 4 for enhancing tumour (BraTS 2018-2021)
BRATS_421_MAP: Dict[int, int] = {0: 0, 1: 1, 2: 2, 4: 3}
#: BraTS 2024 GLI resection cavity (RC): how it is written (``--resection-cavity``)
RESECTION_CAVITY_MODES = ("keep", "background", "ignore")


class UnknownConventionError(KeyError):
    """No convention is registered under that key."""


@dataclass(frozen=True)
class LabelConvention:
    """How one release's label values are read and written.

    ``release``: value -> meaning as the release documents it; ``mapping``: release value ->
    written value (every value a file may hold; others make the case skip); ``labels`` /
    ``regions_class_order``: the dataset.json entries; ``evaluation_regions``: the regions the
    challenge evaluates, in written values (stated in dataset.json); ``hints``: release value ->
    an explanation appended to the reason when a file holds that value although the convention
    does not define it."""
    key: str
    dataset: str
    release: Mapping[int, str]
    mapping: Mapping[int, int]
    labels: Mapping[str, Any]
    regions_class_order: Optional[List[int]] = None
    evaluation_regions: Mapping[str, List[int]] = field(default_factory=dict)
    hints: Mapping[int, str] = field(default_factory=dict)

    def dataset_json(self) -> Dict[str, Any]:
        """``labels`` (and ``regions_class_order``) ready for dataset.json (fresh copies)."""
        out: Dict[str, Any] = {"labels": {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                          for k, v in self.labels.items()}}
        if self.regions_class_order is not None:
            out["regions_class_order"] = list(self.regions_class_order)
        return out

    def mapping_json(self) -> Dict[str, int]:
        return {str(k): int(v) for k, v in sorted(self.mapping.items())}


_BRATS_EVAL = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
_HINT_2024_RC = ("4 is the resection cavity of BraTS 2024 GLI: this is a BraTS 2024 release, "
                 "convert it with the brats2024 kind")


def _brats421(key: str, dataset: str) -> LabelConvention:
    return LabelConvention(key, dataset, {1: "necrotic / non-enhancing tumour core (NCR/NET)",
                                          2: "peritumoral edema (ED)", 4: "GD-enhancing tumour (ET)"},
                           BRATS_421_MAP, BRATS_LABELS, BRATS_REGIONS_CLASS_ORDER, _BRATS_EVAL)


def _brats2023(key: str, dataset: str, hints: Optional[Dict[int, str]] = None) -> LabelConvention:
    return LabelConvention(key, dataset, {1: "non-enhancing tumour core (NETC)",
                                          2: "surrounding non-enhancing FLAIR hyperintensity (SNFH)",
                                          3: "enhancing tumour (ET)"},
                           {0: 0, 1: 1, 2: 2, 3: 3}, BRATS_LABELS, BRATS_REGIONS_CLASS_ORDER,
                           _BRATS_EVAL, hints or {})


def brats2024_gli(resection_cavity: str = "keep") -> LabelConvention:
    """BraTS 2024 adult glioma, post-treatment: 1 NETC, 2 SNFH, 3 ET, 4 resection cavity (RC).

    ``resection_cavity``: 'keep' (default) writes RC as its own class 4 with its own nnU-Net
    region; 'background' writes it as 0; 'ignore' writes it as nnU-Net's ignore label (4: not
    trained on, not evaluated)."""
    if resection_cavity not in RESECTION_CAVITY_MODES:
        raise ValueError(f"resection cavity mode must be one of {', '.join(RESECTION_CAVITY_MODES)}, "
                         f"got {resection_cavity!r}")
    release = {1: "non-enhancing tumour core (NETC)",
               2: "surrounding non-enhancing FLAIR hyperintensity (SNFH)",
               3: "enhancing tissue (ET)", 4: "resection cavity (RC)"}
    if resection_cavity == "keep":
        labels = dict(BRATS_LABELS, **{"resection cavity": [4]})
        return LabelConvention("brats2024-gli", "BraTS 2024 GLI", release, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
                               labels, BRATS_REGIONS_CLASS_ORDER + [4],
                               dict(_BRATS_EVAL, NETC=[1], SNFH=[2], RC=[4]))
    to = 0 if resection_cavity == "background" else 4
    labels = dict(BRATS_LABELS, **({"ignore": 4} if resection_cavity == "ignore" else {}))
    return LabelConvention(f"brats2024-gli-rc-{resection_cavity}", "BraTS 2024 GLI", release,
                           {0: 0, 1: 1, 2: 2, 3: 3, 4: to}, labels, BRATS_REGIONS_CLASS_ORDER,
                           dict(_BRATS_EVAL, NETC=[1], SNFH=[2]))


MRBRAINS13_STRUCTURES = {1: "cortical gray matter", 2: "basal ganglia", 3: "white matter",
                         4: "white matter lesions", 5: "extracerebral CSF", 6: "ventricles",
                         7: "cerebellum", 8: "brainstem"}

_REGISTRY: Dict[str, LabelConvention] = {}


def register(conv: LabelConvention, *aliases: str) -> LabelConvention:
    for k in (conv.key,) + aliases:
        _REGISTRY[k] = conv
    return conv


for _year in (2018, 2019, 2020, 2021):
    register(_brats421(f"brats{_year}", f"BraTS {_year}"))
register(_brats421("upenn-gbm", "UPENN-GBM"))
register(_brats2023("brats2023", "BraTS 2023", {4: _HINT_2024_RC}))
register(brats2024_gli("keep"), "brats2024-gli-rc-keep")
register(brats2024_gli("background"))
register(brats2024_gli("ignore"))
register(_brats2023("brats2024-met", "BraTS 2024 MET"))
register(_brats2023("brats2024-ssa", "BraTS 2024 SSA"))
register(LabelConvention(
    "msd-brain", "MSD Task01_BrainTumour",
    {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}, {0: 0, 1: 2, 2: 1, 3: 3},
    BRATS_LABELS, BRATS_REGIONS_CLASS_ORDER, _BRATS_EVAL))
register(LabelConvention("isles2022", "ISLES 2022", {1: "stroke lesion"}, {0: 0, 1: 1},
                         {"background": 0, "lesion": 1}))
register(LabelConvention("vsseg", "VS-seg", {1: "vestibular schwannoma"}, {0: 0, 1: 1},
                         {"background": 0, "vestibular schwannoma": 1}))
register(LabelConvention("mrbrains13-full", "MRBrainS13", MRBRAINS13_STRUCTURES, {i: i for i in range(9)},
                         dict({"background": 0}, **{v: k for k, v in MRBRAINS13_STRUCTURES.items()})))
register(LabelConvention("mrbrains13-tissue", "MRBrainS13", MRBRAINS13_STRUCTURES,
                         {0: 0, 1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 4, 8: 4},
                         {"background": 0, "CSF": 1, "gray matter": 2, "white matter": 3, "ignore": 4}))


def convention(key: str) -> LabelConvention:
    """The convention registered under ``key`` (e.g. 'brats2021', 'brats2024-gli', 'msd-brain')."""
    try:
        return _REGISTRY[key]
    except KeyError:
        raise UnknownConventionError(f"no label convention {key!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def conventions() -> Dict[str, LabelConvention]:
    """All registered conventions by key (aliases included)."""
    return dict(_REGISTRY)


__all__ = ["BRATS_LABELS", "BRATS_REGIONS_CLASS_ORDER", "BRATS_421_MAP", "RESECTION_CAVITY_MODES",
           "LabelConvention", "UnknownConventionError", "brats2024_gli", "convention", "conventions",
           "register"]
