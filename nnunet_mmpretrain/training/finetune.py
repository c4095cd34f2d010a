"""``nnUNetTrainerMMFinetune``: stock nnU-Net segmentation training that starts from a pretrained
encoder bundle.

    export nnUNet_mmpretrain_bundle=/path/to/bundle       # or: transfer_plans --bundle writes it into the plans
    nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerMMFinetune -p mmPretrainPlans

The bundle is named by ``$nnUNet_mmpretrain_bundle`` or, when that is unset, by the plans entry
``mmpretrain_transfer.bundle``; the stem strategy by ``$nnUNet_mmpretrain_stem`` or
``mmpretrain_transfer.stem_strategy`` (default ``modality``). The weights are injected when a
fresh training starts (not on ``--c`` / ``--val``, where the checkpoint holds them), after nnU-Net
built (and maybe compiled / DDP-wrapped) the network; what was loaded, adapted or left random is
written to the log and to ``pretrained_weights_report.json``. Inference is plain nnU-Net: the
architecture is the plans' own, so ``nnUNetv2_predict -tr nnUNetTrainerMMFinetune`` works without
the bundle.
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.training.errors import FinetuneError  # noqa: F401 (re-exported)
from nnunet_mmpretrain.training.finetune_augment import (AlignedTemplateSubstitution, DADAugmentation,
                                                         RandomTemplateSubstitution)
from nnunet_mmpretrain.training.freezing import FrozenEncoderStages
from nnunet_mmpretrain.training.pretrained_encoder import PretrainedEncoder
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule, WarmupPoly


class LinearWarmup:
    """Mixin: nnU-Net's SGD with a linear warm-up of ``warmup_epochs`` (nnssl uses 50 of 1000)."""

    warmup_epochs: int = 50

    def configure_optimizers(self):
        opt, _ = super().configure_optimizers()
        return opt, WarmupPoly(opt, self.initial_lr, self.num_epochs, self.warmup_epochs)


TemplateSubstitution = AlignedTemplateSubstitution


class nnUNetTrainerMMFinetune(PretrainedEncoder, nnUNetTrainer):
    """nnU-Net's default schedule (1000 epochs), pretrained encoder."""


class nnUNetTrainerMMFinetune_frozen(FrozenEncoderStages, PretrainedEncoder, nnUNetTrainer):
    """Linear-probe-like: encoder stages frozen, stem and decoder trained."""
    freeze_encoder = True


class nnUNetTrainerMMFinetune_warmup(LinearWarmup, PretrainedEncoder, nnUNetTrainer):
    """Linear LR warm-up over 50 epochs, then nnU-Net's poly decay."""


class nnUNetTrainerMMFinetune_templateAug(TemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Pretrained encoder + BrainMVP's template substitution, templates aligned with each case
    (k ~ U{0..min(3, C-1)} channels per sample)."""


class nnUNetTrainerMMFinetune_templateAugConsistency(TemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Template substitution + BrainMVP's consistency term: two differently substituted copies of
    each sample, MSE between their bottleneck features x 0.1."""
    consistency_weight = 0.1


class nnUNetTrainerMMFinetune_templateAugRandom(RandomTemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Template substitution at random positions (for bundles of corpora that are not on one grid)."""


class nnUNetTrainerMMFinetune_dad(DADAugmentation, PretrainedEncoder, nnUNetTrainer):
    """Pretrained encoder + domain adaptive denormalization of the input channels (p = 0.3)."""


class nnUNetTrainerMMFinetune_rehearsal(ShortSchedule, PretrainedEncoder, nnUNetTrainer):
    """The real-size rehearsal (scripts/rehearse_real_size.py): 1 epoch x 2 iterations + 1 validation
    iteration at the planned patch, to measure time and memory per step. nnU-Net's final
    sliding-window validation is skipped (the rehearsal times ``nnUNetv2_predict`` on its own)."""
    schedule = Schedule(epochs=1, iterations=2, val_iterations=1, save_every=1)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("rehearsal: final validation skipped")
