"""Training schedules, the one home for them: short schedules as a mixin (so a variant is a few
lines over any nnU-Net trainer) and the learning-rate schedules (:class:`WarmupCosine` for
pretraining and classification, :class:`WarmupPoly` for fine-tuning with a warm-up).

nnU-Net's own short trainers (``nnUNetTrainer_5epochs``, ...) still run 250 training and 50
validation iterations per epoch and mirror at inference, which is far too slow for tests and the
demo on 2 CPU cores. ``ShortSchedule`` sets all of it from one class attribute::

    class nnUNetTrainerMMSmoke(ShortSchedule, nnUNetTrainer):
        schedule = Schedule(epochs=2, iterations=4, val_iterations=2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    epochs: int
    iterations: int
    val_iterations: int
    mirroring: bool = False      # training mirroring augmentation and test-time mirroring
    save_every: int = 50
    initial_lr: float | None = None


class ShortSchedule:
    """Mixin (put it before the nnU-Net trainer class) applying :attr:`schedule`."""

    schedule: Schedule = Schedule(epochs=2, iterations=4, val_iterations=2)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_schedule(self.schedule)

    def apply_schedule(self, s: Schedule) -> None:
        """Set nnU-Net's epoch, iteration, checkpoint and learning-rate attributes from ``s``."""
        self.schedule = s
        self.num_epochs = s.epochs
        self.num_iterations_per_epoch = s.iterations
        self.num_val_iterations_per_epoch = s.val_iterations
        self.save_every = s.save_every
        if s.initial_lr is not None:
            self.initial_lr = s.initial_lr

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rot, dummy_2d, initial_patch, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.schedule.mirroring:
            mirror_axes = None
            self.inference_allowed_mirroring_axes = None
        return rot, dummy_2d, initial_patch, mirror_axes


class WarmupCosine:
    """Per-epoch LR: linear warm-up over ``warmup`` epochs, then cosine to 0; ``step(epoch)``
    sets every group's lr from its ``initial_lr`` (nnU-Net calls ``step(current_epoch)``)."""

    def __init__(self, optimizer, num_epochs: int, warmup: int):
        self.optimizer, self.num_epochs, self.warmup = optimizer, max(1, num_epochs), max(0, warmup)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def factor(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        t = (epoch - self.warmup) / max(1, self.num_epochs - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def step(self, epoch: int) -> None:
        f = self.factor(epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f


class WarmupPoly:
    """Linear warm-up over ``warmup`` epochs, then nnU-Net's polynomial decay (exponent 0.9)."""

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, warmup: int):
        self.optimizer, self.initial_lr, self.num_epochs, self.warmup = optimizer, initial_lr, num_epochs, warmup

    def step(self, epoch: int) -> None:
        if epoch < self.warmup:
            lr = self.initial_lr * (epoch + 1) / (self.warmup + 1)
        else:
            lr = self.initial_lr * (1 - (epoch - self.warmup) / max(1, self.num_epochs - self.warmup)) ** 0.9
        for g in self.optimizer.param_groups:
            g["lr"] = lr


def backward_and_step(loss: torch.Tensor, optimizer, grad_scaler, params, clip: float) -> None:
    """nnU-Net's update: backward (through the AMP grad scaler when there is one), gradient-norm
    clipping of ``params`` at ``clip``, optimizer step."""
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
