"""Leakage guard: evaluation cases must not be in the pretraining corpus.

Two checks per evaluation case (validation side of a cell's split, and the test cases when the
cell is also evaluated on ``imagesTs``):

* by **id**: the case id equals a corpus case id or subject, or its patient id
  (:func:`splits.patient_of`) equals the patient id of one (another time point of the patient);
* by **content**: the voxel data of one of its channel images equals a corpus image. The hash is
  SHA-256 over the shape and the voxels cast to float32, so a copy written with another
  compression, file name or integer type is still caught (a resampled copy is not).

Corpus hashes are cached in a JSON file keyed by path, size and modification time, so a large
corpus is read once per output folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from nnunet_mmpretrain.benchmark.splits import patient_of
from nnunet_mmpretrain.corpus.manifest import MANIFEST_NAME, load_manifest
from nnunet_mmpretrain.io_utils import atomic_write_json

log = logging.getLogger(__name__)


def image_hash(path: str) -> str:
    """SHA-256 of an image's shape and voxels as float32 (file format and dtype do not matter)."""
    try:
        import nibabel as nib
        arr = np.asanyarray(nib.load(path).dataobj)
    except Exception:  # formats nibabel does not read (nrrd, mha): SimpleITK
        import SimpleITK as sitk
        arr = sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose()
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class CorpusIndex:
    """What the guard compares against: ids (cases and subjects) and image hashes."""
    name: str
    ids: Dict[str, str] = field(default_factory=dict)       # id -> corpus case it comes from
    hashes: Dict[str, str] = field(default_factory=dict)    # image hash -> "case/modality"


def _cached_hash(path: str, cache: dict) -> str:
    st = os.stat(path)
    key = os.path.abspath(path)
    hit = cache.get(key)
    if hit and hit["size"] == st.st_size and hit["mtime"] == st.st_mtime:
        return hit["sha256"]
    h = image_hash(path)
    cache[key] = {"size": st.st_size, "mtime": st.st_mtime, "sha256": h}
    return h


def corpus_index(corpus_folder: str, cache_file: Optional[str] = None) -> CorpusIndex:
    """Index the corpus whose ``manifest.json`` is in ``corpus_folder``."""
    man = load_manifest(os.path.join(corpus_folder, MANIFEST_NAME))
    cache = {}
    if cache_file and os.path.isfile(cache_file):
        with open(cache_file) as f:
            cache = json.load(f)
    idx = CorpusIndex(name=os.path.basename(os.path.normpath(corpus_folder)))
    for case in man.cases:
        for i in {case.case_id, case.subject} - {""}:
            idx.ids[i] = case.case_id
        for m in case.images:
            p = man.path(case, m)
            if os.path.isfile(p):
                idx.hashes[_cached_hash(p, cache)] = f"{case.case_id}/{m}"
    if cache_file:
        atomic_write_json(cache, cache_file)
    log.info("corpus %s: %d ids, %d image hashes", idx.name, len(idx.ids), len(idx.hashes))
    return idx


def dataset_index(raw_dataset: str, cache_file: Optional[str] = None) -> CorpusIndex:
    """Index a labelled nnU-Net raw dataset that trained an encoder (a supervised pool): its case
    ids and the hashes of every ``imagesTr`` image."""
    cache = {}
    if cache_file and os.path.isfile(cache_file):
        with open(cache_file) as f:
            cache = json.load(f)
    idx = CorpusIndex(name=os.path.basename(os.path.normpath(raw_dataset)))
    folder = os.path.join(raw_dataset, "imagesTr")
    for f in sorted(os.listdir(folder)):
        case = f.split(".")[0].rsplit("_", 1)[0]
        idx.ids[case] = case
        idx.hashes[_cached_hash(os.path.join(folder, f), cache)] = f"{case}/{f}"
    if cache_file:
        from nnunet_mmpretrain.io_utils import atomic_write_json
        atomic_write_json(cache, cache_file)
    log.info("labelled pool %s: %d ids, %d image hashes", idx.name, len(idx.ids), len(idx.hashes))
    return idx


def dataset_case_images(raw_dataset: str, case_ids: Iterable[str], images_dir: str = "imagesTr") -> Dict[str, List[str]]:
    """case id -> its channel files (``CASE_XXXX<ending>``) in an nnU-Net raw dataset folder."""
    with open(os.path.join(raw_dataset, "dataset.json")) as f:
        ending = json.load(f).get("file_ending", ".nii.gz")
    folder = os.path.join(raw_dataset, images_dir)
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    out = {}
    for c in case_ids:
        out[c] = [os.path.join(folder, f) for f in files
                  if f.startswith(c + "_") and f.endswith(ending) and len(f) == len(c) + 5 + len(ending)]
    return out


def find_leaks(case_images: Dict[str, List[str]], index: CorpusIndex, patient_regex: Optional[str] = None,
               hash_cache: Optional[dict] = None) -> List[str]:
    """One line per leaked evaluation case: ``CASE: id in corpus (case X)`` / ``CASE: image F equals
    corpus image X``. Empty when nothing leaks."""
    leaks = []
    cache = hash_cache if hash_cache is not None else {}
    patients = {patient_of(i, patient_regex): src for i, src in index.ids.items()}   # time points of one patient
    for case, images in sorted(case_images.items()):
        pat = patient_of(case, patient_regex)
        if case in index.ids:
            leaks.append(f"{case}: id {case!r} is corpus case {index.ids[case]!r}")
        elif pat in patients:
            leaks.append(f"{case}: id {pat!r} is corpus case {patients[pat]!r}")
        for p in images:
            h = _cached_hash(p, cache)
            if h in index.hashes:
                leaks.append(f"{case}: image {os.path.basename(p)} equals corpus image {index.hashes[h]}")
    return leaks
