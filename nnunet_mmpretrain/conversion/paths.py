"""Output folder naming, path safety and release discovery helpers (pure path work)."""
from __future__ import annotations

import os
import re
from typing import Callable, List, Mapping, Optional, Tuple

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.conversion.summary import CaseSkip, ConversionError

FILE_ENDING = ".nii.gz"
PARTIAL_DIR = ".partial"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConversionError(f"invalid dataset name {name!r}: use letters, digits, '_' and '-' only.")
    return name


def resolve_raw_dir(out_dir: Optional[str]) -> str:
    out = out_dir or os.environ.get("nnUNet_raw")
    if not out:
        raise ConversionError("no output folder: pass -o OUT_RAW_DIR or set nnUNet_raw.")
    return os.path.abspath(out)


def dataset_folder(out_dir: Optional[str], dataset_id: int, name: str) -> str:
    """``OUT/DatasetXXX_Name``; refuses an id that another dataset folder in OUT already uses."""
    raw = resolve_raw_dir(out_dir)
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset ids are 1..999 in nnU-Net, got {dataset_id}.")
    check_dataset_name(name)
    folder_name = dataset_folder_name(dataset_id, name)
    if os.path.isdir(raw):
        prefix = f"Dataset{dataset_id:03d}_"
        others = sorted(d for d in os.listdir(raw) if d.startswith(prefix) and d != folder_name
                        and os.path.isdir(os.path.join(raw, d)))
        if others:
            raise ConversionError(f"dataset id {dataset_id} is already used by {others[0]} in {raw}: "
                                  f"choose another -d ID (nnU-Net needs unique ids).")
    elif os.path.exists(raw):
        raise ConversionError(f"output folder {raw} is not a directory.")
    return os.path.join(raw, folder_name)


def safe_join(folder: str, rel: str) -> str:
    """``folder/rel``, refusing anything that would resolve outside ``folder``."""
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise CaseSkip(f"refusing to write {rel!r}: outside the output folder.")
    base = os.path.realpath(folder)
    p = os.path.realpath(os.path.join(folder, rel))
    if os.path.commonpath([base, p]) != base:
        raise CaseSkip(f"refusing to write {rel!r}: it resolves outside the output folder {folder}.")
    return os.path.join(folder, rel)


def require_root(root: str, what: str) -> str:
    if not root:
        raise ConversionError(f"no {what} release folder given.")
    if not os.path.exists(root):
        raise ConversionError(f"{what} release folder {root} does not exist.")
    if not os.path.isdir(root):
        raise ConversionError(f"{what} release folder {root} is not a directory.")
    return os.path.abspath(root)


def visible(name: str) -> bool:
    """Skip hidden entries and macOS AppleDouble files ('._BRATS_001.nii.gz' in the MSD tarball)."""
    return not name.startswith(".")


def nifti_stem(filename: str) -> Optional[str]:
    """'a_t1.nii.gz' -> 'a_t1'; None when the file is not NIfTI."""
    for ext in (".nii.gz", ".nii"):
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)]
    return None


def nifti_file(folder: str, stem: str) -> Optional[str]:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists (None when neither)."""
    for ext in (".nii.gz", ".nii"):
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def nifti_pair(folder: str, stem: str) -> Tuple[Optional[str], str]:
    """(existing ``folder/stem.nii.gz`` or ``.nii``, or None; the expected ``.nii.gz`` path)."""
    return nifti_file(folder, stem), os.path.join(folder, stem + ".nii.gz")


def suffixed_files(folder: str, case_id: str, suffixes: Mapping[str, str],
                   sep: str = "_") -> List[Tuple[str, Optional[str], str]]:
    """(modality, found or None, expected) of ``folder/<case_id><sep><suffix>.nii.gz`` for each
    modality -> release suffix of ``suffixes``, in its order (the BraTS-style layouts)."""
    return [(m, *nifti_pair(folder, f"{case_id}{sep}{suf}")) for m, suf in suffixes.items()]


#: image files SimpleITK reads that releases ship besides NIfTI (MetaImage: MRBrainS13's original release)
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mhd", ".mha")


def image_file(folder: str, stem: str, extensions=IMAGE_EXTENSIONS) -> Optional[str]:
    """``folder/stem`` with the first of ``extensions`` that exists (None when none does)."""
    for ext in extensions:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def find_dirs(root: str, name_re: "re.Pattern[str] | Callable[[str], bool]", max_depth: int = 4) -> List[str]:
    """Directories under ``root`` (root included) whose name matches, sorted; matches are not
    descended into; hidden folders are ignored."""
    match = name_re.fullmatch if hasattr(name_re, "fullmatch") else name_re
    out = []
    root = os.path.abspath(root)
    if match(os.path.basename(root)):
        return [root]
    base_depth = root.rstrip(os.sep).count(os.sep)
    for cur, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        if cur.count(os.sep) - base_depth >= max_depth:
            dirs[:] = []
            continue
        keep = []
        for d in dirs:
            if match(d):
                out.append(os.path.join(cur, d))
            else:
                keep.append(d)
        dirs[:] = keep
    return sorted(out)


def find_dirs_containing(root: str, predicate: Callable[[str], bool], max_depth: int = 4) -> List[str]:
    """Directories under ``root`` (root included) for which ``predicate(path)`` holds; not
    descended into once they match."""
    out = []
    root = os.path.abspath(root)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for cur, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if visible(d))
        if predicate(cur):
            out.append(cur)
            dirs[:] = []
        elif cur.count(os.sep) - base_depth >= max_depth:
            dirs[:] = []
    return sorted(out)


def display(modality: str) -> str:
    """dataset.json channel name: the vocabulary's display name, or the name as given."""
    return mod.display_name(modality) if mod.is_known(modality) else modality
