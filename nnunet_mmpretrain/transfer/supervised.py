"""An encoder bundle from a plain nnU-Net segmentation checkpoint (an encoder trained *with labels*).

Use: the benchmark's positive control (an encoder trained supervised on a disjoint labelled pool,
then frozen and fine-tuned like a pretrained one), and any user who wants to start a new dataset
from the encoder of an nnU-Net model trained on another one::

    nnUNetv2_mmpretrain_export $nnUNet_results/Dataset994_X/nnUNetTrainer__P__C/fold_all/checkpoint_final.pth -o bundle/

The checkpoint's C-channel input projection ``W`` (F0, C, *kernel) becomes one 1-channel stem per
channel modality (dataset.json ``channel_names``) holding ``C * W[:, c]``: the ``modality`` stem
strategy (``transfer/stem.py``) divides each modality's kernel by the downstream channel count, so
a downstream dataset with the same C channels gets back exactly ``W``. The other stem tensors
(bias, norm) are copied to every stem. The bundle has no templates (``modalities_trained`` = the
channel modalities; ``stem_origin`` ``'supervised'``).
"""
from __future__ import annotations

import json
from typing import Dict

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_mmpretrain.modalities import channels_to_modalities
from nnunet_mmpretrain.planning.compat import resolved_configuration
from nnunet_mmpretrain.transfer.bundle_format import architecture_fields

SUPERVISED_ORIGIN = "supervised"


class SupervisedBundleError(ValueError):
    """A checkpoint that cannot give a supervised encoder bundle (reason and fix)."""


def is_nnunet_checkpoint(ck: dict) -> bool:
    """A checkpoint written by nnU-Net's own trainer (``network_weights`` + ``init_args`` with the
    dataset.json), not by our pretraining trainer."""
    ia = ck.get("init_args")
    return "network_weights" in ck and isinstance(ia, dict) and "dataset_json" in ia and "mmpretrain" not in ck


def _clean_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Strip the wrappers' prefixes (``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "_orig_mod."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def supervised_bundle(ck: dict, checkpoint_path: str, versions: Dict[str, str], bundle_format: str) -> dict:
    """The bundle dict (format of ``transfer/bundle.py``) of an nnU-Net segmentation checkpoint."""
    ia = ck["init_args"]
    plans = ia["plans"] if isinstance(ia["plans"], dict) else json.loads(ia["plans"])
    dj = ia["dataset_json"] if isinstance(ia["dataset_json"], dict) else json.loads(ia["dataset_json"])
    conf_name = ia["configuration"]
    conf = resolved_configuration(plans, conf_name)
    arch = conf["architecture"]
    names = [dj["channel_names"][k] for k in sorted(dj["channel_names"], key=int)]
    mods = channels_to_modalities(dj["channel_names"])
    unknown = [n for n, m in zip(names, mods) if m is None]
    if unknown:
        raise SupervisedBundleError(f"{checkpoint_path}: channel(s) {unknown} of its dataset.json are no known "
                                    f"modality, so no per-modality stem can be made; rename them in channel_names")
    if len(set(mods)) != len(mods):
        raise SupervisedBundleError(f"{checkpoint_path}: two channels carry one modality ({mods}); a per-modality "
                                    f"stem needs distinct modalities")
    C = len(mods)
    ref = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], C, 2,
                                 allow_init=False, deep_supervision=False)
    key_to_stem, key_to_encoder = ref.key_to_stem, ref.key_to_encoder
    in_proj = [f"{k}.weight" for k in getattr(ref, "keys_to_in_proj", ())]
    sd = _clean_keys(ck["network_weights"])
    expected = {k for k in ref.state_dict() if k.startswith(key_to_encoder + ".") and not k.startswith(key_to_stem + ".")}
    missing = sorted(expected - set(sd))
    if missing:
        raise SupervisedBundleError(f"{checkpoint_path}: encoder keys missing for its own plans: {missing[:5]}")
    wrong = [k for k in expected if tuple(sd[k].shape) != tuple(ref.state_dict()[k].shape)]
    if wrong:
        raise SupervisedBundleError(f"{checkpoint_path}: encoder tensors of the wrong shape for its plans: {wrong[:3]}")
    stem_sd = {k: v for k, v in sd.items() if k.startswith(key_to_stem + ".")}
    if not stem_sd or not in_proj or any(k not in stem_sd for k in in_proj):
        raise SupervisedBundleError(f"{checkpoint_path}: no input projection {in_proj} under {key_to_stem}")
    stems = {}
    for c, m in enumerate(mods):
        stems[m] = {k: (v[:, c:c + 1] * C if k in in_proj else v).detach().clone() for k, v in stem_sd.items()}
    return {
        "format": bundle_format,
        "encoder": {k: sd[k].detach().clone() for k in sorted(expected)},
        "stems": stems,
        "templates": {},
        "template_spacing": [float(s) for s in conf["spacing"]],
        "template_space": "data",
        "template_geometry": None,
        "modalities_trained": list(mods),
        "vocabulary": list(mods),
        **architecture_fields(ref, arch, plans, conf_name),
        "epoch": int(ck.get("current_epoch", 0)),
        "objective": json.dumps({"supervised": {"trainer": ck.get("trainer_name"), "dataset": dj.get("name"),
                                                "labels": dj.get("labels")}}),
        "versions": versions,
        "stem_origin": SUPERVISED_ORIGIN,
        "card": {"method": {"description": f"encoder of a supervised nnU-Net segmentation model trained with the labels "
                                           f"of {dj.get('name')} (not self-supervised)",
                            "trainer": ck.get("trainer_name"), "objective": {"supervised": dj.get("labels")}},
                 "corpus": {"name": dj.get("name"), "dataset": dj.get("name"), "case_count": dj.get("numTraining")},
                 "schedule": {"checkpoint": checkpoint_path, "epochs_completed": ck.get("current_epoch")}},
    }
