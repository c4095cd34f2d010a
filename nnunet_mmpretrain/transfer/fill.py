"""The inference-time fill of a missing channel with its modality template (nnU-Net needs every
channel): the template NIfTI is placed on the case by physical coordinates, or, for templates
with no place in the world, by fitting its brain box onto the case's foreground box. A template of
a bundle folder is compared with the SHA-256 its ``bundle.json`` records before use.
"""
from __future__ import annotations

import glob
import os
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_mmpretrain.modalities import canonical, is_known
from nnunet_mmpretrain.pretrain.templates import minmax
from nnunet_mmpretrain.transfer.bundle_format import check_recorded_sha256
from nnunet_mmpretrain.transfer.substitution import brain_mask


class FillResult(tuple):
    """``(images, substituted)`` returned by :func:`fill_missing_channel` (unpacks as a pair),
    with ``.notes`` (list of str): what was done per filled channel, including the fallback."""

    def __new__(cls, images: Dict[int, "object"], substituted: List[int], notes: List[str]):
        obj = super().__new__(cls, (images, substituted))
        obj.notes = notes
        return obj

    @property
    def images(self) -> Dict[int, "object"]:
        return self[0]

    @property
    def substituted(self) -> List[int]:
        return self[1]


def _templates_folder(folder: str) -> str:
    sub = os.path.join(folder, "templates")
    return sub if os.path.isdir(sub) else folder


def _available_templates(folder: str) -> Dict[str, str]:
    out = {}
    for p in sorted(glob.glob(os.path.join(folder, "template_*.nii.gz"))):
        name = os.path.basename(p)[len("template_"):-len(".nii.gz")]
        if is_known(name):
            out[canonical(name)] = p
    return out


def _oriented(img, orient: str = "LPS"):
    import SimpleITK as sitk
    return sitk.DICOMOrient(img, orient)


def _bbox(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(mask)
    return idx.min(0), idx.max(0)


def _bbox_fit(tmpl, tmpl_mask: np.ndarray, ref, ref_mask: np.ndarray) -> np.ndarray:
    """Template values on the reference grid by fitting the template's brain bounding box onto the
    reference foreground bounding box (per-axis scale + shift in index space, after orienting both
    images to LPS so that array axes correspond). Returns an array in SimpleITK order (z, y, x) of
    the reference grid."""
    import SimpleITK as sitk
    t_img = sitk.GetImageFromArray(np.asarray(sitk.GetArrayFromImage(tmpl), np.float32))
    t_img.CopyInformation(tmpl)
    tm_img = sitk.GetImageFromArray(tmpl_mask.astype(np.uint8))
    tm_img.CopyInformation(tmpl)
    rm_img = sitk.GetImageFromArray(ref_mask.astype(np.uint8))
    rm_img.CopyInformation(ref)
    t_o, tm_o, rm_o = _oriented(t_img), _oriented(tm_img), _oriented(rm_img)
    t_arr = sitk.GetArrayFromImage(t_o).astype(np.float64)
    t_lo, t_hi = _bbox(sitk.GetArrayFromImage(tm_o) > 0)
    r_lo, r_hi = _bbox(sitk.GetArrayFromImage(rm_o) > 0)
    # voxel edges of the reference box map onto voxel edges of the template box
    scale = (t_hi - t_lo + 1) / (r_hi - r_lo + 1)
    offset = t_lo - 0.5 + (0.5 - r_lo) * scale
    out = ndimage.affine_transform(t_arr, scale, offset=offset, output_shape=rm_o.GetSize()[::-1],
                                   order=1, mode="constant", cval=0.0)
    o_img = sitk.GetImageFromArray(out.astype(np.float32))
    o_img.CopyInformation(rm_o)
    back = sitk.Resample(o_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(back)


def fill_missing_channel(case_images: Mapping[int, "object"], channel_modalities: Sequence[Optional[str]],
                         bank_nifti_folder: str, min_overlap: float = 0.5, foreground_offset: float = 1.0,
                         mask_tolerance: float = 0.01) -> FillResult:
    """Replace missing channels of one case by their modality templates (inference).

    Args:
        case_images: channel index -> SimpleITK image (3-D), or None for a missing channel.
            Present channels are returned unchanged.
        channel_modalities: modality per channel index (any alias; None = unknown).
        bank_nifti_folder: a bundle folder (its ``templates/`` is used) or a folder holding
            ``template_<modality>.nii.gz``.
        min_overlap: the physical resampling is used when the template's brain covers at least
            this fraction of the case's foreground; otherwise (template not on the case's atlas
            space) the bounding-box fallback is used and said so in ``notes``.
        foreground_offset: added to the min-max normalised template (values in [0, 1]) inside the
            foreground so that every foreground voxel is nonzero (nnU-Net's nonzero mask and
            z-score then treat the channel like the others; the offset itself is removed by the
            z-score).
        mask_tolerance: template brain mask tolerance (:func:`brain_mask`).

    Returns:
        :class:`FillResult` ``(images, substituted)`` (``images``: channel -> SimpleITK image, a
        filled channel being float32 on the grid of the first present channel (the reference),
        template values inside the case foreground (union of the present channels' nonzero voxels,
        holes filled, as nnU-Net's nonzero mask), 0 outside; ``substituted``: filled channel
        indices) with ``.notes``.

    The template is resampled onto the reference grid by physical coordinates (SimpleITK,
    linear, default 0). Fallback (no sufficient physical overlap): the template's brain bounding
    box is fitted onto the reference foreground's bounding box by a per-axis scale + shift in
    index space, both images oriented to LPS first.

    Raises:
        ValueError: no present channel; an empty reference foreground; a missing channel whose
            modality is unknown or has no template (naming channel, modality, templates available).
    """
    import SimpleITK as sitk

    channels = sorted(int(c) for c in case_images)
    if any(c >= len(channel_modalities) or c < 0 for c in channels):
        raise ValueError(f"channels {channels} but channel_modalities has {len(channel_modalities)} entries")
    present = [c for c in channels if case_images[c] is not None]
    missing = [c for c in channels if case_images[c] is None]
    if not present:
        raise ValueError("every channel of the case is missing: at least one image is needed as the reference grid")
    out = {c: case_images[c] for c in channels}
    if not missing:
        return FillResult(out, [], [])
    folder = _templates_folder(bank_nifti_folder)
    available = _available_templates(folder)
    plan = {}
    for c in missing:
        name = channel_modalities[c]
        mod = canonical(name) if name is not None and is_known(name) else None
        if mod is None or mod not in available:
            raise ValueError(f"channel {c} (modality {name if name is not None else 'unknown'}"
                             f"{'' if mod is None or mod == name else ' = ' + mod}) is missing and has no "
                             f"template in {folder}; templates available: {sorted(available) or 'none'}")
        plan[c] = (mod, available[mod])
        check_recorded_sha256(available[mod])  # a template replaced after export is refused

    ref = case_images[present[0]]
    ref_arr = sitk.GetArrayFromImage(ref)
    fg = np.zeros(ref_arr.shape, bool)
    for c in present:
        img = case_images[c]
        if img.GetSize() == ref.GetSize():
            fg |= sitk.GetArrayFromImage(img) != 0
    fg = ndimage.binary_fill_holes(fg)
    if not fg.any():
        raise ValueError(f"the reference channel {present[0]} has no nonzero voxel: cannot place a template")

    notes: List[str] = []
    for c in missing:
        mod, path = plan[c]
        tmpl = sitk.ReadImage(path, sitk.sitkFloat32)
        if tmpl.GetDimension() != 3 or tmpl.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"template {path} is not one 3D volume (size {tmpl.GetSize()}): it cannot fill "
                             f"channel {c}; re-export the bundle with nnUNetv2_mmpretrain_export")
        t_arr = minmax(sitk.GetArrayFromImage(tmpl).astype(np.float64))
        t_mask = brain_mask(t_arr, mask_tolerance)
        t_img = sitk.GetImageFromArray(t_arr.astype(np.float32))
        t_img.CopyInformation(tmpl)
        tm_img = sitk.GetImageFromArray(t_mask.astype(np.uint8))
        tm_img.CopyInformation(tmpl)
        on_ref = sitk.GetArrayFromImage(sitk.Resample(t_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                      sitk.sitkFloat32))
        m_on_ref = sitk.GetArrayFromImage(sitk.Resample(tm_img, ref, sitk.Transform(),
                                                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        overlap = float((m_on_ref & fg).sum()) / float(fg.sum())
        if overlap >= min_overlap:
            values = on_ref
            notes.append(f"channel {c} ({mod}): filled with {os.path.basename(path)} resampled by physical "
                         f"coordinates (template brain covers {overlap:.0%} of the case foreground)")
        else:
            if not t_mask.any():
                raise ValueError(f"template {path} is constant: it cannot fill channel {c}")
            values = _bbox_fit(t_img, t_mask, ref, fg)
            msg = (f"channel {c} ({mod}): {os.path.basename(path)} does not overlap the case in physical space "
                   f"(template brain covers {overlap:.0%} of the case foreground, < {min_overlap:.0%}; not "
                   f"atlas-registered?): fitted the template's brain bounding box onto the case's foreground "
                   f"bounding box (scale + shift in index space)")
            notes.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        arr = np.where(fg, values + float(foreground_offset), 0.0).astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref)
        out[c] = img
    return FillResult(out, list(missing), notes)
