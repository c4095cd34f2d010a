"""Background loading shared by the trainers that bring their own data loaders (pretraining,
classification): nnU-Net's augmenter processes around a training and a validation loader."""
from __future__ import annotations

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA


def background_loaders(dl_tr, dl_val, pin_memory: bool = False):
    """(training, validation) augmenters: ``$nnUNet_n_proc_DA`` worker processes for training and half
    as many (at least one) for validation; 0 loads in the main process."""
    n = get_allowed_n_proc_DA()
    if n == 0:
        return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    mk = lambda dl, k: NonDetMultiThreadedAugmenter(dl, None, k, num_cached=max(2, k), seeds=None,
                                                    pin_memory=pin_memory, wait_time=0.002)
    return mk(dl_tr, n), mk(dl_val, max(1, n // 2))
