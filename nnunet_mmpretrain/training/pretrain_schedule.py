"""Learning-rate schedule of pretraining."""
from __future__ import annotations

import math


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
