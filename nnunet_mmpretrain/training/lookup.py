"""Where nnU-Net's trainer lookup finds this plugin's trainers: the folder of the
``nnunet_mmpretrain_ext`` shim, as the value of ``nnUNet_extTrainer``. Located without importing
the shim (it imports every trainer), so commands and the benchmark can set it cheaply."""
from __future__ import annotations

import importlib.util
import os

SHIM_PACKAGE = "nnunet_mmpretrain_ext"


def ext_trainer_folder() -> str:
    """The shim's folder (installed beside this package, or in the source tree)."""
    spec = importlib.util.find_spec(SHIM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{SHIM_PACKAGE} is not installed beside nnunet_mmpretrain: reinstall the plugin "
                                  f"(pip install -e .)")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def ext_trainer_value(existing: str | None = None) -> str:
    """``existing`` (os.pathsep-separated) with our folder appended when it is not there yet."""
    folder = ext_trainer_folder()
    parts = [p for p in (existing or "").split(os.pathsep) if p]
    if folder not in parts:
        parts.append(folder)
    return os.pathsep.join(parts)
