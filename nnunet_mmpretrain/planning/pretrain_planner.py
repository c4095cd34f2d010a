"""Pretraining planners: nnU-Net's ResEnc planners applied to a label-free corpus fingerprint.

The planners are subclasses of nnU-Net's (``nnUNetPlannerResEncM`` by default; L and XL
presets), so spacing, patch size and topology follow nnU-Net's own rules and a downstream dataset
planned with the same preset gets the same encoder. Differences:

* the plans are named ``mmPretrainPlans`` and hold only ``3d_fullres`` (the encoder sees 3D
  patches of one modality: 1 input channel),
* a top-level ``mmpretrain`` block describes the corpus (modality vocabulary, sources, counts,
  per-modality intensities, whether cases are atlas-registered),
* ``like`` a downstream plans file: the patch size, spacing and architecture of that file's
  configuration are copied, so the pretrained encoder fits that plans file exactly.
"""
from __future__ import annotations

import json
from copy import deepcopy
from typing import Optional

from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.io_utils import atomic_write_json
from nnunet_mmpretrain.planning.nnunet_plan import planner_threads

PLANS_NAME = "mmPretrainPlans"


class _MMPretrainPlanning:
    """Mixin over an nnU-Net planner class (put first)."""

    corpus_block: Optional[dict] = None   # set by the caller before plan_experiment()
    like_plans: Optional[dict] = None     # {"plans": dict, "configuration": name}

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb=None, preprocessor_name="DefaultPreprocessor",
                 plans_name=PLANS_NAME, overwrite_target_spacing=None, suppress_transpose=False):
        kw = {} if gpu_memory_target_in_gb is None else {"gpu_memory_target_in_gb": gpu_memory_target_in_gb}
        super().__init__(dataset_name_or_id, preprocessor_name=preprocessor_name, plans_name=plans_name,
                         overwrite_target_spacing=overwrite_target_spacing, suppress_transpose=suppress_transpose, **kw)

    def generate_data_identifier(self, configuration_name: str) -> str:
        # ResEnc planners share nnUNetPlans_3d_fullres data; corpus data (all modalities of a case
        # as channels, our properties) is its own
        return self.plans_identifier + "_" + configuration_name

    def plan_experiment(self):
        # configurations a user added to an earlier version of these plans (read before nnU-Net's
        # planner overwrites the file with its own 2d/3d configurations)
        import os
        from nnunetv2.paths import nnUNet_preprocessed
        old_file = os.path.join(str(nnUNet_preprocessed), self.dataset_name, self.plans_identifier + ".json")
        self._previous_configurations = {}
        if os.path.isfile(old_file):
            with open(old_file) as f:
                self._previous_configurations = json.load(f).get("configurations", {})
        with planner_threads():  # nnUNet_n_proc_DA=0 is valid for training, not for torch.set_num_threads
            plans = super().plan_experiment()
        plans = deepcopy(plans)
        for c in list(plans["configurations"]):
            if c != "3d_fullres":
                plans["configurations"].pop(c)
        conf = plans["configurations"]["3d_fullres"]
        if self.like_plans is not None:
            src = self.like_plans["plans"]["configurations"][self.like_plans["configuration"]]
            parent = src
            while "architecture" not in parent or "spacing" not in parent:
                merged = deepcopy(self.like_plans["plans"]["configurations"][parent["inherits_from"]])
                merged.update({k: v for k, v in parent.items() if k != "inherits_from"})
                parent = merged
            for k in ("patch_size", "spacing", "architecture", "batch_size"):
                conf[k] = deepcopy(parent[k])
            plans["transpose_forward"] = self.like_plans["plans"]["transpose_forward"]
            plans["transpose_backward"] = self.like_plans["plans"]["transpose_backward"]
        block = dict(self.corpus_block or {})
        block.setdefault("vocabulary", list(mod.MODALITIES))
        block["encoder_input_channels"] = 1
        block["planner"] = type(self).__name__
        if self.like_plans is not None:
            block["like"] = {"plans_name": self.like_plans["plans"].get("plans_name"),
                             "dataset_name": self.like_plans["plans"].get("dataset_name"),
                             "configuration": self.like_plans["configuration"]}
        plans["mmpretrain"] = block
        self.plans = plans
        self.save_plans(plans)
        return plans

    def save_plans(self, plans):
        # like nnU-Net's save_plans: configurations a user added to an existing file (e.g. a
        # small CPU configuration) survive re-planning; ours are replaced
        import os
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.json_export import recursive_fix_for_json_export
        plans = deepcopy(plans)
        recursive_fix_for_json_export(plans)
        out = os.path.join(str(nnUNet_preprocessed), self.dataset_name, self.plans_identifier + ".json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        for name, conf in getattr(self, "_previous_configurations", {}).items():
            if name not in plans["configurations"] and name not in ("2d", "3d_lowres", "3d_cascade_fullres"):
                plans["configurations"][name] = conf
        atomic_write_json(plans, out)


class nnUNetPlannerMMPretrainResEncM(_MMPretrainPlanning, nnUNetPlannerResEncM):
    pass


class nnUNetPlannerMMPretrainResEncL(_MMPretrainPlanning, nnUNetPlannerResEncL):
    pass


class nnUNetPlannerMMPretrainResEncXL(_MMPretrainPlanning, nnUNetPlannerResEncXL):
    pass


PRESETS = {"ResEncM": nnUNetPlannerMMPretrainResEncM, "ResEncL": nnUNetPlannerMMPretrainResEncL,
           "ResEncXL": nnUNetPlannerMMPretrainResEncXL}


def load_like(path: str, configuration: str = "3d_fullres") -> dict:
    """Read a downstream plans file for the ``like`` preset; clear errors for the usual mistakes."""
    try:
        with open(path) as f:
            plans = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"plans file {path} does not exist (expected e.g. "
                         f"$nnUNet_preprocessed/DatasetXXX_Name/nnUNetResEncUNetMPlans.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a valid plans JSON: {e}") from None
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"{path} has no configuration {configuration!r} (has "
                         f"{', '.join(plans.get('configurations', {}))}); pick one with --like-config")
    return {"plans": plans, "configuration": configuration}
