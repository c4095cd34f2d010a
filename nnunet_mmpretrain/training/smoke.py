"""Short-schedule variants of the stock nnU-Net trainer (plumbing checks, tests, the demo)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mmpretrain.training.schedules import Schedule, ShortSchedule


class nnUNetTrainerMMSmoke(ShortSchedule, nnUNetTrainer):
    """2 epochs x 4 iterations, 2 validation iterations, no mirroring."""
    schedule = Schedule(epochs=2, iterations=4, val_iterations=2)


class nnUNetTrainerMMDemo(ShortSchedule, nnUNetTrainer):
    """The demo's from-scratch baseline: 12 epochs x 20 iterations, no mirroring."""
    schedule = Schedule(epochs=12, iterations=20, val_iterations=4)
