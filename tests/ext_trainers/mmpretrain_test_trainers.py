"""Trainers only the tests use; the tests add this folder to ``nnUNet_extTrainer`` (conftest)."""
from nnunet_mmpretrain.training.pretrain_variants import nnUNetTrainerMMPretrain_dad
from nnunet_mmpretrain.training.schedules import Schedule


class nnUNetTrainerMMPretrain_dad_3epochs(nnUNetTrainerMMPretrain_dad):
    """DAD pretraining on every view, 3 epochs x 3 iterations."""
    schedule = Schedule(epochs=3, iterations=3, val_iterations=1, save_every=2)
    warmup_epochs = 1
    dad_p = 1.0
