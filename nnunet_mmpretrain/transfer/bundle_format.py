"""What every bundle module shares: the format tag, the file name, the error and the
weights-only loader. No imports of the package's own modules, so the bundle writer
(:mod:`~nnunet_mmpretrain.transfer.bundle`), the model card and the nnssl converter all build on it.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Dict

import numpy as np
import torch

#: what a weights-only load also accepts: the training log of nnU-Net's own checkpoints holds numpy
#: floats (scalars and their dtypes), no code
NUMPY_SCALARS = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64))]

BUNDLE_FORMAT = "nnunet_mmpretrain.bundle/1"
BUNDLE_FILE = "encoder_bundle.pt"


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
