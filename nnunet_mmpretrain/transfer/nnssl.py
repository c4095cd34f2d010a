"""The nnssl checkpoint format (what nnssl writes and nnU-Net's pretrained fine-tuning path reads),
both ways: our encoder bundle -> nnssl checkpoint, and an nnssl checkpoint -> our bundle.

An nnssl checkpoint is a ``.pth`` dict (loadable with ``torch.load(weights_only=True)``)::

    network_weights          state dict of the pretraining network; the loader keeps the keys under
                             key_to_encoder and key_to_stem (nothing else)
    nnssl_adaptation_plan    architecture_plans {arch_class_name, arch_kwargs,
                             arch_kwargs_requiring_import}, pretrain_plan (nnssl Plan as a dict:
                             exactly the fields of NNSSL_PLAN_FIELDS / NNSSL_CONFIGURATION_FIELDS),
                             pretrain_num_input_channels, recommended_downstream_patchsize,
                             key_to_encoder, key_to_stem, keys_to_in_proj, key_to_lpe
    citations                list of {type, name, apa_citations: [text]} (what nnU-Net prints)

Export (:func:`bundle_to_nnssl`): the encoder stages are written as they are; the per-modality
1-channel stems collapse to the single stem that format expects, as the **mean over the trained
modalities' stems** (every stem parameter, the input projection kernel (F0, 1, *kernel)
included). That is the stem our ``repeat`` strategy uses, and what nnU-Net's loader then repeats
over the downstream channels (dividing by C). The per-modality stems, templates and metadata travel
in an extra ``mmpretrain_bundle`` entry, which nnU-Net ignores and :func:`nnssl_to_bundle` restores,
so bundle -> nnssl -> bundle is lossless.

Import (:func:`nnssl_to_bundle`): a foreign checkpoint's one stem becomes every modality's stem
(``stem_origin`` = ``'shared'`` in the bundle). Only what our plans can express is accepted: a
1-channel ``ResidualEncoderUNet`` / ``PlainConvUNet`` (arch_kwargs given, or the ``ResEncL``
preset), 3D, no learnable positional embedding; anything else raises :class:`NnsslError` naming
every differing field.
"""
from __future__ import annotations

import json
import logging
import os
from copy import deepcopy
from typing import Dict, List, Optional, Tuple

import torch

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.planning.compat import resolved_configuration
from nnunet_mmpretrain.transfer.bundle_format import BUNDLE_FORMAT, package_versions

log = logging.getLogger(__name__)

#: classes our plans express, by the short name nnssl writes
DYNAMIC_CLASSES = {"ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                   "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet"}
REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]

#: nnssl's ``ResEncL`` preset (OpenMind weights) as dynamic-network-architectures kwargs
RESENC_L = {
    "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}

#: The documented nnssl schema the export follows field by field (read from nnssl's
#: ``experiment_planners/plan.py`` and ``adaptation_planning/adaptation_plan.py``, the state checked
#: against nnssl commit 7044864 and nnU-Net master 0e495086; docs/WEIGHTS.md). nnssl's
#: ``Plan.from_dict`` builds ``Plan(**d)`` and ``ConfigurationPlan(**c)``, so a missing or extra
#: key is an error there.
NNSSL_PLAN_FIELDS = ("dataset_name", "plans_name", "original_median_spacing_after_transp", "image_reader_writer",
                     "transpose_forward", "transpose_backward", "configurations", "experiment_planner_used")
NNSSL_CONFIGURATION_FIELDS = ("data_identifier", "preprocessor_name", "spacing_style", "normalization_schemes",
                              "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
                              "resampling_fn_mask", "resampling_fn_mask_kwargs", "spacing", "patch_size")
NNSSL_SPACING_STYLES = ("onemmiso", "median", "noresample")
#: ``DynamicArchitecturePlans(**arch_kwargs)`` in nnssl
NNSSL_DYNAMIC_ARCH_FIELDS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
                             "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs",
                             "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
#: what nnssl's AdaptationPlan.from_dict reads, plus the keys nnU-Net master's loader reads
NNSSL_ADAPTATION_FIELDS = ("architecture_plans", "pretrain_plan", "pretrain_num_input_channels",
                           "recommended_downstream_patchsize", "key_to_encoder", "key_to_stem", "keys_to_in_proj",
                           "key_to_lpe")

#: ``citations`` as nnU-Net master prints them: a list of dicts with ``type``, ``name`` and the
#: references as text (``apa_citations``)
CITATIONS = [
    {"type": "Pretraining method", "name": "BrainMVP (nnunet-mmpretrain)",
     "apa_citations": ["Rui, S., Chen, L., Tang, Z., Wang, L., Liu, M., Zhang, S., & Wang, X. (2025). Multi-modal "
                       "vision pre-training for medical image analysis. In Proceedings of the IEEE/CVF Conference on "
                       "Computer Vision and Pattern Recognition (CVPR)."]},
    {"type": "Framework", "name": "nnU-Net",
     "apa_citations": ["Isensee, F., Jaeger, P. F., Kohl, S. A. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: "
                       "a self-configuring method for deep learning-based biomedical image segmentation. Nature "
                       "Methods, 18(2), 203-211."]},
]


class NnsslError(ValueError):
    """A checkpoint that cannot be converted, with the reason and the fix (one line)."""


# ---------------------------------------------------------------------------- export
def mean_stem(bundle: dict) -> Dict[str, torch.Tensor]:
    """The single stem of the nnssl format: per key, the mean over the trained modalities' stems.

    Returns ``{key_to_stem.*: tensor}``; the input projection weight has shape (F0, 1, *kernel)."""
    trained = [m for m in bundle.get("modalities_trained") or () if m in bundle["stems"]]
    if not trained:
        raise NnsslError("the bundle has no trained stem to export (modalities_trained is empty); re-export it "
                         "from the pretraining checkpoint.")
    stems = [bundle["stems"][m] for m in trained]
    return {k: torch.stack([s[k].float() for s in stems]).mean(0).to(stems[0][k].dtype).clone()
            for k in stems[0]}


def _pretrain_plan(plans: dict, configuration: str) -> dict:
    """nnssl's ``Plan`` (exactly :data:`NNSSL_PLAN_FIELDS`) holding the pretraining configuration as a
    ``ConfigurationPlan`` (exactly :data:`NNSSL_CONFIGURATION_FIELDS`). ``spacing_style`` is
    ``median``: nnU-Net's planner derived the spacing from the corpus' median spacing."""
    conf = resolved_configuration(plans, configuration)
    cfg = {
        "data_identifier": conf.get("data_identifier"), "preprocessor_name": conf.get("preprocessor_name"),
        "spacing_style": "median", "normalization_schemes": list(conf.get("normalization_schemes") or []),
        "use_mask_for_norm": list(conf.get("use_mask_for_norm") or []),
        "resampling_fn_data": conf.get("resampling_fn_data"),
        "resampling_fn_data_kwargs": conf.get("resampling_fn_data_kwargs"),
        "resampling_fn_mask": conf.get("resampling_fn_seg"), "resampling_fn_mask_kwargs": conf.get(
            "resampling_fn_seg_kwargs"),
        "spacing": [float(x) for x in conf["spacing"]], "patch_size": [int(x) for x in conf["patch_size"]],
    }
    return {"dataset_name": plans.get("dataset_name"), "plans_name": plans.get("plans_name"),
            "original_median_spacing_after_transp": plans.get("original_median_spacing_after_transp"),
            "image_reader_writer": plans.get("image_reader_writer"),
            "transpose_forward": plans.get("transpose_forward"), "transpose_backward": plans.get("transpose_backward"),
            "configurations": {configuration: cfg},
            "experiment_planner_used": plans.get("experiment_planner_used")}


def bundle_to_nnssl(bundle: dict) -> dict:
    """The nnssl checkpoint dict of an encoder bundle (module docstring); tensors only, plain types.

    ``network_weights``: the encoder keys (``encoder.stages.*``, shapes as in the bundle) plus the
    mean stem (input projection (F0, 1, *kernel))."""
    plans = json.loads(bundle["plans"])
    conf = bundle["configuration"]
    arch = resolved_configuration(plans, conf)["architecture"]
    weights = {**{k: v.clone() for k, v in bundle["encoder"].items()}, **mean_stem(bundle)}
    extras = {"format": bundle["format"], "stems": bundle["stems"], "templates": bundle["templates"],
              "modalities_trained": list(bundle["modalities_trained"]), "vocabulary": list(bundle["vocabulary"]),
              "plans": bundle["plans"], "configuration": conf,
              "meta": json.dumps({k: bundle.get(k) for k in ("template_spacing", "template_space", "template_geometry",
                                                            "epoch", "objective", "card", "stem_origin")})}
    return {
        "network_weights": weights,
        "nnssl_adaptation_plan": {
            "architecture_plans": {"arch_class_name": bundle["network_class_name"].rsplit(".", 1)[-1],
                                   "arch_kwargs": json.loads(bundle["arch_kwargs"]),
                                   "arch_kwargs_requiring_import": list(arch.get("_kw_requires_import",
                                                                                 REQUIRES_IMPORT))},
            "pretrain_plan": _pretrain_plan(plans, conf),
            "pretrain_num_input_channels": 1,
            "recommended_downstream_patchsize": [int(p) for p in resolved_configuration(plans, conf)["patch_size"]],
            "key_to_encoder": bundle["key_to_encoder"], "key_to_stem": bundle["key_to_stem"],
            "keys_to_in_proj": list(bundle["keys_to_in_proj"]), "key_to_lpe": None,
        },
        "citations": deepcopy(CITATIONS),
        "mmpretrain_bundle": extras,
    }


# ---------------------------------------------------------------------------- import
def _architecture(ap: dict, problems: List[str]) -> Optional[Tuple[str, dict, list]]:
    """(full class name, arch_kwargs, requires-import list) of an adaptation plan, or None with
    the reasons appended to ``problems``."""
    archp = ap.get("architecture_plans")
    if not isinstance(archp, dict):
        problems.append(f"architecture_plans = {archp!r} (need a dict with arch_class_name and arch_kwargs)")
        return None
    name = str(archp.get("arch_class_name"))
    kwargs = archp.get("arch_kwargs")
    short = name.rsplit(".", 1)[-1]
    if short in ("ResEncL", "NoSkipResEncL"):      # presets; the no-skip variant differs in its decoder only
        if not kwargs:
            return DYNAMIC_CLASSES["ResidualEncoderUNet"], deepcopy(RESENC_L), list(REQUIRES_IMPORT)
        short = "ResidualEncoderUNet"
    if short not in DYNAMIC_CLASSES:
        problems.append(f"architecture_plans.arch_class_name = {name} (need ResidualEncoderUNet, PlainConvUNet, "
                        f"ResEncL or NoSkipResEncL)")
        return None
    if not isinstance(kwargs, dict):
        problems.append(f"architecture_plans.arch_kwargs = {kwargs!r} (need the dynamic-network-architectures kwargs)")
        return None
    req = archp.get("arch_kwargs_requiring_import") or [k for k in REQUIRES_IMPORT if k in kwargs]
    req = [k for k in req if isinstance(kwargs.get(k), str)]
    return DYNAMIC_CLASSES[short], deepcopy(kwargs), req


def _spacing(ap: dict) -> Tuple[List[float], bool]:
    """Pretraining spacing from pretrain_plan (first configuration with one); (1, 1, 1) assumed
    when absent (nnssl's default 'onemmiso'), flagged by the second value."""
    confs = (ap.get("pretrain_plan") or {}).get("configurations") or {}
    cands = [confs] if "spacing" in confs else [c for c in confs.values() if isinstance(c, dict)]
    for c in cands:
        sp = c.get("spacing")
        if isinstance(sp, (list, tuple)) and len(sp) == 3:
            return [float(s) for s in sp], False
    return [1.0, 1.0, 1.0], True


def downstream_plans(ap: dict, cls: str, kwargs: dict, req: list, patch: List[int], spacing: List[float]) -> dict:
    """nnU-Net plans (one ``3d_fullres`` configuration) with the checkpoint's architecture, patch
    and spacing: the source plans that ``transfer_plans --bundle`` adapts to a downstream dataset."""
    pp = ap.get("pretrain_plan") or {}
    tf = pp.get("transpose_forward") or [0, 1, 2]
    tb = pp.get("transpose_backward") or [0, 1, 2]
    rs = "resample_data_or_seg_to_shape"
    kw = lambda seg, order: {"is_seg": seg, "order": order, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": str(pp.get("dataset_name") or "nnssl_pretraining"), "plans_name": "nnsslImportPlans",
        "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": list(patch),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": list(tf), "transpose_backward": list(tb),
        "configurations": {"3d_fullres": {
            "data_identifier": "nnsslImportPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [float(p) for p in patch],
            "spacing": spacing, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": rs, "resampling_fn_seg": rs, "resampling_fn_probabilities": rs,
            "resampling_fn_data_kwargs": kw(False, 3), "resampling_fn_seg_kwargs": kw(True, 1),
            "resampling_fn_probabilities_kwargs": kw(False, 1),
            "architecture": {"network_class_name": cls, "arch_kwargs": kwargs, "_kw_requires_import": req},
            "batch_dice": True}},
        "experiment_planner_used": "nnUNetv2_mmpretrain_import_nnssl", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "mmpretrain": {"imported_from": "nnssl", "encoder_input_channels": 1},
    }


def dropped_tensors(ck: dict) -> Dict[str, int]:
    """Tensors of an nnssl checkpoint the import does not keep (everything outside ``key_to_encoder``
    and ``key_to_stem``, e.g. an MAE decoder): count per top-level prefix."""
    ap = ck.get("nnssl_adaptation_plan") or {}
    keep = [p for p in (ap.get("key_to_encoder"), ap.get("key_to_stem")) if isinstance(p, str) and p]
    out: Dict[str, int] = {}
    for k in ck.get("network_weights") or {}:
        if not any(k == p or k.startswith(p + ".") for p in keep):
            out[k.split(".", 1)[0]] = out.get(k.split(".", 1)[0], 0) + 1
    return out


def structured_citations(ck: dict) -> list:
    """The checkpoint's ``citations`` kept as they are (dicts with type, name, apa_citations / bibtex_citations,
    or plain strings from older files), made JSON-safe."""
    cits = ck.get("citations") or []
    if not isinstance(cits, (list, tuple)):
        cits = [cits]
    return json.loads(json.dumps([c if isinstance(c, (dict, str)) else str(c) for c in cits], default=str))


def _remap(sd: Dict[str, torch.Tensor], src: str, dst: str) -> Dict[str, torch.Tensor]:
    return {dst + k[len(src):]: v for k, v in sd.items() if k == src or k.startswith(src + ".")}


def nnssl_to_bundle(ck: dict, path: str) -> dict:
    """Our bundle dict (see :mod:`nnunet_mmpretrain.transfer.bundle`) from an nnssl checkpoint dict.

    Encoder tensors keep their shapes; the stem's input projection must be (F0, 1, *kernel). Raises
    :class:`NnsslError` listing every field our plans cannot express, or every key whose shape
    differs from the network built from the checkpoint's own architecture."""
    if not isinstance(ck.get("network_weights"), dict) or not isinstance(ck.get("nnssl_adaptation_plan"), dict):
        raise NnsslError(f"{path} is not an nnssl checkpoint (no network_weights / nnssl_adaptation_plan entries; "
                         f"keys: {', '.join(sorted(map(str, ck))[:8])}): pass the .pth that nnssl wrote.")
    ap = ck["nnssl_adaptation_plan"]
    problems: List[str] = []
    if ap.get("pretrain_num_input_channels") != 1:
        problems.append(f"pretrain_num_input_channels = {ap.get('pretrain_num_input_channels')} (need 1: one stem "
                        f"per modality)")
    if ap.get("key_to_lpe"):
        problems.append(f"key_to_lpe = {ap.get('key_to_lpe')} (learnable positional embeddings: transformer, "
                        f"not expressible as nnU-Net plans here)")
    patch = ap.get("recommended_downstream_patchsize")
    if not (isinstance(patch, (list, tuple)) and len(patch) == 3 and
            all(isinstance(p, (int, float)) and int(p) > 0 for p in patch)):
        problems.append(f"recommended_downstream_patchsize = {patch} (need 3 positive sizes: 3D)")
    for f in ("key_to_encoder", "key_to_stem"):
        if not isinstance(ap.get(f), str) or not ap.get(f):
            problems.append(f"{f} = {ap.get(f)!r} (need a state-dict prefix such as 'encoder.stages')")
    if not isinstance(ap.get("keys_to_in_proj"), (list, tuple)) or not ap.get("keys_to_in_proj"):
        problems.append(f"keys_to_in_proj = {ap.get('keys_to_in_proj')!r} (need the input projection's module names)")
    bad = [k for k, v in ck["network_weights"].items() if not isinstance(v, torch.Tensor)][:3]
    if bad:
        problems.append(f"network_weights hold non-tensors under {bad}")
    arch = _architecture(ap, problems)
    if problems:
        raise NnsslError(f"{path}: our plans cannot express this checkpoint's topology: " + "; ".join(problems) +
                         ". Fine-tune it with nnU-Net's own nnUNetv2_train_pretrained instead.")
    cls, kwargs, req = arch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    try:
        ref = get_network_from_plans(cls, kwargs, req, 1, 2, allow_init=False, deep_supervision=False)
    except Exception as e:
        raise NnsslError(f"{path}: architecture_plans.arch_kwargs do not build a {cls.rsplit('.', 1)[-1]} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:150]}).") from None
    sd = ck["network_weights"]
    stem = _remap(sd, ap["key_to_stem"], ref.key_to_stem)
    encoder = _remap({k: v for k, v in sd.items() if not (k == ap["key_to_stem"] or
                                                           k.startswith(ap["key_to_stem"] + "."))},
                     ap["key_to_encoder"], ref.key_to_encoder)
    want = {k: v for k, v in ref.state_dict().items() if k.startswith("encoder.")}
    got = {**encoder, **stem}
    diffs = [f"{k}: checkpoint {tuple(got[k].shape)} vs architecture {tuple(v.shape)}"
             for k, v in want.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    diffs += [f"{k}: missing from network_weights" for k in want if k not in got]
    if diffs:
        raise NnsslError(f"{path}: network_weights do not match architecture_plans ({len(diffs)} keys differ): " +
                         "; ".join(diffs[:6]) + ". The checkpoint is inconsistent; re-export it with nnssl.")
    stem = {k: stem[k] for k in want if k.startswith(ref.key_to_stem + ".")}
    enc = {k: got[k] for k in sorted(want) if not k.startswith(ref.key_to_stem + ".")}
    spacing, assumed = _spacing(ap)
    extras = ck.get("mmpretrain_bundle") if isinstance(ck.get("mmpretrain_bundle"), dict) else None
    if extras is not None:      # our own export: restore what the nnssl format cannot hold
        meta = json.loads(extras["meta"])
        b = {"format": BUNDLE_FORMAT, "encoder": enc, "stems": extras["stems"], "templates": extras["templates"],
             "modalities_trained": extras["modalities_trained"], "vocabulary": extras["vocabulary"],
             "plans": extras["plans"], "configuration": extras["configuration"], **meta}
    else:
        plans = downstream_plans(ap, cls, kwargs, req, [int(p) for p in patch], spacing)
        b = {"format": BUNDLE_FORMAT, "encoder": enc, "stems": {m: {k: v.clone() for k, v in stem.items()}
                                                                for m in MODALITIES},
             "templates": {}, "modalities_trained": list(MODALITIES), "vocabulary": list(MODALITIES),
             "plans": json.dumps(plans), "configuration": "3d_fullres", "template_spacing": spacing,
             "template_space": "data", "template_geometry": None, "epoch": -1, "objective": json.dumps({}),
             "stem_origin": "shared",
             "card": {"imported_from": {"format": "nnssl", "file": os.path.abspath(path),
                                        "arch_class_name": ap["architecture_plans"].get("arch_class_name"),
                                        "citations": structured_citations(ck),
                                        "dropped_tensors": dropped_tensors(ck),
                                        "spacing_assumed_1mm": assumed}}}
        if assumed:
            log.warning("%s: pretrain_plan has no spacing; 1 mm isotropic assumed (nnssl's default)", path)
    b.update({"key_to_encoder": ref.key_to_encoder, "key_to_stem": ref.key_to_stem,
              "keys_to_in_proj": list(ref.keys_to_in_proj), "network_class_name": cls,
              "arch_kwargs": json.dumps(kwargs, sort_keys=True), "versions": package_versions()})
    b.setdefault("stem_origin", "per-modality")
    return b
