"""Label-free fingerprint of a pretraining corpus, from nnU-Net's own building blocks.

nnU-Net's fingerprint needs labels (it samples intensities inside the foreground); a corpus has
none. Here the foreground is the nonzero (brain) mask that nnU-Net's ``crop_to_nonzero`` makes,
and the intensity samples are drawn per *modality* (cases carry different modality sets) with
``DatasetFingerprintExtractor.collect_foreground_intensities``.

The result is written as nnU-Net's ``dataset_fingerprint.json`` (so nnU-Net's planners read it):
spacings and shapes after cropping per case, the median relative size after cropping, and
``foreground_intensity_properties_per_channel`` for the single encoder input channel ("0", pooled
over modalities), plus a block ``mmpretrain`` with the statistics per modality.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_mmpretrain.corpus.loading import load_case_on_common_grid
from nnunet_mmpretrain.corpus.manifest import CorpusCase, CorpusManifest
from nnunet_mmpretrain.parallel import map_with_progress



def load_case_arrays(manifest: CorpusManifest, case: CorpusCase, resample: bool = False
                     ) -> Tuple[np.ndarray, dict, List[str]]:
    """Read a case the way nnU-Net's SimpleITKIO does.

    Returns ``data`` (C, Z, Y, X) float32 with one channel per modality in vocabulary order,
    nnU-Net's properties dict (``spacing`` in array order and ``sitk_stuff``) and the modality
    names. With ``resample`` the modalities are first put on one grid
    (:func:`nnunet_mmpretrain.corpus.loading.load_case_on_common_grid`).
    """
    mods = case.modalities
    if resample:
        import SimpleITK as sitk
        imgs = load_case_on_common_grid(manifest, case)
        ref = imgs[mods[0]]
        data = np.stack([sitk.GetArrayFromImage(imgs[m]).astype(np.float32) for m in mods])
        props = {"sitk_stuff": {"spacing": ref.GetSpacing(), "origin": ref.GetOrigin(),
                                "direction": ref.GetDirection()},
                 "spacing": list(ref.GetSpacing())[::-1]}
        return data, props, mods
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    data, props = SimpleITKIO().read_images([manifest.path(case, m) for m in mods])
    return data.astype(np.float32, copy=False), props, mods


def _analyze(args):
    manifest, case, resample, num_samples = args
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    data, props, mods = load_case_arrays(manifest, case, resample)
    cropped, seg, _ = crop_to_nonzero(data, None)
    fg = (seg >= 0).astype(np.int8)   # crop_to_nonzero marks outside the nonzero mask with -1
    samples, _ = DatasetFingerprintExtractor.collect_foreground_intensities(fg, cropped, num_samples=num_samples)
    rel = float(np.prod(cropped.shape[1:]) / np.prod(data.shape[1:]))
    return case.case_id, mods, [float(s) for s in props["spacing"]], [int(s) for s in cropped.shape[1:]], rel, samples


def _stats(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {k: float("nan") for k in ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")}
    p005, med, p995 = np.percentile(v, (0.5, 50.0, 99.5))
    return {"mean": float(np.mean(v)), "median": float(med), "std": float(np.std(v)), "min": float(np.min(v)),
            "max": float(np.max(v)), "percentile_99_5": float(p995), "percentile_00_5": float(p005)}


def corpus_fingerprint(manifest: CorpusManifest, resample_cases: Optional[set] = None,
                       num_processes: int = 2, samples_per_scan: int = 10000) -> dict:
    """Compute the fingerprint (see module docstring). ``resample_cases``: ids whose modalities
    must be put on one grid first (from the validation report)."""
    resample_cases = resample_cases or set()
    jobs = [(manifest, c, c.case_id in resample_cases, samples_per_scan) for c in manifest.cases]
    res = map_with_progress(_analyze, jobs, num_processes, "corpus fingerprint")
    per_mod: Dict[str, list] = {}
    spacings, shapes, rels = [], [], []
    for _, mods, sp, sh, rel, samples in res:
        spacings.append(sp)
        shapes.append(sh)
        rels.append(rel)
        for m, s in zip(mods, samples):
            per_mod.setdefault(m, []).append(np.asarray(s))
    per_mod_stats = {m: _stats(np.concatenate(v)) for m, v in per_mod.items()}
    pooled = _stats(np.concatenate([np.concatenate(v) for v in per_mod.values()]))
    return {
        "foreground_intensity_properties_per_channel": {"0": pooled},
        "median_relative_size_after_cropping": float(np.median(rels)),
        "shapes_after_crop": shapes,
        "spacings": spacings,
        "mmpretrain": {
            "case_ids": [r[0] for r in res],
            "modalities_per_case": {r[0]: r[1] for r in res},
            "intensity_per_modality": per_mod_stats,
            "scans_per_modality": {m: len(v) for m, v in per_mod.items()},
            "foreground": "nonzero mask (crop_to_nonzero)",
        },
    }
