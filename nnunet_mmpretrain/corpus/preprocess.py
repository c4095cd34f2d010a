"""Corpus planning and preprocessing in nnU-Net's space.

``plan_and_preprocess_corpus`` is what ``nnUNetv2_mmpretrain_plan_and_preprocess -d ID`` runs:

1. read ``$nnUNet_raw/DatasetID_Name/manifest.json`` and validate every case,
2. write the label-free fingerprint as ``$nnUNet_preprocessed/DatasetID_Name/dataset_fingerprint.json``
   and a ``dataset.json`` for nnU-Net's planner in the raw folder (1 channel "MRI"; its
   ``dataset`` entry lists one image per case, which is all the planner reads),
3. plan with a pretraining planner (ResEnc M/L/XL or "like" a downstream plans file) ->
   ``mmPretrainPlans.json``,
4. preprocess each case with nnU-Net's ``DefaultPreprocessor.run_case_npy`` (crop to nonzero,
   z-score per channel on the brain mask, resample) into nnU-Net's blosc2 format under
   ``mmPretrainPlans_3d_fullres/``. Each case keeps all its modalities as channels; its
   properties add ``modalities`` (names in channel order), ``source``, ``subject`` and keep
   nnU-Net's ``bbox_used_for_cropping`` / ``shape_before_cropping`` (the atlas position of a patch
   follows from them). ``corpus_cases.json`` beside the plans lists case -> modalities, source.

Two runs on one corpus at once are refused (a lock in the preprocessed folder: they would share
and remove the same ``.partial/``). Re-running skips finished cases; files are written in the ``.partial/`` subfolder and renamed
into place, the properties file last, so a killed run never leaves a case that looks finished
(nor a stray ``.b2nd`` that nnU-Net would list as a case).
"""
from __future__ import annotations

import os
from copy import deepcopy
from dataclasses import dataclass
from typing import Optional

import numpy as np

from nnunet_mmpretrain.corpus.fingerprint import corpus_fingerprint, load_case_arrays
from nnunet_mmpretrain.corpus.manifest import CorpusManifest, load_manifest
from nnunet_mmpretrain.corpus.means import means_for_configuration
from nnunet_mmpretrain.corpus.validate import filtered_manifest, validate_corpus
from nnunet_mmpretrain.io_utils import atomic_write_json, exclusive_lock
from nnunet_mmpretrain.parallel import map_with_progress
from nnunet_mmpretrain.planning.pretrain_planner import PLANS_NAME, PRESETS

CONFIGURATION = "3d_fullres"
PARTIAL = ".partial"   # subfolder of the data folder for files being written


def corpus_dataset_json(manifest: CorpusManifest) -> dict:
    """The dataset.json nnU-Net's planner reads for a corpus (1 encoder input channel)."""
    first = {c.case_id: manifest.path(c, c.modalities[0]) for c in manifest.cases}
    return {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "reconstruction": 1},
        "numTraining": sum(len(c.images) for c in manifest.cases),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "name": manifest.name,
        "description": "nnunet-mmpretrain pretraining corpus (unlabelled); written from manifest.json. The "
                       "'dataset' entry lists one image per case for nnU-Net's planner; 'label' is unused.",
        "dataset": {cid: {"images": [p], "label": p} for cid, p in first.items()},
        "mmpretrain_corpus": True,
    }


def _per_case_configuration(configuration_manager, n_channels: int):
    """A ConfigurationManager whose per-channel lists cover ``n_channels`` (the plans have 1)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    conf = deepcopy(configuration_manager.configuration)
    conf["normalization_schemes"] = [conf["normalization_schemes"][0]] * n_channels
    conf["use_mask_for_norm"] = [conf["use_mask_for_norm"][0]] * n_channels
    return ConfigurationManager(conf)


def _preprocess_one(args):
    manifest, case, resample, plans_file, out_dir = args
    out = os.path.join(out_dir, case.case_id)
    if os.path.isfile(out + ".pkl") and os.path.isfile(out + ".b2nd"):
        return case.case_id, "skipped"
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import comp_blosc2_params
    pm = PlansManager(plans_file)
    data, props, mods = load_case_arrays(manifest, case, resample)
    cm = _per_case_configuration(pm.get_configuration(CONFIGURATION), len(mods))
    fg_props = {str(i): pm.foreground_intensity_properties_per_channel["0"] for i in range(len(mods))}
    pm.plans["foreground_intensity_properties_per_channel"] = fg_props
    pre = DefaultPreprocessor(verbose=False)
    data, seg, props = pre.run_case_npy(data, None, props, pm, cm, {"labels": {"background": 0}})
    props.update(modalities=mods, source=case.source, subject=case.subject, session=case.session,
                 case_id=case.case_id)
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    bd, cd = comp_blosc2_params(data.shape, tuple(cm.patch_size), data.itemsize)
    bs, cs = comp_blosc2_params(seg.shape, tuple(cm.patch_size), seg.itemsize)
    # temporary files live in a subfolder: nnU-Net lists every *.b2nd of the data folder as a case
    tmp = os.path.join(out_dir, PARTIAL, f"{case.case_id}_{os.getpid()}")
    try:
        nnUNetDatasetBlosc2.save_case(data, seg, props, tmp, chunks=cd, blocks=bd, chunks_seg=cs, blocks_seg=bs)
        os.replace(tmp + ".b2nd", out + ".b2nd")
        os.replace(tmp + "_seg.b2nd", out + "_seg.b2nd")
        os.replace(tmp + ".pkl", out + ".pkl")   # last: marks the case finished
    finally:
        for suf in (".b2nd", "_seg.b2nd", ".pkl"):
            if os.path.exists(tmp + suf):
                os.remove(tmp + suf)
    return case.case_id, "done"


@dataclass
class CorpusPlanResult:
    plans_file: str
    data_folder: str
    done: int
    skipped: int
    seconds_preprocessing: float
    left_out: dict


def plan_and_preprocess_corpus(dataset_id: int, preset: str = "ResEncM", like: Optional[dict] = None,
                               resample: bool = False, skip_bad: bool = False, num_processes: int = 2,
                               plan_only: bool = False, gpu_memory_target_in_gb: Optional[float] = None,
                               samples_per_scan: int = 10000, allow_duplicates: bool = False) -> CorpusPlanResult:
    import time
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    raw = os.path.join(str(nnUNet_raw), name)
    manifest = load_manifest(raw)
    report = validate_corpus(manifest, resample_to_first=resample, on_error="skip" if skip_bad else "stop",
                             num_processes=num_processes, allow_duplicates=allow_duplicates)
    if not skip_bad:
        report.raise_if_bad()
    manifest = filtered_manifest(manifest, report)
    resample_ids = {cid for cid, ms in report.resample.items() if ms}
    pre_dir = os.path.join(str(nnUNet_preprocessed), name)
    os.makedirs(pre_dir, exist_ok=True)
    with exclusive_lock(pre_dir, "nnUNetv2_mmpretrain_plan_and_preprocess"):  # one run per corpus at a time
        fp = corpus_fingerprint(manifest, resample_ids, num_processes, samples_per_scan)
        atomic_write_json(fp, os.path.join(pre_dir, "dataset_fingerprint.json"))
        dj = corpus_dataset_json(manifest)
        atomic_write_json(dj, os.path.join(raw, "dataset.json"))
        atomic_write_json({k: v for k, v in dj.items() if k != "dataset"}, os.path.join(pre_dir, "dataset.json"))

        if preset not in PRESETS:
            raise ValueError(f"unknown planner preset {preset!r}; choose one of {', '.join(PRESETS)} or --like PLANS")
        planner = PRESETS[preset](dataset_id, gpu_memory_target_in_gb=gpu_memory_target_in_gb)
        planner.like_plans = like
        planner.corpus_block = {
            "name": manifest.name, "atlas_registered": manifest.atlas_registered, "sources": manifest.sources,
            "counts": manifest.counts(), "modalities": manifest.modalities,
            "intensity_per_modality": fp["mmpretrain"]["intensity_per_modality"],
            "left_out_cases": {cid: [r for _, r in reasons] for cid, reasons in report.bad.items()},
            "resampled_cases": sorted(resample_ids),
        }
        planner.plan_experiment()
        plans_file = os.path.join(pre_dir, PLANS_NAME + ".json")
        cases_index = {c.case_id: {"modalities": c.modalities, "source": c.source, "subject": c.subject,
                                   "session": c.session} for c in manifest.cases}
        atomic_write_json(cases_index, os.path.join(pre_dir, "corpus_cases.json"))
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        data_folder = os.path.join(pre_dir, PlansManager(plans_file).get_configuration(CONFIGURATION).data_identifier)
        if plan_only:
            return CorpusPlanResult(plans_file, data_folder, 0, 0, 0.0, planner.corpus_block["left_out_cases"])
        import shutil
        shutil.rmtree(os.path.join(data_folder, PARTIAL), ignore_errors=True)   # debris of a killed run
        os.makedirs(os.path.join(data_folder, PARTIAL), exist_ok=True)
        jobs = [(manifest, c, c.case_id in resample_ids, plans_file, data_folder) for c in manifest.cases]
        t = time.time()
        res = map_with_progress(_preprocess_one, jobs, num_processes, "preprocessing corpus", unordered=True)
        secs = time.time() - t
        shutil.rmtree(os.path.join(data_folder, PARTIAL), ignore_errors=True)
        done = sum(r == "done" for _, r in res)
        if manifest.atlas_registered and done:   # starting values of the modality templates
            means_for_configuration(plans_file, CONFIGURATION)
        return CorpusPlanResult(plans_file, data_folder, done, len(res) - done, secs,
                                planner.corpus_block["left_out_cases"])
