"""Predict cases that lack a channel: the missing channel is filled with the pretrained template
of its modality (resampled onto the case), then nnU-Net's own predictor runs unchanged.

Every channel of a case must lie on the grid of its first channel (checked before nnU-Net starts).
nnU-Net needs every channel at inference; BrainMVP's templates are the stand-in it was trained to
accept (template-substitution augmentation). Every substitution is printed and written to
``template_substitutions.json`` in the output folder.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Union

from nnunet_mmpretrain.geometry import Grid
from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_json
from nnunet_mmpretrain.modalities import channels_to_modalities
from nnunet_mmpretrain.transfer.fill import fill_missing_channel

log = logging.getLogger(__name__)


def scan_cases(folder: str, file_ending: str, num_channels: int) -> Dict[str, Dict[int, str]]:
    """case id -> {channel: path} for files named ``CASE_XXXX<file_ending>`` (nnU-Net naming)."""
    pat = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: Dict[str, Dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            ch = int(m.group(2))
            if ch >= num_channels:
                raise ValueError(f"{os.path.join(folder, f)}: channel {ch} but the model has {num_channels} channels "
                                 f"(0..{num_channels - 1}).")
            cases.setdefault(m.group(1), {})[ch] = os.path.join(folder, f)
    if not cases:
        raise ValueError(f"no images named CASE_XXXX{file_ending} in {folder}.")
    return cases


def check_grids(case: str, files: Dict[int, str]) -> None:
    """ValueError naming the file when a channel of ``case`` is not on the grid of its first
    channel (nnU-Net stacks the channels voxel by voxel; its workers would die with a shape error)."""
    import SimpleITK as sitk
    grids = {}
    for c in sorted(files):
        r = sitk.ImageFileReader()
        r.SetFileName(files[c])
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise ValueError(f"{files[c]} cannot be read as an image (damaged or not an image file).") from None
        grids[c] = Grid(tuple(r.GetSize()), tuple(r.GetSpacing()), tuple(r.GetOrigin()), tuple(r.GetDirection()))
    first = min(grids)
    for c, g in grids.items():
        diff = g.mismatch(grids[first]) if len(g.size) == len(grids[first].size) else "dimension differs"
        if diff:
            raise ValueError(f"{files[c]}: channel {c} of case {case} is not on the grid of channel {first} "
                             f"({files[first]}; {diff}): resample it onto that grid before prediction.")


def complete_cases(input_folder: str, work_folder: str, dataset_json: dict, bundle_folder: Optional[str]) -> dict:
    """Link complete cases into ``work_folder`` and write template-filled copies of incomplete ones.
    Returns {case: {"channels": [...], "modalities": [...], "notes": [...]}} for filled cases."""
    import SimpleITK as sitk
    fe = dataset_json["file_ending"]
    n = len(dataset_json["channel_names"])
    mods = channels_to_modalities(dataset_json["channel_names"])
    subs = {}
    for case, files in scan_cases(input_folder, fe, n).items():
        check_grids(case, files)
        missing = [c for c in range(n) if c not in files]
        if missing and bundle_folder is None:
            raise ValueError(f"case {case} lacks channel(s) {missing} "
                             f"({', '.join(dataset_json['channel_names'][str(c)] for c in missing)}): pass --bundle "
                             f"FOLDER to fill them with the pretrained templates, or provide the files.")
        if not missing:
            for c, p in files.items():
                dst = os.path.join(work_folder, os.path.basename(p))
                try:
                    os.symlink(os.path.abspath(p), dst)
                except OSError:
                    shutil.copy(p, dst)
            continue
        images = {c: (sitk.ReadImage(files[c]) if c in files else None) for c in range(n)}
        res = fill_missing_channel(images, mods, bundle_folder)
        for c, img in res.images.items():
            with atomic_path(os.path.join(work_folder, f"{case}_{c:04d}{fe}")) as tmp:
                sitk.WriteImage(img, tmp, useCompression=True)
        subs[case] = {"channels": list(res.substituted), "modalities": [mods[c] for c in res.substituted],
                      "notes": list(res.notes)}
        log.info("%s: channel(s) %s (%s) filled with the pretrained template%s", case, res.substituted,
                 ", ".join(str(mods[c]) for c in res.substituted), f"; {'; '.join(res.notes)}" if res.notes else "")
    return subs


def predict_with_templates(input_folder: str, output_folder: str, model_folder: str, folds: Sequence[Union[int, str]],
                           bundle_folder: Optional[str], checkpoint: str = "checkpoint_final.pth",
                           device: str = "cpu", use_mirroring: bool = False, num_processes: int = 1) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    with open(os.path.join(model_folder, "dataset.json")) as f:
        dj = json.load(f)
    with tempfile.TemporaryDirectory(prefix="mmpretrain_predict_") as work:
        subs = complete_cases(input_folder, work, dj, bundle_folder)   # every input checked first
        os.makedirs(output_folder, exist_ok=True)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                    device=torch.device(device), verbose=False, allow_tqdm=True)
        predictor.initialize_from_trained_model_folder(model_folder, tuple(folds), checkpoint_name=checkpoint)
        predictor.predict_from_files(work, output_folder, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=num_processes,
                                     num_processes_segmentation_export=num_processes)
    atomic_write_json(subs, os.path.join(output_folder, "template_substitutions.json"))
    return subs
