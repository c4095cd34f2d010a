"""Trainers only the tests use; the tests add this folder to ``nnUNet_extTrainer`` (conftest)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.classification.trainer import MMClassifierBase
from nnunet_mmpretrain.training.finetune import PretrainedEncoder
from nnunet_mmpretrain.training.finetune_augment import AlignedTemplateSubstitution as TemplateSubstitution, DADAugmentation
from nnunet_mmpretrain.training.pretrain_variants import nnUNetTrainerMMPretrain_cpuDownstreamStemLong, nnUNetTrainerMMPretrain_dad
from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule

SMOKE = Schedule(epochs=2, iterations=4, val_iterations=2)


class nnUNetTrainerMMSmoke(ShortSchedule, nnUNetTrainer):
    """The stock trainer, 2 epochs x 4 iterations, 2 validation iterations, no mirroring."""
    schedule = SMOKE


class nnUNetTrainerMMFinetune_smoke(ShortSchedule, PretrainedEncoder, nnUNetTrainer):
    """Fine-tuning from a bundle, 2 epochs x 4 iterations, no mirroring."""
    schedule = SMOKE


class nnUNetTrainerMMFinetune_templateAug_smoke(ShortSchedule, TemplateSubstitution, PretrainedEncoder, nnUNetTrainer):
    """Aligned template substitution, 2 epochs x 4 iterations."""
    schedule = SMOKE


class nnUNetTrainerMMFinetune_templateAugConsistency_smoke(ShortSchedule, TemplateSubstitution, PretrainedEncoder,
                                                           nnUNetTrainer):
    """Substitution + consistency term, 2 epochs x 4 iterations."""
    schedule = SMOKE
    consistency_weight = 0.1


class nnUNetTrainerMMFinetune_dad_smoke(ShortSchedule, DADAugmentation, PretrainedEncoder, nnUNetTrainer):
    """DAD augmentation on every sample, 2 epochs x 4 iterations."""
    schedule = SMOKE
    dad_p = 1.0


class nnUNetTrainerMMClassifier_smoke(ShortSchedule, MMClassifierBase):
    """Classifier, 2 epochs x 1 iteration."""
    schedule = Schedule(epochs=2, iterations=1, val_iterations=1, save_every=50)
    warmup_epochs = 0


class nnUNetTrainerMMClassifier_scratch_smoke(nnUNetTrainerMMClassifier_smoke):
    use_bundle = False


class nnUNetTrainerMMClassifier_linearProbe_smoke(nnUNetTrainerMMClassifier_smoke):
    use_bundle, linear_probe = True, True


class nnUNetTrainerMMPretrain_cpuAll_3epochs(nnUNetTrainerMMPretrain_cpuDownstreamStemLong):
    """The joint view over every modality of the case through the downstream stem, 3 epochs x 3 iterations."""
    schedule = Schedule(epochs=3, iterations=3, val_iterations=1, save_every=2)
    warmup_epochs = 1


class nnUNetTrainerMMPretrain_dad_3epochs(nnUNetTrainerMMPretrain_dad):
    """DAD pretraining on every view, 3 epochs x 3 iterations."""
    schedule = Schedule(epochs=3, iterations=3, val_iterations=1, save_every=2)
    warmup_epochs = 1
    dad_p = 1.0
