"""Shim for nnU-Net's trainer lookup (``nnUNet_extTrainer`` points at this folder).

nnU-Net imports every module here as a top-level module and looks for the requested class by
name, so this module re-exports the plugin's trainers from the installed package (relative
imports would break). Add new trainer modules to the list below.
"""
from nnunet_mmpretrain.training.pretrain import nnUNetTrainerMMPretrain  # noqa: F401
from nnunet_mmpretrain.training.pretrain_variants import *  # noqa: F401,F403
from nnunet_mmpretrain.training.finetune import (  # noqa: F401
    nnUNetTrainerMMFinetune, nnUNetTrainerMMFinetune_dad, nnUNetTrainerMMFinetune_frozen,
    nnUNetTrainerMMFinetune_templateAug, nnUNetTrainerMMFinetune_templateAugConsistency,
    nnUNetTrainerMMFinetune_templateAugRandom, nnUNetTrainerMMFinetune_warmup,
    nnUNetTrainerMMFinetune_rehearsal)
from nnunet_mmpretrain.benchmark.trainers import *  # noqa
from nnunet_mmpretrain.benchmark.cell_settings import CellSettingsError
from nnunet_mmpretrain.benchmark.trainers import BenchmarkCell
from nnunet_mmpretrain.classification.trainer import *  # noqa
from nnunet_mmpretrain.classification.labels import ClassLabelError
from nnunet_mmpretrain.classification.trainer import MMClassifierBase
from nnunet_mmpretrain.cli._common import exit_2_on_bad_input

# nnUNetv2_train is nnU-Net's command: a bad class table (raised by the classifier before nnU-Net makes
# any folder) becomes one error line and exit code 2 here, at the plugin's entry point
exit_2_on_bad_input(MMClassifierBase, (ClassLabelError,))
# the same for a benchmark cell whose recorded settings cannot be used or differ from its checkpoint's
exit_2_on_bad_input(BenchmarkCell, (CellSettingsError,), ("__init__", "load_checkpoint"))
