"""What every bundle module shares: the format tag, the file names, the error, the weights-only
loader and the integrity checks (tensor shapes at export, the recorded SHA-256 at every use).
It imports only ground modules, so the bundle writer (:mod:`~nnunet_mmpretrain.transfer.bundle`),
the model card, the nnssl converter and the inference fill all build on it.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Dict

import numpy as np
import torch

from nnunet_mmpretrain.io_utils import sha256_file

#: what a weights-only load also accepts: the training log of nnU-Net's own checkpoints holds numpy
#: floats (scalars and their dtypes), no code
NUMPY_SCALARS = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64))]

BUNDLE_FORMAT = "nnunet_mmpretrain.bundle/1"
BUNDLE_FILE = "encoder_bundle.pt"
META_FILE = "bundle.json"


class BundleError(ValueError):
    """A bundle that cannot be used, with the reason and the fix."""


def package_versions() -> Dict[str, str]:
    """Installed versions of this package, nnU-Net, torch and the network architectures."""
    out = {}
    for p in ("nnunet-mmpretrain", "nnunetv2", "torch", "dynamic_network_architectures"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "unknown"
    return out


def load_weights_only(path: str, what: str) -> dict:
    """``torch.load(path, weights_only=True)`` as a dict, or :class:`BundleError` with the fix."""
    if not os.path.isfile(path):
        raise BundleError(f"{what} {path} does not exist.")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALARS):    # nnU-Net's own checkpoints log numpy floats
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise BundleError(f"{path} is not a weights-only file (it needs full pickle to load, which can run "
                              f"arbitrary code): it was not written by nnUNetv2_mmpretrain_export. Re-export the "
                              f"pretraining checkpoint with nnUNetv2_mmpretrain_export.") from None
        raise BundleError(f"{path} cannot be read ({type(e).__name__}: {first}); the file is truncated or "
                          f"damaged: copy it again or re-export it with nnUNetv2_mmpretrain_export.") from None
    if not isinstance(obj, dict):
        raise BundleError(f"{path} does not hold a dict: not a {what}.")
    return obj


def architecture_fields(ref, arch: dict, plans: dict, configuration: str) -> dict:
    """The bundle entries that name the network: the dynamic-network-architectures keys of the
    reference network ``ref`` built from ``arch`` (the plans' architecture block), the plans and the
    configuration, as every bundle builder records them."""
    return {"key_to_encoder": ref.key_to_encoder, "key_to_stem": ref.key_to_stem,
            "keys_to_in_proj": list(getattr(ref, "keys_to_in_proj", ())),
            "network_class_name": arch["network_class_name"],
            "arch_kwargs": json.dumps(arch["arch_kwargs"], sort_keys=True),
            "plans": json.dumps(plans), "configuration": configuration}


def check_shapes(where: str, tensors: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor],
                 what: str = "") -> None:
    """BundleError naming the first tensor whose shape differs from ``reference``'s (same key)."""
    for k in sorted(tensors):
        want = reference.get(k)
        if want is not None and tuple(tensors[k].shape) != tuple(want.shape):
            raise BundleError(f"{where}: {what}{k} has shape {tuple(tensors[k].shape)} but the architecture of its "
                              f"plans needs {tuple(want.shape)}: the checkpoint does not match its plans; export "
                              f"the checkpoint its pretraining run wrote.")


def check_recorded_sha256(path: str) -> None:
    """BundleError when ``path`` (a file of a bundle folder) differs from the SHA-256 its
    ``bundle.json`` records; nothing when the folder has no bundle.json or does not list it."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    for _ in range(2):  # the bundle folder, or the one above templates/
        meta_file = os.path.join(folder, META_FILE)
        if os.path.isfile(meta_file):
            break
        folder = os.path.dirname(folder)
    else:
        return
    try:
        with open(meta_file) as f:
            meta = json.load(f)
        rel = os.path.relpath(path, folder)
        want = (meta.get("files") or {}).get(rel) or (meta.get("weights_sha256") if rel == meta.get("weights_file")
                                                      else None)
    except (OSError, ValueError, AttributeError):
        raise BundleError(f"{meta_file} cannot be read: the bundle is damaged; copy it again or re-export it "
                          f"with nnUNetv2_mmpretrain_export.") from None
    if want and os.path.isfile(path) and sha256_file(path) != want:
        raise BundleError(f"{path}: SHA-256 differs from the one {meta_file} records (the file is truncated or "
                          f"damaged, or was changed after export): copy the bundle again or re-export it "
                          f"(nnUNetv2_mmpretrain_export --verify {folder} lists every difference).")
