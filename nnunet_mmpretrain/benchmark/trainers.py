"""Benchmark fine-tuning trainers: one class per method kind, everything else from the cell.

The runner (:mod:`nnunet_mmpretrain.benchmark.runner`) starts every cell as a plain
``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS`` subprocess after writing the cell's
settings (schedule, split, seed, bundle, stem, encoder freezing) into the fold folder
(:mod:`.cell_settings`), so one trainer class serves every suite and a cell resumed by hand with
``nnUNetv2_train ... --c`` and no environment variables continues with its own settings. The
settings used are logged, kept in the checkpoint (``init_args["mmpretrain_cell"]``) and compared on
every resume: a checkpoint trained with another schedule, split, seed, stem or freezing is refused
with one line (exit code 2 through the ``nnUNet_extTrainer`` shim). Environment variables override the recorded values, each with a
warning (:func:`.cell_settings.resolve`):

================================  ==========================================================
``nnUNet_mmpretrain_bench_schedule``  JSON of :class:`Schedule` fields, e.g.
                                      ``{"epochs": 4, "iterations": 8, "val_iterations": 2}``
``nnUNet_mmpretrain_bench_split``     path of a split file ``{"train": [case ids], "val": [case ids]}``
``nnUNet_mmpretrain_bench_seed``      integer seed (torch, numpy, random) set before the network
                                      is built, so paired cells of two methods share it
``nnUNet_mmpretrain_bundle``          encoder bundle of the ``_pretrained*`` trainers
``nnUNet_mmpretrain_stem``            stem strategy ``modality`` / ``repeat`` / ``reinit``
================================  ==========================================================

Without a settings file or variables the trainers behave as nnU-Net's defaults (its schedule and
split), with a warning; ``nnUNetv2_predict -tr nnUNetTrainerMMBench...`` needs none of them.

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

import logging
import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.benchmark import cell_settings
from nnunet_mmpretrain.benchmark.cell_settings import ENV_SCHEDULE, ENV_SEED, ENV_SPLIT, CellSettingsError  # noqa: F401
from nnunet_mmpretrain.classification.trainer import MMClassifierBase
from nnunet_mmpretrain.training.finetune import PretrainedEncoder, TemplateSubstitution
from nnunet_mmpretrain.training.freezing import FrozenEncoderStages
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule

log = logging.getLogger(__name__)

__all__ = ["nnUNetTrainerMMBench", "nnUNetTrainerMMBench_pretrained", "nnUNetTrainerMMBench_pretrainedFrozen",
           "nnUNetTrainerMMBench_randomFrozen", "nnUNetTrainerMMBench_pretrainedTemplateAug",
           "nnUNetTrainerMMBenchClassifier", "nnUNetTrainerMMBenchClassifier_pretrained",
           "nnUNetTrainerMMBenchClassifier_pretrainedFrozen", "nnUNetTrainerMMBenchClassifier_randomFrozen"]


class BenchmarkCell(ShortSchedule, FrozenEncoderStages):
    """Mixin (first in the bases): schedule, split, seed, bundle and stem from the cell's settings;
    encoder stages fixed with ``freeze_encoder`` (after the bundle, if any, was injected)."""

    schedule: Schedule = Schedule(epochs=1000, iterations=250, val_iterations=50, mirroring=True)

    def freezes_encoder(self) -> bool:
        return bool(self.freeze_encoder or getattr(self, "linear_probe", False))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        recorded = cell_settings.read(self.output_folder)
        self.cell, self._cell_notes = cell_settings.resolve(recorded, os.environ)
        if recorded is None:
            self._cell_notes.insert(0, f"no {cell_settings.FILE} in {self.output_folder}: not a benchmark cell's "
                                       f"folder, nnU-Net's defaults apply where no variable is set")
        if recorded is not None and bool(recorded.get("freeze_encoder")) != self.freezes_encoder():
            raise CellSettingsError(f"{os.path.join(self.output_folder, cell_settings.FILE)} records freeze_encoder = "
                 f"{recorded.get('freeze_encoder')}, but {type(self).__name__} "
                 f"{'freezes' if self.freezes_encoder() else 'trains'} the encoder; use the cell's own trainer "
                 f"({recorded.get('trainer')})")
        self.cell["freeze_encoder"] = self.freezes_encoder()
        for note in self._cell_notes:
            log.warning("%s", note)
        if self.cell["schedule"]:
            d = self.cell["schedule"]
            try:
                self.apply_schedule(Schedule(**{k: d[k] for k in Schedule.__dataclass_fields__ if k in d}))
            except TypeError as e:
                raise CellSettingsError(f"the cell's schedule {d} is incomplete ({e}); give epochs, iterations and val_iterations") from None
        self.cell["schedule"] = {k: getattr(self.schedule, k) for k in Schedule.__dataclass_fields__}
        if self.cell["seed"] is not None:
            s = int(self.cell["seed"])
            random.seed(s)
            np.random.seed(s % 2 ** 32)
            torch.manual_seed(s)
        self.my_init_kwargs[cell_settings.CHECKPOINT_KEY] = {k: self.cell[k] for k in cell_settings.COMPARED}

    def do_split(self):
        split = self.cell.get("split")
        if not split:
            return super().do_split()
        tr, val = list(split["train"]), list(split["val"])
        self.print_to_log_file(f"benchmark split {self.cell['split_file']}: {len(tr)} training and {len(val)} "
                               f"validation cases")
        return tr, val

    def bundle_settings(self):
        """(bundle, stem strategy) of the cell; the plans entry when the cell records no bundle."""
        if self.cell.get("bundle"):
            transfer = self.plans_manager.plans.get("mmpretrain_transfer", {})
            return self.cell["bundle"], self.cell.get("stem") or transfer.get("stem_strategy") or "modality"
        path, strategy = super().bundle_settings()
        return path, self.cell.get("stem") or strategy

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's (or the classifier's) loading, then: the checkpoint's recorded cell settings
        must match the ones in use, else one line and exit code 2."""
        current = self.my_init_kwargs[cell_settings.CHECKPOINT_KEY]
        super().load_checkpoint(filename_or_checkpoint)
        recorded = (self.my_init_kwargs or {}).get(cell_settings.CHECKPOINT_KEY)
        self.my_init_kwargs[cell_settings.CHECKPOINT_KEY] = current
        name = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "the checkpoint"
        if recorded is None:
            log.warning("%s records no benchmark-cell settings (written by an older version): continuing with %s",
                        name, current)
            return
        diff = cell_settings.differences(recorded, current)
        if diff:
            raise CellSettingsError(f"{name} was trained with other cell settings ({'; '.join(f'{k}: {recorded.get(k)} vs now {current.get(k)}' for k in diff)}); "
                 f"unset the overriding variables or train in a new folder")

    def on_train_start(self):
        super().on_train_start()          # PretrainedEncoder injects, then FrozenEncoderStages freezes
        for note in self._cell_notes:
            self.print_to_log_file("WARNING " + note)
        self.print_to_log_file(f"benchmark cell: seed {self.cell['seed']}, schedule {self.schedule}, "
                               f"freeze_encoder {self.cell['freeze_encoder']}, stem {self.cell['stem']}, "
                               f"bundle {self.cell['bundle']}")


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
