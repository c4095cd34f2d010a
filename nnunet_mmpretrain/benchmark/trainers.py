"""Benchmark fine-tuning trainers: one class per method kind, everything else from the cell.

The runner (:mod:`nnunet_mmpretrain.benchmark.runner`) starts every cell as a plain
``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS`` subprocess and passes the cell's
settings through environment variables, so one trainer class serves every suite:

================================  ==========================================================
``nnUNet_mmpretrain_bench_schedule``  JSON of :class:`Schedule` fields, e.g.
                                      ``{"epochs": 4, "iterations": 8, "val_iterations": 2}``
``nnUNet_mmpretrain_bench_split``     path of the cell's split file
                                      ``{"train": [case ids], "val": [case ids]}``
``nnUNet_mmpretrain_bench_seed``      integer seed (torch, numpy, random) set before the network
                                      is built, so paired cells of two methods share it
``nnUNet_mmpretrain_bundle``          encoder bundle of the ``_pretrained*`` trainers (finetune.py)
``nnUNet_mmpretrain_stem``            stem strategy ``modality`` / ``repeat`` / ``reinit``
================================  ==========================================================

Without these variables the trainers behave as nnU-Net's defaults (its schedule and split), so
``nnUNetv2_predict -tr nnUNetTrainerMMBench...`` needs none of them.

Classes: ``nnUNetTrainerMMBench`` (from scratch), ``nnUNetTrainerMMBench_pretrained``,
``nnUNetTrainerMMBench_pretrainedFrozen`` (encoder stages fixed after injection),
``nnUNetTrainerMMBench_randomFrozen`` (the same stages fixed at their random initialisation: the
control that separates what the encoder learned from what fine-tuning the rest does),
``nnUNetTrainerMMBench_pretrainedTemplateAug`` (template-substitution training);
``nnUNetTrainerMMBenchClassifier[_pretrained|_pretrainedFrozen|_randomFrozen]``: the same kinds for
classification tasks over the classifier of ``classification/trainer.py`` (frozen = its linear
probe: the whole encoder, stem included, fixed; only the head trains).
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.classification.trainer import MMClassifierBase
from nnunet_mmpretrain.training.finetune import PretrainedEncoder, TemplateSubstitution
from nnunet_mmpretrain.training.freezing import FrozenEncoderStages
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule

ENV_SCHEDULE = "nnUNet_mmpretrain_bench_schedule"
ENV_SPLIT = "nnUNet_mmpretrain_bench_split"
ENV_SEED = "nnUNet_mmpretrain_bench_seed"

__all__ = ["nnUNetTrainerMMBench", "nnUNetTrainerMMBench_pretrained", "nnUNetTrainerMMBench_pretrainedFrozen",
           "nnUNetTrainerMMBench_randomFrozen", "nnUNetTrainerMMBench_pretrainedTemplateAug",
           "nnUNetTrainerMMBenchClassifier", "nnUNetTrainerMMBenchClassifier_pretrained",
           "nnUNetTrainerMMBenchClassifier_pretrainedFrozen", "nnUNetTrainerMMBenchClassifier_randomFrozen"]


def schedule_from_env(default: Schedule) -> Schedule:
    """The cell's schedule (``$nnUNet_mmpretrain_bench_schedule``, JSON) or ``default``."""
    raw = os.environ.get(ENV_SCHEDULE)
    if not raw:
        return default
    d = json.loads(raw)
    return Schedule(**{k: d[k] for k in Schedule.__dataclass_fields__ if k in d})


class BenchmarkCell(ShortSchedule, FrozenEncoderStages):
    """Mixin (first in the bases): schedule, split and seed from the cell's environment; encoder
    stages fixed with ``freeze_encoder`` (after the bundle, if any, was injected)."""

    schedule: Schedule = Schedule(epochs=1000, iterations=250, val_iterations=50, mirroring=True)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.schedule = schedule_from_env(type(self).schedule)
        seed = os.environ.get(ENV_SEED)
        if seed not in (None, ""):
            s = int(seed)
            random.seed(s)
            np.random.seed(s % 2 ** 32)
            torch.manual_seed(s)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def do_split(self):
        path = os.environ.get(ENV_SPLIT)
        if not path:
            return super().do_split()
        with open(path) as f:
            split = json.load(f)
        tr, val = list(split["train"]), list(split["val"])
        self.print_to_log_file(f"benchmark split {path}: {len(tr)} training and {len(val)} validation cases")
        return tr, val

    def on_train_start(self):
        super().on_train_start()          # PretrainedEncoder injects, then FrozenEncoderStages freezes
        self.print_to_log_file(f"benchmark cell: seed {os.environ.get(ENV_SEED)}, schedule {self.schedule}")


class nnUNetTrainerMMBench(BenchmarkCell, nnUNetTrainer):
    """From scratch (random initialisation), the cell's schedule."""


class nnUNetTrainerMMBench_pretrained(BenchmarkCell, PretrainedEncoder, nnUNetTrainer):
    """Encoder from ``$nnUNet_mmpretrain_bundle``, everything trains."""


class nnUNetTrainerMMBench_pretrainedFrozen(BenchmarkCell, PretrainedEncoder, nnUNetTrainer):
    """Encoder from the bundle, its stages frozen (stem, decoder and heads train)."""
    freeze_encoder = True


class nnUNetTrainerMMBench_randomFrozen(BenchmarkCell, nnUNetTrainer):
    """Random encoder, its stages frozen exactly as in ``_pretrainedFrozen``."""
    freeze_encoder = True


class nnUNetTrainerMMBench_pretrainedTemplateAug(BenchmarkCell, TemplateSubstitution, PretrainedEncoder,
                                                 nnUNetTrainer):
    """Encoder from the bundle + template-substitution augmentation (missing-modality training)."""


class nnUNetTrainerMMBenchClassifier(BenchmarkCell, MMClassifierBase):
    """Classification from scratch (never loads a bundle), the cell's schedule, split and seed."""
    use_bundle = False


class nnUNetTrainerMMBenchClassifier_pretrained(BenchmarkCell, MMClassifierBase):
    """Classification, encoder from ``$nnUNet_mmpretrain_bundle``, everything trains."""
    use_bundle = True


class nnUNetTrainerMMBenchClassifier_pretrainedFrozen(BenchmarkCell, MMClassifierBase):
    """Linear probe of the pretrained encoder (encoder fixed, head trains)."""
    use_bundle, linear_probe, lr = True, True, 1e-3


class nnUNetTrainerMMBenchClassifier_randomFrozen(BenchmarkCell, MMClassifierBase):
    """Linear probe of a random encoder: the control of ``_pretrainedFrozen``."""
    use_bundle, linear_probe, lr = False, True, 1e-3
