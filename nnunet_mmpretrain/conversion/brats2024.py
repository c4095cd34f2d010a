"""BraTS 2024 (GLI post-treatment, MET, SSA) -> nnU-Net raw dataset.

Same file names as BraTS 2023 (:mod:`~nnunet_mmpretrain.conversion.brats2023`)::

    RELEASE_ROOT/.../BraTS-GLI-02000-000/BraTS-GLI-02000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz

Label conventions per sub-challenge (:mod:`nnunet_mmpretrain.labels`):

* **GLI** (adult glioma, post-treatment): 1 non-enhancing tumour core (NETC), 2 surrounding
  non-enhancing FLAIR hyperintensity (SNFH), 3 enhancing tissue (ET) -- the house convention --
  plus **4 resection cavity (RC)**. ``resection_cavity='keep'`` (default) writes RC as its own
  class 4 with its own nnU-Net region: labels whole tumour [1, 2, 3], tumour core [1, 3],
  enhancing tumour [3], resection cavity [4], ``regions_class_order`` [2, 1, 3, 4];
  ``'background'`` writes RC as 0 (the house dataset.json form), ``'ignore'`` as nnU-Net's
  ignore label 4 (neither trained on nor evaluated). The challenge's evaluation regions
  (ET, TC, WT, NETC, SNFH, RC in written values) are stated in dataset.json
  (``evaluation_regions``).
* **MET**, **SSA**: 1 NETC, 2 SNFH, 3 ET, as in 2023 (a 4 skips the case with a reason).
* **PED** relabelled its classes in 2024 (enhancing, non-enhancing, cystic component, edema);
  that convention is not in the registry and the sub-challenge is refused. MEN-RT ships a
  T1c and a GTV mask under other names and is not read.

A tree recognised as BraTS 2023 (folder names) is refused, pointing to :mod:`brats2023`. Patients
and timepoints (``BraTS-GLI-00005-100``, ``-101``: patient ``BraTS-GLI-00005``) are recorded as in
2023, with patient-grouped folds (``splits_final.json``).

Default dataset ids: GLI 534, MET 535, SSA 536 (names ``BraTS2024_<SUBSET>``). Channels: 0 T1
(t1n), 1 T1ce (t1c), 2 T2 (t2w), 3 FLAIR (t2f).
"""
from __future__ import annotations

from typing import Optional

from nnunet_mmpretrain import labels
from nnunet_mmpretrain.conversion.brats2023 import build_specs, find_cases, pick_subset, release_year
from nnunet_mmpretrain.conversion.common import (
    BRATS_CHANNELS, SEGMENTATION, ConversionError, Plan, Release, Setting, display)

KIND = "BraTS 2024"
DEFAULT_IDS = {"GLI": 534, "MET": 535, "SSA": 536}
DESCRIPTIONS = {"GLI": "adult glioma, post-treatment", "MET": "brain metastases",
                "SSA": "glioma, Sub-Saharan Africa"}
REFUSED = {
    "PED": "BraTS 2024 PED relabelled its classes (enhancing, non-enhancing, cystic component, edema) and that "
           "convention is not in the label registry: not converted (BraTS 2023 PED: use brats2023)",
    "MEN": "BraTS 2024 has no MEN sub-challenge in this layout (MEN-RT ships T1c + GTV only): BraTS-MEN-* "
           "folders are the 2023 release, convert them with brats2023",
}
RC_WORDS = {"keep": "resection cavity kept as its own class 4", "background": "resection cavity written as 0",
            "ignore": "resection cavity written as nnU-Net's ignore label 4"}


def convention(subset: str, resection_cavity: str = "keep") -> labels.LabelConvention:
    """The label convention of a sub-challenge (GLI: with the resection cavity mode)."""
    if subset in REFUSED:
        raise ConversionError(REFUSED[subset] + ".")
    if subset == "GLI":
        if resection_cavity not in labels.RESECTION_CAVITY_MODES:
            raise ConversionError(f"resection cavity mode must be one of "
                                  f"{', '.join(labels.RESECTION_CAVITY_MODES)}, got {resection_cavity!r}.")
        return labels.brats2024_gli(resection_cavity)
    if resection_cavity != "keep":
        raise ConversionError(f"--resection-cavity applies to BraTS 2024 GLI only (label 4); {subset} has none.")
    try:
        return labels.convention(f"brats2024-{subset.lower()}")
    except labels.UnknownConventionError:
        raise ConversionError(f"no BraTS 2024 label convention for sub-challenge {subset} in the registry "
                              f"(known: GLI, MET, SSA).") from None


def plan(root: str, subset: Optional[str] = None, resection_cavity: str = "keep") -> Plan:
    """Discovery and dataset.json content of one sub-challenge of a BraTS 2024 release."""
    found = find_cases(root)
    sub = pick_subset(found, subset, root, KIND)
    year, why = release_year(root, found[sub])
    if year == 2023:
        raise ConversionError(f"{root} is a BraTS 2023 release ({why}): convert it with "
                              f"'nnUNetv2_mmpretrain_convert brats2023' instead of brats2024.")
    conv = convention(sub, resection_cavity)
    rc = RC_WORDS[resection_cavity] if sub == "GLI" else ""
    return Plan(
        build_specs(found[sub], conv), title=f"{KIND} {sub}", dataset_id=DEFAULT_IDS[sub], name=f"BraTS2024_{sub}",
        empty=f"no {KIND} {sub} cases under {root}.", channels=[display(m) for m in BRATS_CHANNELS], labels=conv,
        description=f"BraTS 2024 {sub} ({DESCRIPTIONS[sub]}). Labels: 1 non-enhancing tumour core, 2 "
                    f"surrounding FLAIR hyperintensity / edema, 3 enhancing tissue" + (f"; {rc}" if rc else "") + ".",
        extra={"evaluation_regions": {k: list(v) for k, v in conv.evaluation_regions.items()}},
        conversion={"subset": sub, "release": "BraTS 2024" + (f" ({why})" if why else ""),
                    **({"resection_cavity": resection_cavity} if sub == "GLI" else {})})


RELEASE = Release(
    kind="brats2024", title=KIND, output=SEGMENTATION, plan=plan, default_name="BraTS2024_<SUBSET>",
    default_id_help="by sub-challenge: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_IDS.items()),
    help=f"BraTS 2024 {'/'.join(DEFAULT_IDS)}: same files as 2023; GLI label 4 (resection cavity) kept as its "
         f"own class or mapped (--resection-cavity)",
    settings=(Setting("subset", None, ("--subset",), "sub-challenge (needed when the folder holds several)",
                      cli={"choices": tuple(DEFAULT_IDS) + tuple(REFUSED), "type": str.upper}),
              Setting("resection_cavity", "keep", ("--resection-cavity",),
                      "GLI label 4: keep as its own class and region (default), write as background, or as "
                      "nnU-Net's ignore label", cli={"choices": labels.RESECTION_CAVITY_MODES})),
    reference="https://www.synapse.org/brats2024", licence="see the BraTS 2024 data use agreement")
convert = RELEASE.convert
