"""The trainers' user-facing errors, in a module of their own so that every trainer module (and the
layers above) can raise or catch them without importing a trainer."""
from __future__ import annotations


class PretrainingError(RuntimeError):
    """A clear, user-facing problem with the corpus, plans or checkpoint of pretraining."""


class FinetuneError(RuntimeError):
    """A clear, user-facing problem with the bundle or its settings (fine-tuning, classification)."""
