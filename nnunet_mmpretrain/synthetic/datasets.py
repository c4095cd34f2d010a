"""Write phantom cases as (a) a labelled nnU-Net raw dataset, (b) an unlabelled multi-source
pretraining corpus, (c) a graded classification dataset. Each output is reproducible from a seed.

Layout under ``raw_dir`` (nnU-Net's ``nnUNet_raw``)::

    Dataset{seg_id}_PhantomBraTS/   imagesTr, labelsTr, imagesTs, labelsTs, dataset.json
    Dataset{cls_id}_PhantomGrade/   imagesTr, labelsTr, dataset.json, classes.csv (case,label,grade)
    Dataset{corpus_id}_PhantomCorpus/  manifest.json, images/  (see corpus.manifest)
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, Sequence, Tuple

import numpy as np

from nnunet_mmpretrain.parallel import map_with_progress

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.corpus.manifest import CorpusCase, CorpusManifest, save_manifest
from nnunet_mmpretrain.labels import BRATS_LABELS, BRATS_REGIONS_CLASS_ORDER  # the house convention (BraTS 2023)
from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_json, atomic_write_text
from nnunet_mmpretrain.synthetic.multisite import make_site_case
from nnunet_mmpretrain.synthetic.phantom import make_case
from nnunet_mmpretrain.synthetic.sites import SITES
from nnunet_mmpretrain.conversion.paths import dataset_folder_name

SEG_MODALITIES = ("t1", "t1c", "t2", "flair")

#: corpus sources: name -> (modalities, has tumour, scanner gain per modality)
CORPUS_SOURCES: Dict[str, Tuple[Tuple[str, ...], bool, Dict[str, float]]] = {
    "phantom_brats": (("t1", "t1c", "t2", "flair"), True, {}),
    "phantom_ixi": (("t1", "t2", "pd"), False, {"t1": 0.7, "t2": 1.3, "pd": 1.0}),
}


def _save(array_xyz: np.ndarray, affine: np.ndarray, path: str) -> None:
    import nibabel as nib
    img = nib.Nifti1Image(array_xyz, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _case_seed(seed: int, kind: int, i: int) -> int:
    return int(np.random.SeedSequence([seed, kind, i]).generate_state(1)[0])


# ---- worker jobs (top level so they pickle) ----
def _job_seg(args):
    folder, img_dir, lab_dir, case_id, cseed, spacing, tumour = args
    c = make_case(cseed, spacing, SEG_MODALITIES, tumour=tumour)
    for ch, m in enumerate(SEG_MODALITIES):
        _save(c["images"][m], c["affine"], os.path.join(folder, img_dir, f"{case_id}_{ch:04d}.nii.gz"))
    _save(c["label"], c["affine"], os.path.join(folder, lab_dir, f"{case_id}.nii.gz"))
    return case_id, c["grade"]


def _job_corpus(args):
    folder, case_id, cseed, spacing, source = args
    mods, tumour, gain = CORPUS_SOURCES[source]
    c = make_case(cseed, spacing, mods, tumour="random" if tumour else None, source_gain=gain)
    files = {}
    for m in mods:
        rel = os.path.join("images", f"{case_id}_{m}.nii.gz")
        _save(c["images"][m], c["affine"], os.path.join(folder, rel))
        files[m] = rel
    return case_id, source, files


def _run(fn, jobs, num_processes: int, desc: str):
    return map_with_progress(fn, jobs, num_processes, desc)


def _prepare(folder: str, overwrite: bool) -> None:
    if os.path.isdir(folder) and os.listdir(folder):
        if not overwrite:
            raise FileExistsError(
                f"output folder {folder} exists and is not empty: choose another dataset id / "
                f"output, or pass --overwrite to replace it.")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)


def _dataset_json(folder, name, n_train, labels, description, extra=None):
    dj = {
        "channel_names": {str(i): mod.display_name(m) for i, m in enumerate(SEG_MODALITIES)},
        "labels": labels,
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": description,
        "reference": "nnunet-mmpretrain synthetic phantoms (ICBM 2009a anatomy from nilearn)",
        "licence": "CC-BY 4.0 (generated data)",
    }
    if isinstance(next(iter(labels.values()), None), list) or any(isinstance(v, list) for v in labels.values()):
        dj["regions_class_order"] = BRATS_REGIONS_CLASS_ORDER
    dj.update(extra or {})
    atomic_write_json(dj, os.path.join(folder, "dataset.json"))


def make_segmentation_dataset(raw_dir: str, dataset_id: int = 990, num_train: int = 10,
                              num_test: int = 2, spacing: float = 2.0, seed: int = 0,
                              num_processes: int = 2, overwrite: bool = False,
                              name: str = "PhantomBraTS", kind: int = 1, prefix: str = "phantom") -> str:
    """Labelled 4-channel (T1, T1ce, T2, FLAIR) dataset with BraTS regions. Returns its folder.
    ``kind`` separates the seeds (subjects) of datasets that must not share any, e.g. a labelled
    pool that trains a supervised encoder; ``prefix`` their case ids (``<prefix>_0000``)."""
    folder = os.path.join(raw_dir, dataset_folder_name(dataset_id, name))
    _prepare(folder, overwrite)
    jobs = [(folder, "imagesTr", "labelsTr", f"{prefix}_{i:04d}", _case_seed(seed, kind, i), spacing, "random")
            for i in range(num_train)]
    jobs += [(folder, "imagesTs", "labelsTs", f"{prefix}_{num_train + i:04d}", _case_seed(seed, kind, num_train + i),
              spacing, "random") for i in range(num_test)]
    _run(_job_seg, jobs, num_processes, f"phantoms {os.path.basename(folder)}")
    _dataset_json(folder, name, num_train, BRATS_LABELS,
                  f"BraTS-like phantoms, {spacing} mm, seed {seed}; labels BraTS-2023 convention "
                  f"(1 non-enhancing core, 2 edema, 3 enhancing)")
    return folder


def make_classification_dataset(raw_dir: str, dataset_id: int = 991, num_cases: int = 12,
                                spacing: float = 2.0, seed: int = 0, num_processes: int = 2,
                                overwrite: bool = False, name: str = "PhantomGrade") -> str:
    """Balanced high/low-grade phantoms. ``classes.csv`` holds (case, label, grade) with label 1 =
    high grade (enhancing); the grade is only visible in the T1ce channel. Segmentations are
    written too (nnU-Net's preprocessing needs them)."""
    folder = os.path.join(raw_dir, dataset_folder_name(dataset_id, name))
    _prepare(folder, overwrite)
    jobs = [(folder, "imagesTr", "labelsTr", f"grade_{i:04d}", _case_seed(seed, 2, i), spacing,
             "high" if i % 2 == 0 else "low") for i in range(num_cases)]
    res = _run(_job_seg, jobs, num_processes, f"phantoms {os.path.basename(folder)}")
    rows = "case,label,grade\n" + "".join(f"{cid},{int(g == 'high')},{g}\n" for cid, g in res)
    atomic_write_text(rows, os.path.join(folder, "classes.csv"))
    _dataset_json(folder, name, num_cases, BRATS_LABELS,
                  "graded phantoms: classes.csv label 1 = high grade (enhancing rim), 0 = low grade",
                  {"classification": {"file": "classes.csv", "classes": {"0": "low grade", "1": "high grade"}}})
    return folder


def make_corpus(raw_dir: str, dataset_id: int = 992, cases_per_source: int = 6,
                spacing: float = 2.0, seed: int = 0, num_processes: int = 2,
                overwrite: bool = False, sources: Sequence[str] = tuple(CORPUS_SOURCES),
                name: str = "PhantomCorpus") -> str:
    """Unlabelled corpus of several sources with different modality sets (manifest.json)."""
    folder = os.path.join(raw_dir, dataset_folder_name(dataset_id, name))
    _prepare(folder, overwrite)
    jobs = []
    for s_i, src in enumerate(sources):
        if src not in CORPUS_SOURCES:
            raise ValueError(f"unknown phantom source {src!r}; known: {', '.join(CORPUS_SOURCES)}")
        jobs += [(folder, f"{src.replace('phantom_', '')}_{i:04d}", _case_seed(seed, 10 + s_i, i), spacing, src)
                 for i in range(cases_per_source)]
    res = _run(_job_corpus, jobs, num_processes, f"phantoms {os.path.basename(folder)}")
    cases = [CorpusCase(case_id=cid, images=files, subject=cid, session="ses-1", source=src)
             for cid, src, files in res]
    manifest = CorpusManifest(
        name=name, cases=cases, atlas_registered=True,
        sources={s: {"modalities": list(CORPUS_SOURCES[s][0]),
                     "description": "tumour phantoms" if CORPUS_SOURCES[s][1] else "healthy phantoms"}
                 for s in sources})
    save_manifest(manifest, folder)
    return folder


# ---- multi-site phantoms (synthetic/multisite.py) ----
def _job_site(args):
    folder, img_dir, lab_dir, case_id, cseed, spacing, site = args
    c = make_site_case(cseed, SITES[site], spacing, SEG_MODALITIES)
    for ch, m in enumerate(SEG_MODALITIES):
        _save(c["images"][m], c["affine"], os.path.join(folder, img_dir, f"{case_id}_{ch:04d}.nii.gz"))
    _save(c["label"], c["affine"], os.path.join(folder, lab_dir, f"{case_id}.nii.gz"))
    return case_id, site


def _job_site_corpus(args):
    folder, case_id, cseed, spacing, site = args
    c = make_site_case(cseed, SITES[site], spacing)
    files = {}
    for m, img in c["images"].items():
        rel = os.path.join("images", f"{case_id}_{m}.nii.gz")
        _save(img, c["affine"], os.path.join(folder, rel))
        files[m] = rel
    return case_id, site, files


def make_site_dataset(raw_dir: str, dataset_id: int, per_site: Dict[str, int], spacing: float = 3.0,
                      seed: int = 0, num_processes: int = 2, overwrite: bool = False,
                      name: str = "PhantomSites", kind: int = 20, prefix: str = "") -> str:
    """Labelled 4-channel multi-site dataset: ``per_site[site]`` cases ``<prefix><site>_<i>`` of
    each site (sites of :data:`~.sites.SITES` with all four modalities). ``kind`` separates the
    seeds of datasets that must not share subjects (e.g. the evaluation set and a supervised pool),
    ``prefix`` their case ids."""
    folder = os.path.join(raw_dir, dataset_folder_name(dataset_id, name))
    _check_sites(per_site, need=SEG_MODALITIES)
    _prepare(folder, overwrite)
    jobs = [(folder, "imagesTr", "labelsTr", f"{prefix}{site}_{i:04d}", _case_seed(seed, kind + k, i), spacing, site)
            for k, site in enumerate(sorted(SITES)) for i in range(per_site.get(site, 0))]
    _run(_job_site, jobs, num_processes, f"phantoms {os.path.basename(folder)}")
    counts = ", ".join(f"site {s}: {n}" for s, n in sorted(per_site.items()) if n)
    _dataset_json(folder, name, len(jobs), BRATS_LABELS,
                  f"multi-site lesion phantoms, {spacing} mm, seed {seed} ({counts}); case ids start with the site; "
                  f"labels BraTS-2023 convention (1 core, 2 edema, 3 enhancing)",
                  {"sites": {s: SITES[s].description for s in sorted(per_site) if per_site[s]}})
    return folder


def make_site_corpus(raw_dir: str, dataset_id: int, per_site: Dict[str, int], spacing: float = 3.0,
                     seed: int = 0, num_processes: int = 2, overwrite: bool = False,
                     name: str = "PhantomSitesCorpus") -> str:
    """Unlabelled corpus with ``per_site[site]`` subjects of each site, each with its site's own
    modality set (source ``site_<name>``, case ids ``corpus_<site>_<i>``)."""
    folder = os.path.join(raw_dir, dataset_folder_name(dataset_id, name))
    _check_sites(per_site)
    _prepare(folder, overwrite)
    jobs = [(folder, f"corpus_{site}_{i:04d}", _case_seed(seed, 60 + k, i), spacing, site)
            for k, site in enumerate(sorted(SITES)) for i in range(per_site.get(site, 0))]
    res = _run(_job_site_corpus, jobs, num_processes, f"phantoms {os.path.basename(folder)}")
    cases = [CorpusCase(case_id=cid, images=files, subject=cid, session="ses-1", source=f"site_{site}")
             for cid, site, files in res]
    manifest = CorpusManifest(
        name=name, cases=cases, atlas_registered=True,
        sources={f"site_{s}": {"modalities": list(SITES[s].modalities), "description": SITES[s].description}
                 for s in sorted(per_site) if per_site[s]})
    save_manifest(manifest, folder)
    return folder


def _check_sites(per_site: Dict[str, int], need: Sequence[str] = ()) -> None:
    for s, n in per_site.items():
        if s not in SITES:
            raise ValueError(f"unknown site {s!r}; known: {', '.join(sorted(SITES))}")
        if n < 0:
            raise ValueError(f"site {s}: a negative number of cases ({n})")
        if n and not set(need) <= set(SITES[s].modalities):
            raise ValueError(f"site {s} acquires {SITES[s].modalities}, a labelled dataset needs {tuple(need)}")
