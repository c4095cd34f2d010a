"""``nnUNetTrainerMMClassifier``: image classification on nnU-Net's preprocessing (being written)."""
from __future__ import annotations

__all__: list = []
