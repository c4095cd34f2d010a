"""Plan and preprocess a labelled nnU-Net dataset through nnU-Net's own API, sized for small
machines: the fingerprint samples fewer foreground voxels (nnU-Net samples 1e8 per channel
whatever the dataset size: ~5 GB and 30-45 s even for tiny data), worker pools stay small, and an
optional tiny configuration is added beside ``3d_fullres``. A patient-grouped ``splits_final.json``
written by the converter beside the raw dataset is placed where nnU-Net reads it
(:func:`nnunet_mmpretrain.subjects.place_splits`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional, Sequence, Type, Union

from nnunet_mmpretrain import subjects
from nnunet_mmpretrain.io_utils import damaged_files
from nnunet_mmpretrain.planning.tiny import add_tiny_configuration, check_tiny

log = logging.getLogger(__name__)


def n_proc_da() -> Optional[int]:
    """``$nnUNet_n_proc_DA`` as an integer (None when unset); ValueError naming the variable when
    it is not a whole number >= 0."""
    v = os.environ.get("nnUNet_n_proc_DA")
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"nnUNet_n_proc_DA={v!r} is not a whole number >= 0: export the number of "
                         f"augmentation workers (0 = in the main process) or unset it.")
    return n


@contextlib.contextmanager
def planner_threads() -> Iterator[None]:
    """nnU-Net's planner calls ``torch.set_num_threads($nnUNet_n_proc_DA)``; 0 (valid for training:
    augmentation in the main process) would fail there, so planning sees 1 instead. A value that
    is not an integer is a ValueError naming the variable."""
    v = os.environ.get("nnUNet_n_proc_DA")
    n = n_proc_da()
    if n is None or n >= 1:
        yield
        return
    os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        os.environ["nnUNet_n_proc_DA"] = v


def damaged_dataset_files(dataset_folder: str) -> None:
    """ValueError naming the first truncated / corrupt NIfTI file of a labelled raw dataset
    (nnU-Net's readers would fill the missing data with zeros)."""
    bad = damaged_files(dataset_folder)
    if bad:
        more = f" ({len(bad) - 1} more damaged file(s))" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0][0]} {bad[0][1]}{more}")


def _planner_class(planner: Union[str, type]):
    if not isinstance(planner, str):
        return planner
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                      current_module="nnunetv2.experiment_planning")
    if cls is None:
        raise ValueError(f"nnU-Net has no planner named {planner!r} (try ExperimentPlanner, "
                         f"nnUNetPlannerResEncM, nnUNetPlannerResEncL)")
    return cls


def fingerprint(dataset_id: int, num_processes: int = 2, foreground_voxels: float = 1e6,
                verify: bool = True, overwrite: bool = True) -> dict:
    """nnU-Net's DatasetFingerprintExtractor with a smaller intensity sample."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    name = convert_id_to_dataset_name(dataset_id)
    if verify:
        damaged_dataset_files(os.path.join(str(nnUNet_raw), name))
        verify_dataset_integrity(os.path.join(str(nnUNet_raw), name), num_processes)
    fpe = DatasetFingerprintExtractor(dataset_id, num_processes, verbose=False)
    fpe.num_foreground_voxels_for_intensitystats = foreground_voxels
    return fpe.run(overwrite_existing=overwrite)


def plan_and_preprocess(dataset_id: int, planner: Union[str, Type] = "ExperimentPlanner",
                        plans_name: Optional[str] = None, configurations: Sequence[str] = ("3d_fullres",),
                        num_processes: int = 2, verify: bool = True, foreground_voxels: float = 1e6,
                        tiny: Optional[dict] = None) -> str:
    """Fingerprint, plan and preprocess ``dataset_id``; returns the plans file path.

    ``tiny``: keyword arguments of :func:`add_tiny_configuration` (e.g. ``{"name": "3d_tiny",
    "patch_size": (32, 32, 32)}``) to add a small configuration that reuses 3d_fullres data.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    if tiny is not None:  # before any work: a tiny configuration nnU-Net could not train
        check_tiny(tiny.get("patch_size", (32, 32, 32)), tiny.get("features", (8, 16, 32)), tiny.get("batch_size", 2))
    fingerprint(dataset_id, num_processes, foreground_voxels, verify)
    with planner_threads():
        _, ident = plan_experiment_dataset(dataset_id, _planner_class(planner), overwrite_plans_name=plans_name)
    preprocess_dataset(dataset_id, ident, tuple(configurations), [num_processes] * len(configurations),
                       show_progress_bar=False)
    name = convert_id_to_dataset_name(dataset_id)
    plans_file = os.path.join(str(nnUNet_preprocessed), name, ident + ".json")
    placed = subjects.place_splits(os.path.join(str(nnUNet_raw), name), os.path.dirname(plans_file))
    if placed:
        log.info(placed)
    if tiny is not None:
        add_tiny_configuration(plans_file, **tiny)
    return plans_file
