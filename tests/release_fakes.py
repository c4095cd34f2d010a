"""Tiny fake public releases with the real folder and file naming, for the tests and for trying
the converters without downloading anything.

Every volume is 12 x 12 x 10 voxels (SimpleITK x, y, z). Tumour labels follow one known pattern
(:func:`tumour_label`) written in each release's own label codes, with a voxel of each class at a
known position (:data:`KNOWN_VOXELS`), so a test can check the label mapping voxel by voxel.
"""
from __future__ import annotations

import contextlib
import json
import os
import types
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SHAPE_ZYX = (10, 12, 12)
#: (z, y, x) array index of a voxel of each tumour class in :func:`tumour_label`
KNOWN_VOXELS = {"background": (0, 0, 0), "edema": (2, 2, 2), "enhancing": (3, 4, 4), "necrosis": (5, 6, 6)}
#: release label codes per tumour class
CODES = {
    "brats2021": {"necrosis": 1, "edema": 2, "enhancing": 4},
    "brats2023": {"necrosis": 1, "edema": 2, "enhancing": 3},
    "msd": {"edema": 1, "necrosis": 2, "enhancing": 3},
    "ours": {"necrosis": 1, "edema": 2, "enhancing": 3},
}
#: a BraTS-like geometry (flipped x/y axes, non-zero origin) to check that geometry is kept
BRATS_GEOMETRY = dict(spacing=(1.0, 1.0, 1.0), origin=(11.0, 11.0, -4.0),
                      direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))


def write(path: str, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
          direction=None) -> str:
    """Write an array indexed (z, y, x) (or (t, z, y, x) for 4D) with SimpleITK."""
    import SimpleITK as sitk
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    dim = img.GetDimension()
    sp, org = list(spacing), list(origin)
    if dim == 4:
        sp, org = sp + [1.0], org + [0.0]
    img.SetSpacing(sp)
    img.SetOrigin(org)
    if direction is not None:
        d = list(direction)
        if dim == 4:
            d = d[0:3] + [0] + d[3:6] + [0] + d[6:9] + [0, 0, 0, 0, 1]
        img.SetDirection(d)
    sitk.WriteImage(img, path, path.endswith(".gz"))
    return path


def tumour_regions(shape=SHAPE_ZYX) -> Dict[str, np.ndarray]:
    ed = np.zeros(shape, bool)
    et = np.zeros(shape, bool)
    ncr = np.zeros(shape, bool)
    ed[2:8, 2:10, 2:10] = True
    et[3:7, 4:8, 4:8] = True
    ncr[4:6, 5:7, 5:7] = True
    return {"edema": ed & ~et, "enhancing": et & ~ncr, "necrosis": ncr}


def tumour_label(codes: Dict[str, int], shape=SHAPE_ZYX) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for role, m in tumour_regions(shape).items():
        out[m] = codes[role]
    return out


def noise_image(seed: int, level: float, shape=SHAPE_ZYX, dtype=np.float32) -> np.ndarray:
    """Noise around ``level`` with a brighter enhancing region (a stand-in for an MR image)."""
    rng = np.random.default_rng(seed)
    a = level + 10 * rng.standard_normal(shape)
    a[tumour_regions(shape)["enhancing"]] += 50
    return np.clip(a, 0, None).astype(dtype)


def fake_brats2021(root: str, n: int = 2, with_seg: bool = True, omit: Optional[Dict[int, str]] = None) -> List[str]:
    """``root/RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021/BraTS2021_0000i/...``; ``omit``:
    case index -> file suffix to leave out (e.g. {1: 'flair'})."""
    base = os.path.join(root, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021")
    ids = []
    for i in range(n):
        cid = f"BraTS2021_{i:05d}"
        d = os.path.join(base, cid)
        for j, suf in enumerate(("t1", "t1ce", "t2", "flair")):
            if (omit or {}).get(i) != suf:
                write(os.path.join(d, f"{cid}_{suf}.nii.gz"), noise_image(i * 10 + j, 100 + 50 * j, dtype=np.int16),
                      **BRATS_GEOMETRY)
        if with_seg and (omit or {}).get(i) != "seg":
            write(os.path.join(d, f"{cid}_seg.nii.gz"), tumour_label(CODES["brats2021"]), **BRATS_GEOMETRY)
        ids.append(cid)
    return ids


def fake_brats2023(root: str, subset: str = "GLI", n: int = 2, timepoints: Optional[Dict[int, int]] = None,
                   dtype=np.float32) -> List[str]:
    """``ASNR-MICCAI-BraTS2023-<SUB>-Challenge-TrainingData/BraTS-<SUB>-0000i-00t/``: ``n`` patients,
    ``timepoints`` patient index -> number of scans (default 1; GLI's ``-001`` follow-ups). With
    ``dtype=np.int16`` the images of patient i, timepoint 0 equal those of :func:`fake_brats2021`
    case i voxel for voxel (BraTS 2023 GLI training is BraTS 2021 renamed)."""
    base = os.path.join(root, f"ASNR-MICCAI-BraTS2023-{subset}-Challenge-TrainingData")
    ids = []
    for i in range(n):
        for t in range((timepoints or {}).get(i, 1)):
            cid = f"BraTS-{subset}-{i:05d}-{t:03d}"
            d = os.path.join(base, cid)
            for j, suf in enumerate(("t1n", "t1c", "t2w", "t2f")):
                write(os.path.join(d, f"{cid}-{suf}.nii.gz"), noise_image(i * 10 + j + 1000 * t, 100 + 50 * j, dtype=dtype),
                      **BRATS_GEOMETRY)
            write(os.path.join(d, f"{cid}-seg.nii.gz"), tumour_label(CODES["brats2023"]), **BRATS_GEOMETRY)
            ids.append(cid)
    return ids


def gli2024_label(with_cavity: bool = True) -> np.ndarray:
    """1 NETC, 2 SNFH, 3 ET as in the 2023 fake, plus 4 resection cavity next to the tumour."""
    lab = tumour_label(CODES["brats2023"])
    if with_cavity:
        lab[8:10, 3:9, 3:9] = 4
    return lab


def fake_brats2024(root: str, subset: str = "GLI", n: int = 3, timepoints: Optional[Dict[int, int]] = None,
                   cavity: bool = True) -> List[str]:
    """``BraTS2024-BraTS-<SUB>-TrainingData/training_data1_v2/BraTS-<SUB>-02XXX-10Y/`` as released:
    ``n`` patients, ``timepoints`` patient index -> number of scans (default 1; timepoints
    numbered from 100 as in 2024 GLI, alternating 100/101 between patients otherwise). GLI's second
    case has no cavity, as some post-treatment exams; ``cavity=False`` writes no label 4 at all (a
    paediatric tree whose cases lack it)."""
    base = os.path.join(root, f"BraTS2024-BraTS-{subset}-TrainingData", "training_data1_v2")
    ids = []
    for i in range(n):
        count = (timepoints or {}).get(i)
        for t in range(count or 1):
            cid = f"BraTS-{subset}-{2000 + i:05d}-{100 + (t if count else i % 2):03d}"
            d = os.path.join(base, cid)
            for j, suf in enumerate(("t1n", "t1c", "t2w", "t2f")):
                write(os.path.join(d, f"{cid}-{suf}.nii.gz"), noise_image(i * 10 + j + 1000 * t + 500, 100 + 50 * j),
                      **BRATS_GEOMETRY)  # other voxels than the 2023 fake's
            write(os.path.join(d, f"{cid}-seg.nii.gz"), gli2024_label(cavity and subset == "GLI" and i != 1),
                  **BRATS_GEOMETRY)
            ids.append(cid)
    return ids


def fake_brats2018(root: str, n_hgg: int = 2, n_lgg: int = 1) -> Dict[str, str]:
    """Returns case id -> grade."""
    base = os.path.join(root, "MICCAI_BraTS_2018_Data_Training")
    out = {}
    for grade, n in (("HGG", n_hgg), ("LGG", n_lgg)):
        for i in range(n):
            cid = f"Brats18_{'2013' if grade == 'HGG' else 'TCIA'}_{i}_1"
            d = os.path.join(base, grade, cid)
            for j, suf in enumerate(("t1", "t1ce", "t2", "flair")):
                write(os.path.join(d, f"{cid}_{suf}.nii.gz"), noise_image(i + j, 100 + 50 * j, dtype=np.int16))
            write(os.path.join(d, f"{cid}_seg.nii.gz"), tumour_label(CODES["brats2021"]))
            out[cid] = grade
    with open(os.path.join(base, "survival_data.csv"), "w") as f:
        f.write("Brats18ID,Age,Survival\n")
    return out


#: MSD volume order and the constant level of each fake volume (to check the channel reordering)
MSD_ORDER = ("FLAIR", "T1w", "t1gd", "T2w")
MSD_LEVELS = {"FLAIR": 400.0, "T1w": 100.0, "t1gd": 200.0, "T2w": 300.0}


def fake_msd_brain(root: str, n: int = 2) -> List[str]:
    task = os.path.join(root, "Task01_BrainTumour")
    ids = []
    for i in range(n):
        cid = f"BRATS_{i + 1:03d}"
        vol = np.stack([np.full(SHAPE_ZYX, MSD_LEVELS[m], np.float32) for m in MSD_ORDER])
        write(os.path.join(task, "imagesTr", f"{cid}.nii.gz"), vol)
        write(os.path.join(task, "labelsTr", f"{cid}.nii.gz"), tumour_label(CODES["msd"]))
        # the tarball's macOS AppleDouble junk
        with open(os.path.join(task, "imagesTr", f"._{cid}.nii.gz"), "wb") as f:
            f.write(b"\x00\x05\x16\x07junk")
        ids.append(cid)
    write(os.path.join(task, "imagesTs", "BRATS_900.nii.gz"), np.zeros((4,) + SHAPE_ZYX, np.float32))
    with open(os.path.join(task, "dataset.json"), "w") as f:
        json.dump({"name": "BRATS", "modality": {str(i): m for i, m in enumerate(MSD_ORDER)},
                   "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                              "3": "enhancing tumour"}, "numTraining": n}, f)
    return ids


#: ISLES fake geometry: DWI grid and a FLAIR grid with another origin and spacing, plus the
#: bright FLAIR cube in physical coordinates (x, y, z) mm
ISLES_DWI = dict(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
ISLES_FLAIR = dict(spacing=(1.2, 1.2, 1.5), origin=(-3.0, -2.5, -1.0), size_xyz=(26, 26, 18))
ISLES_CUBE_MM = ((6.0, 14.0), (6.0, 14.0), (4.0, 12.0))
ISLES_CUBE_VALUE = 100.0


def isles_flair_array() -> np.ndarray:
    """The fake FLAIR (z, y, x): ISLES_CUBE_VALUE inside ISLES_CUBE_MM (by voxel centre), else 0."""
    sx, sy, sz = ISLES_FLAIR["size_xyz"]
    arr = np.zeros((sz, sy, sx), np.float32)
    (x0, x1), (y0, y1), (z0, z1) = ISLES_CUBE_MM
    ox, oy, oz = ISLES_FLAIR["origin"]
    px, py, pz = ISLES_FLAIR["spacing"]
    xs = ox + px * np.arange(sx)
    ys = oy + py * np.arange(sy)
    zs = oz + pz * np.arange(sz)
    inside = ((zs >= z0) & (zs <= z1))[:, None, None] & ((ys >= y0) & (ys <= y1))[None, :, None] & \
        ((xs >= x0) & (xs <= x1))[None, None, :]
    arr[inside] = ISLES_CUBE_VALUE
    return arr


def fake_isles2022(root: str, n: int = 2, rawdata: bool = False, flat: bool = False) -> List[str]:
    """The Zenodo layout (``ses-0001/{dwi,anat}/``, ``_FLAIR``) or, ``flat``, the layout of the
    organisers' README (``rawdata/sub-*/ses-0001/*_{dwi,adc,flair}.nii.gz``, no sub-folders)."""
    base = os.path.join(root, "ISLES-2022")
    subjects = os.path.join(base, "rawdata") if rawdata or flat else base
    ids = []
    lesion = np.zeros(SHAPE_ZYX, np.uint8)
    lesion[3:6, 4:8, 4:8] = 1
    for i in range(n):
        sub, ses = f"sub-strokecase{i + 1:04d}", "ses-0001"
        d = os.path.join(subjects, sub, ses)
        dwi, anat, flair = ("", "", "flair") if flat else ("dwi", "anat", "FLAIR")
        write(os.path.join(d, dwi, f"{sub}_{ses}_dwi.nii.gz"), noise_image(i, 300), **ISLES_DWI)
        write(os.path.join(d, dwi, f"{sub}_{ses}_adc.nii.gz"), noise_image(i + 1, 800), **ISLES_DWI)
        write(os.path.join(d, anat, f"{sub}_{ses}_{flair}.nii.gz"), isles_flair_array(),
              spacing=ISLES_FLAIR["spacing"], origin=ISLES_FLAIR["origin"])
        write(os.path.join(base, "derivatives", sub, ses, f"{sub}_{ses}_msk.nii.gz"), lesion, **ISLES_DWI)
        ids.append(sub)
    return ids


def fake_upenn_gbm(root: str, n: int = 3, n_with_seg: int = 2, follow_ups: Sequence[int] = ()) -> List[str]:
    """``PKG - UPENN-GBM-NIfTI/UPENN-GBM/NIfTI-files/``: ``n`` first exams (``_11``, the first
    ``n_with_seg`` with a manual segmentation, all with an automated one) and, for the patient
    indices in ``follow_ups``, a follow-up exam (``_21``) with images only, as released."""
    base = os.path.join(root, "PKG - UPENN-GBM-NIfTI", "UPENN-GBM", "NIfTI-files")
    ids = []
    for i in range(n):
        for cid in [f"UPENN-GBM-{i + 1:05d}_11"] + ([f"UPENN-GBM-{i + 1:05d}_21"] if i in follow_ups else []):
            for j, suf in enumerate(("T1", "T1GD", "T2", "FLAIR")):
                write(os.path.join(base, "images_structural", cid, f"{cid}_{suf}.nii.gz"), noise_image(i + j, 100 + 40 * j))
            if cid.endswith("_21"):
                ids.append(cid)
                continue
            if i < n_with_seg:
                write(os.path.join(base, "images_segm", f"{cid}_segm.nii.gz"), tumour_label(CODES["brats2021"]))
            write(os.path.join(base, "automated_segm", f"{cid}_automated_approx_segm.nii.gz"),
                  tumour_label(CODES["brats2021"]))
            ids.append(cid)
    return ids


MRBRAINS_SPACING = (0.958, 0.958, 3.0)


def mrbrains_label() -> np.ndarray:
    """Labels 0..8 as in LabelsForTraining: value v at z = v (z < 9)."""
    lab = np.zeros(SHAPE_ZYX, np.uint8)
    for v in range(1, 9):
        lab[v, 2:10, 2:10] = v
    return lab


def fake_mrbrains13(root: str, n_train: int = 2, n_test: int = 1, ext: str = ".nii") -> List[str]:
    """``root/MRBrainS13DataNii/{TrainingData,TestData}/<n>/`` as released: both splits number their
    subjects from 1; ``ext='.mhd'`` writes the original MetaImage release (``T1.mhd`` + ``T1.raw``)."""
    base = os.path.join(root, "MRBrainS13DataNii" if ext != ".mhd" else "MRBrainS13Data")
    ids = []
    for split, n in (("TrainingData", n_train), ("TestData", n_test)):
        for i in range(n):
            d = os.path.join(base, split, str(i + 1))
            for j, f in enumerate(("T1", "T1_IR", "T2_FLAIR", "T1_1mm")):
                write(os.path.join(d, f + ext), noise_image(i + j, 100 + 30 * j), spacing=MRBRAINS_SPACING)
            if split == "TrainingData":
                write(os.path.join(d, "LabelsForTraining" + ext), mrbrains_label(), spacing=MRBRAINS_SPACING)
                write(os.path.join(d, "LabelsForTesting" + ext), np.minimum(mrbrains_label(), 3),
                      spacing=MRBRAINS_SPACING)
                ids.append(f"MRBrainS13_{i + 1:02d}")
    return ids


VSSEG_T1_GEOMETRY = dict(spacing=(0.5, 0.5, 1.5), origin=(-3.0, 2.0, 10.0))
VSSEG_T2_GEOMETRY = dict(spacing=(0.4, 0.4, 1.0), origin=(-2.0, 3.0, 9.0))
VSSEG_T2_SHAPE = (12, 14, 14)


def vsseg_masks():
    """(ceT1-space mask, T2-space mask): 27 and 36 tumour voxels."""
    t1 = np.zeros(SHAPE_ZYX, np.uint8)
    t1[4:7, 5:8, 6:9] = 1
    t2 = np.zeros(VSSEG_T2_SHAPE, np.uint8)
    t2[5:9, 6:9, 6:9] = 1
    return t1, t2


def fake_vsseg(root: str, n: int = 2, layout: str = "default") -> List[str]:
    """``root/VS_defaced/vs_gk_N/`` as VS_Seg's ``preprocessing/data_conversion.py`` writes it:
    ``layout='default'`` (no registration): ceT1 + its mask in T1 space and T2 + its mask in T2
    space (another grid); ``'register-t1'`` (``--register T1``): ceT1, the T2 registered onto
    the ceT1 grid and the ceT1-space mask."""
    base = os.path.join(root, "VS_defaced")
    ids = []
    m1, m2 = vsseg_masks()
    for i in range(n):
        cid = f"vs_gk_{i + 1}"
        d = os.path.join(base, cid)
        write(os.path.join(d, "vs_gk_t1_refT1.nii.gz"), noise_image(i, 200), **VSSEG_T1_GEOMETRY)
        write(os.path.join(d, "vs_gk_seg_refT1.nii.gz"), m1, **VSSEG_T1_GEOMETRY)
        if layout == "register-t1":
            write(os.path.join(d, "vs_gk_t2_refT1.nii.gz"), noise_image(i + 5, 300), **VSSEG_T1_GEOMETRY)
        else:
            write(os.path.join(d, "vs_gk_t2_refT2.nii.gz"), noise_image(i + 5, 300, shape=VSSEG_T2_SHAPE),
                  **VSSEG_T2_GEOMETRY)
            write(os.path.join(d, "vs_gk_seg_refT2.nii.gz"), m2, **VSSEG_T2_GEOMETRY)
        ids.append(cid)
    return ids


#: IXI grids per modality: (size x, y, z), spacing -- deliberately all different
IXI_GRIDS = {"T1": ((12, 12, 10), (1.2, 0.94, 0.94)), "T2": ((12, 12, 8), (0.9, 0.9, 1.2)),
             "PD": ((12, 12, 8), (0.9, 0.9, 1.2)), "MRA": ((14, 14, 6), (0.47, 0.47, 0.8))}
IXI_SUBJECTS = (("IXI002-Guys-0828", ("T1", "T2", "PD")), ("IXI012-HH-1211", ("T1", "T2", "PD", "MRA")),
                ("IXI013-IOP-0856", ("T2", "PD")))


def fake_ixi(root: str, subjects: Sequence[Tuple[str, Sequence[str]]] = IXI_SUBJECTS,
             per_modality_folders: bool = True) -> List[str]:
    ids = []
    for k, (subj, mods) in enumerate(subjects):
        for m in mods:
            (sx, sy, sz), sp = IXI_GRIDS[m]
            d = os.path.join(root, f"IXI-{m}") if per_modality_folders else root
            write(os.path.join(d, f"{subj}-{m}.nii.gz"), noise_image(k, 200, shape=(sz, sy, sx)), spacing=sp,
                  origin=(-5.0, -5.0, -4.0))
        if per_modality_folders:
            write(os.path.join(root, "IXI-DTI", f"{subj}-DTI-00.nii.gz"), noise_image(k, 50))
        ids.append(subj)
    return ids


PDGM_FILES = ("T1", "T1c", "T2", "FLAIR", "DWI", "ADC", "SWI", "FLAIR_bias", "T1_bias", "tumor_segmentation")


def fake_ucsf_pdgm(root: str, n: int = 2, follow_ups: Optional[Dict[int, Sequence[str]]] = None,
                   version: str = "v3") -> List[str]:
    """``root/UCSF-PDGM-<version>/UCSF-PDGM-XXXX_nifti/``; ``follow_ups``: patient index -> exam tags
    (``FU003d``) written as ``UCSF-PDGM-XXXX_FU003d_nifti/UCSF-PDGM-XXXX_FU003d_<MOD>.nii.gz``, as
    the v3+ releases hold a few follow-up exams. Returns the case ids (folder names without _nifti)."""
    base = os.path.join(root, f"UCSF-PDGM-{version}")
    ids = []
    for i in range(n):
        pid = f"UCSF-PDGM-{i + 4:04d}"
        for k, cid in enumerate([pid] + [f"{pid}_{fu}" for fu in (follow_ups or {}).get(i, ())]):
            for j, suf in enumerate(PDGM_FILES):
                if i == 1 and suf == "DWI":
                    continue  # one case without DWI: modality sets vary
                arr = (tumour_label(CODES["brats2023"]) if suf.endswith("segmentation")
                       else noise_image(i + j + 100 * k, 100 + 10 * j))  # each exam its own voxels
                write(os.path.join(base, f"{cid}_nifti", f"{cid}_{suf}.nii.gz"), arr)
            ids.append(cid)
    return ids


def fake_subject_folders(root: str) -> Dict[str, List[str]]:
    """Subject folders for the generic importer; returns subject -> expected canonical modalities."""
    files = {
        "sub-01": ["sub-01_T1w.nii.gz", "sub-01_FLAIR.nii.gz", "sub-01_seg.nii.gz"],
        "sub-02": ["t1.nii.gz", "t2.nii", "swi.nii.gz"],
        "case-7": ["case-7-t1c.nii.gz", "case-7-adc.nii.gz", "case-7-dwi.nii.gz", "case-7_T2w.nii.gz"],
    }
    expected = {"sub-01": ["flair", "t1"], "sub-02": ["t1", "t2"], "case-7": ["t1c", "t2", "dwi", "adc"]}
    for k, (sub, names) in enumerate(files.items()):
        for j, f in enumerate(names):
            write(os.path.join(root, sub, f), noise_image(k + j, 100 + 20 * j))
    os.makedirs(os.path.join(root, "notes"), exist_ok=True)
    with open(os.path.join(root, "notes", "README.txt"), "w") as f:
        f.write("not a subject\n")
    return expected


def fake_csv_release(root: str) -> Dict[str, str]:
    """An ADNI-like table and image folder. Returns paths: 'images', 'csv'.

    Rows: two CN, one MCI, one AD, one MCI whose image is missing, one id with a path traversal;
    one image has no row."""
    img = os.path.join(root, "ADNI_images")
    ids = {"002_S_0295": "CN", "002_S_0413": "MCI", "003_S_1021": "CN", "005_S_0221": "AD"}
    for k, cid in enumerate(ids):
        write(os.path.join(img, cid, f"{cid}_mprage.nii.gz"), noise_image(k, 150))
    write(os.path.join(img, "009_S_9999", "009_S_9999_mprage.nii.gz"), noise_image(9, 150))  # no row
    csv_path = os.path.join(root, "ADNI_labels.csv")
    with open(csv_path, "w") as f:
        f.write("Subject,Group,Age\n")
        for cid, g in ids.items():
            f.write(f"{cid},{g},70\n")
        f.write("007_S_0070,MCI,71\n")        # no image
        f.write("../../escape,CN,60\n")        # path traversal
    return {"images": img, "csv": csv_path}


class _SerialPool:
    """A worker pool that runs its jobs in this process (what nnU-Net's check needs of a Pool)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


@contextlib.contextmanager
def serial_nnunet_verify():
    """Run nnU-Net's verify_dataset_integrity without its spawned worker pool (a spawned worker
    re-imports torch and nnU-Net, ~8 s per call on 2 cores); the checks themselves are nnU-Net's."""
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi
    orig = vdi.multiprocessing
    vdi.multiprocessing = types.SimpleNamespace(get_context=lambda method=None: types.SimpleNamespace(Pool=_SerialPool))
    try:
        yield
    finally:
        vdi.multiprocessing = orig


def verify_fast(folder: str) -> None:
    """nnU-Net's verify_dataset_integrity on ``folder``, its jobs run in this process."""
    from nnunet_mmpretrain.conversion.common import verify_nnunet_dataset
    with serial_nnunet_verify():
        verify_nnunet_dataset(folder, num_processes=1)


def tree(folder: str) -> List[str]:
    """All files under ``folder`` (relative paths), for before/after comparisons."""
    out = []
    for cur, _dirs, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(cur, f), folder) for f in files]
    return sorted(out)


def read_array(path: str) -> np.ndarray:
    """The voxels of an image file as SimpleITK gives them, (z, y, x)."""
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def read_dataset_json(folder: str) -> dict:
    """``folder/dataset.json`` as a dict."""
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)
