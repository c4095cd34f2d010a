"""A full nnU-Net checkpoint for stock ``nnUNetv2_train ... -pretrained_weights FILE``.

nnU-Net's ``-pretrained_weights`` is all-or-nothing: every key but ``.seg_layers.`` must exist
with the same shape. This builds the downstream network exactly as nnU-Net will (plans,
configuration, the dataset's channels and label heads), injects the bundle (encoder + adapted
stem; the decoder's ``decoder.encoder.*`` aliases share the tensors, so they carry the same
values) and saves its whole state dict under ``network_weights``, tensors only.
"""
from __future__ import annotations

import json
import os

import torch

from nnunet_mmpretrain.io_utils import atomic_path
from nnunet_mmpretrain.transfer.bundle import load_bundle
from nnunet_mmpretrain.transfer.inject import inject_bundle
from nnunet_mmpretrain.transfer.stem import channel_modalities_from_dataset_json


def build_full_checkpoint(bundle_path: str, dataset: str, plans_identifier: str, configuration: str,
                          strategy: str = "modality"):
    """Returns (checkpoint dict, InjectionReport)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    name = maybe_convert_to_dataset_name(dataset)
    folder = os.path.join(str(nnUNet_preprocessed), name)
    plans_file = os.path.join(folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"no plans {plans_file}: plan the dataset (or transfer plans) first.")
    pm = PlansManager(plans_file)
    cm = pm.get_configuration(configuration)
    with open(os.path.join(folder, "dataset.json")) as f:
        dj = json.load(f)
    n_in = determine_num_input_channels(pm, cm, dj)
    heads = pm.get_label_manager(dj).num_segmentation_heads
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, n_in, heads, allow_init=True,
                                 deep_supervision=True)
    bundle = load_bundle(bundle_path)
    report = inject_bundle(net, bundle, channel_modalities_from_dataset_json(dj, keep_unknown=True), strategy,
                           arch={"network_class_name": cm.network_arch_class_name,
                                 "arch_kwargs": cm.network_arch_init_kwargs})
    ck = {"network_weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
          "mmpretrain_full_checkpoint": {"bundle": os.path.abspath(bundle_path), "dataset": name,
                                         "plans": plans_identifier, "configuration": configuration,
                                         "stem_strategy": strategy}}
    return ck, report


def save_full_checkpoint(ck: dict, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)
