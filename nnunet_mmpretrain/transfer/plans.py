"""Transfer pretraining plans to a downstream dataset.

The downstream plans keep the pretraining configuration's spacing, patch size and architecture
(so the encoder's weights fit) and take the downstream dataset's own channels, normalisation,
intensity properties, reader/writer and median shape. Compare nnU-Net's
``nnUNetv2_move_plans_between_datasets``, which keeps the source's channel-dependent entries.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from copy import deepcopy
from typing import Optional, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain.io_utils import atomic_write_json, normal_modes, swap_folder
from nnunet_mmpretrain.planning.compat import IncompatiblePlansError, check_compatible, resolved_configuration
from nnunet_mmpretrain.planning.nnunet_plan import fingerprint
from nnunet_mmpretrain.transfer.bundle import load_bundle
from nnunet_mmpretrain.transfer.inject import check_bundle_fits


def corpus_reason(dataset_name: str) -> Optional[str]:
    """Why ``dataset_name`` is a pretraining corpus (its raw dataset.json or its plans say so), or None."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    dj = os.path.join(str(nnUNet_raw), dataset_name, "dataset.json")
    if os.path.isfile(dj):
        with open(dj) as f:
            if json.load(f).get("mmpretrain_corpus"):
                return f"{dj} marks it as a pretraining corpus"
    pre = os.path.join(str(nnUNet_preprocessed), dataset_name)
    for name in sorted(os.listdir(pre)) if os.path.isdir(pre) else []:
        if name.endswith(".json") and name not in ("dataset.json", "dataset_fingerprint.json", "splits_final.json"):
            try:
                with open(os.path.join(pre, name)) as f:
                    d = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(d, dict) and "configurations" in d and "mmpretrain" in d:
                return f"{os.path.join(pre, name)} are pretraining corpus plans"
    return None


def _bundle_entry(bundle: str, dst_dir: str, target_plans: str) -> dict:
    """Plans entries naming ``bundle`` so that they survive moving the nnU-Net folders: relative to
    ``$nnUNet_results`` when the bundle lies there, otherwise a copy beside the plans
    (``<dataset>/mmpretrain_bundle_<plans>``) relative to ``$nnUNet_preprocessed``."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    src = os.path.realpath(bundle if os.path.isdir(bundle) else os.path.dirname(bundle))
    if nnUNet_results:
        res = os.path.realpath(str(nnUNet_results))
        if os.path.commonpath([src, res]) == res:
            return {"bundle": os.path.relpath(src, res), "bundle_root": "nnUNet_results", "bundle_written_at": src}
    dst = os.path.join(dst_dir, f"mmpretrain_bundle_{target_plans}")
    if os.path.realpath(dst) != src:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.partial-", dir=dst_dir)
        try:
            shutil.copytree(src, os.path.join(tmp, "b"))
            normal_modes(tmp)
            swap_folder(os.path.join(tmp, "b"), dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    pre = os.path.realpath(str(nnUNet_preprocessed))
    return {"bundle": os.path.relpath(os.path.realpath(dst), pre), "bundle_root": "nnUNet_preprocessed",
            "bundle_written_at": os.path.realpath(dst), "bundle_copied_from": src}


def resolve_bundle(transfer: dict) -> Tuple[Optional[str], Optional[str]]:
    """(path to use, path recorded when the plans were written) of the plans' bundle entry; the
    first is resolved against the current ``$nnUNet_results`` / ``$nnUNet_preprocessed``."""
    rel = transfer.get("bundle")
    if not rel:
        return None, None
    root = transfer.get("bundle_root")
    if root is None:                      # plans written before relative entries: an absolute path
        return rel, rel
    base = os.environ.get(root)
    if not base:
        from nnunetv2 import paths
        base = getattr(paths, root, None)
    return (os.path.join(str(base), rel) if base else rel), transfer.get("bundle_written_at")


def transfer_plans(source_dataset: Optional[int], target_dataset: int, source_plans: str = "mmPretrainPlans",
                   target_plans: Optional[str] = None, configurations: Sequence[str] = ("3d_fullres",),
                   num_processes: int = 2, check_against: Optional[str] = None,
                   bundle: Optional[str] = None, stem_strategy: Optional[str] = None) -> str:
    """Write ``$nnUNet_preprocessed/<target>/<target_plans>.json``; returns its path.

    ``source_dataset`` None: the pretraining plans come from ``bundle`` (e.g. one imported from
    nnssl). A target that is a pretraining corpus is refused.
    ``check_against``: an existing downstream plans identifier whose topology must equal the
    pretraining one (raises :class:`IncompatiblePlansError` naming each differing stage).
    ``bundle`` / ``stem_strategy``: written into the plans for ``nnUNetTrainerMMFinetune``
    (the bundle relative to an nnU-Net folder, see :func:`_bundle_entry`).
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    dst_name = convert_id_to_dataset_name(target_dataset)
    target_plans = target_plans or source_plans
    why = corpus_reason(dst_name)
    if why:
        raise IncompatiblePlansError(f"-t {target_dataset} ({dst_name}) is a pretraining corpus ({why}): give the "
                                     f"labelled downstream dataset as -t; no plans were written.")
    loaded = None
    if bundle is not None:
        loaded = load_bundle(bundle)
    if source_dataset is None:
        if loaded is None:
            raise ValueError("give the pretraining corpus (-s) or a bundle (--bundle) to take the plans from.")
        src_name, src = f"bundle {os.path.abspath(bundle)}", json.loads(loaded["plans"])
        source_plans = src.get("plans_name", source_plans)
    else:
        src_name = convert_id_to_dataset_name(source_dataset)
        src_file = os.path.join(str(nnUNet_preprocessed), src_name, source_plans + ".json")
        if not os.path.isfile(src_file):
            raise FileNotFoundError(f"pretraining plans {src_file} do not exist: run "
                                    f"nnUNetv2_mmpretrain_plan_and_preprocess -d {source_dataset} first.")
        with open(src_file) as f:
            src = json.load(f)
    if loaded is not None:
        for c in configurations:
            check_bundle_fits(loaded, resolved_configuration(src, c)["architecture"], f"the {c} plans ({src_name})")
    dst_dir = os.path.join(str(nnUNet_preprocessed), dst_name)
    if not os.path.isfile(os.path.join(dst_dir, "dataset_fingerprint.json")):
        fingerprint(target_dataset, num_processes)
    with open(os.path.join(dst_dir, "dataset_fingerprint.json")) as f:
        fp = json.load(f)
    with open(os.path.join(str(nnUNet_raw), dst_name, "dataset.json")) as f:
        dj = json.load(f)

    if check_against is not None:
        other_file = os.path.join(dst_dir, check_against + ".json")
        with open(other_file) as f:
            other = json.load(f)
        for c in configurations:
            check_compatible(resolved_configuration(src, c)["architecture"],
                             resolved_configuration(other, c)["architecture"], f"{other_file} ({c})")

    planner = ExperimentPlanner(target_dataset)    # nnU-Net's own channel-wise normalisation rules
    schemes, use_mask = planner.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
    cases = get_filenames_of_train_images_and_targets(os.path.join(str(nnUNet_raw), dst_name), dj)
    example = cases[next(iter(cases))]["images"][0]
    rw = determine_reader_writer_from_dataset_json(dj, example, allow_nonmatching_filename=True, verbose=False)

    out = deepcopy(src)
    block = out.pop("mmpretrain", {})
    out["dataset_name"] = dst_name
    out["plans_name"] = target_plans
    out["image_reader_writer"] = rw.__name__
    out["foreground_intensity_properties_per_channel"] = fp["foreground_intensity_properties_per_channel"]
    out["configurations"] = {}
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    for c in configurations:
        conf = resolved_configuration(src, c)
        if len(conf["patch_size"]) == 3 and any(len(s) < 3 for s in fp["shapes_after_crop"]):
            raise IncompatiblePlansError(f"{dst_name} holds 2D images but the pretraining configuration {c} is 3D")
        conf["data_identifier"] = f"{target_plans}_{c}"
        conf["normalization_schemes"] = schemes
        conf["use_mask_for_norm"] = use_mask
        tf, tb = out["transpose_forward"], out["transpose_backward"]
        target_spacing = [conf["spacing"][i] for i in tb]          # back to the images' axis order
        shapes = np.array([compute_new_shape(sh, sp, target_spacing)
                           for sh, sp in zip(fp["shapes_after_crop"], fp["spacings"])])
        conf["median_image_size_in_voxels"] = [float(v) for v in np.median(shapes, 0)[tf]]
        out["configurations"][c] = conf
    med_sp = np.median(np.array(fp["spacings"]), 0)
    med_sh = np.median(np.array(fp["shapes_after_crop"]), 0)
    out["original_median_spacing_after_transp"] = [float(med_sp[i]) for i in out["transpose_forward"]]
    out["original_median_shape_after_transp"] = [int(round(med_sh[i])) for i in out["transpose_forward"]]
    out["mmpretrain_transfer"] = {
        "source_dataset": src_name, "source_plans": source_plans, "configurations": list(configurations),
        "pretraining_modalities": block.get("modalities"), "vocabulary": block.get("vocabulary"),
        "downstream_channels": dj["channel_names"],
    }
    if bundle is not None:
        os.makedirs(dst_dir, exist_ok=True)
        out["mmpretrain_transfer"].update(_bundle_entry(bundle, dst_dir, target_plans))
    if stem_strategy is not None:
        out["mmpretrain_transfer"]["stem_strategy"] = stem_strategy
    path = os.path.join(dst_dir, target_plans + ".json")
    atomic_write_json(out, path)
    # nnU-Net's preprocessing and trainers read the dataset.json beside the plans (its planner
    # copies it; a dataset never planned by nnU-Net has none yet)
    atomic_write_json(dj, os.path.join(dst_dir, "dataset.json"))
    return path
