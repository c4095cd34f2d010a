"""``nnUNetv2_mmpretrain_doctor``: is this environment ready for the plugin?

One line per check, ``ok`` or ``FAIL`` with the fix; exit code 0 only when every check passes
(1 otherwise). Checked:

* versions: nnunetv2 2.8.x; torch, dynamic-network-architectures and blosc2 within the ranges the
  installed nnunetv2 declares; torchvision the release built for the installed torch (and
  importable: a mismatched pair fails on import);
* ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``: set, existing folders, writable
  (a probe file is written and removed), with at least ``--min-free-gb`` free;
* ``nnUNet_n_proc_DA``: unset or a whole number >= 0 (nnU-Net reads it with int() on import);
* ``nnUNet_extTrainer``: set, lists this plugin's trainer folder, and nnU-Net's own trainer
  lookup finds ``nnUNetTrainerMMPretrain`` and ``nnUNetTrainerMMFinetune`` through it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from typing import Callable, List, Optional, Tuple

from nnunet_mmpretrain.io_utils import free_bytes, write_probe
from nnunet_mmpretrain.planning.nnunet_plan import n_proc_da
from nnunet_mmpretrain.training.lookup import ext_trainer_folder

Result = Tuple[bool, str]
NNUNET_SERIES = "2.8."
PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
TRAINERS = ("nnUNetTrainerMMPretrain", "nnUNetTrainerMMFinetune")


def _version(dist: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nnunet_requirement(dist: str) -> Optional[str]:
    """The version specifier the installed nnunetv2 declares for ``dist`` (None when none)."""
    from importlib import metadata
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    for r in metadata.requires("nnunetv2") or []:
        req = Requirement(r)
        if canonicalize_name(req.name) == canonicalize_name(dist) and \
                (req.marker is None or req.marker.evaluate({"extra": ""})):
            return str(req.specifier)
    return None


def check_nnunet() -> Result:
    v = _version("nnunetv2")
    if v is None:
        return False, "not installed: pip install 'nnunetv2>=2.8,<2.9'"
    if not v.startswith(NNUNET_SERIES):
        return False, f"{v} installed, this plugin needs 2.8.x: pip install 'nnunetv2>=2.8,<2.9'"
    return True, v


def dependency_check(dist: str) -> Callable[[], Result]:
    def check() -> Result:
        from packaging.specifiers import SpecifierSet
        v = _version(dist)
        spec = _nnunet_requirement(dist) if _version("nnunetv2") else None
        if v is None:
            return False, f"not installed: pip install '{dist}{spec or ''}'"
        if spec and v not in SpecifierSet(spec, prereleases=True):
            return False, f"{v} installed, nnunetv2 needs {spec}: pip install '{dist}{spec}'"
        return True, f"{v}" + (f" (nnunetv2 needs {spec})" if spec else "")
    return check


def check_torchvision() -> Result:
    tv, t = _version("torchvision"), _version("torch")
    if tv is None:
        return False, "not installed: install the torchvision release built for your torch"
    if t is None:
        return False, f"{tv} installed without torch"
    from packaging.version import Version
    tv_v, t_v = Version(tv), Version(t)
    if t_v.major == 2 and (tv_v.major, tv_v.minor) != (0, t_v.minor + 15):
        return False, (f"{tv} does not match torch {t} (torch 2.{t_v.minor} pairs with torchvision "
                       f"0.{t_v.minor + 15}): pip install 'torchvision==0.{t_v.minor + 15}.*'")
    try:
        import torchvision  # noqa: F401  (a mismatched build fails here)
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return False, f"{tv} does not import ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})"
    return True, f"{tv} (matches torch {t})"


def path_check(var: str, min_free_gb: float) -> Callable[[], Result]:
    def check() -> Result:
        v = os.environ.get(var)
        if not v:
            return False, f"not set: export {var}=/path/to/{var} (see nnU-Net's documentation/setting_up_paths.md)"
        if not os.path.isdir(v):
            what = "is a file, not a folder" if os.path.exists(v) else "does not exist"
            return False, f"{v} {what}: mkdir -p a folder and export {var} to it"
        e = write_probe(v)
        if e is not None:
            return False, f"{v} is not writable ({e.strerror}): fix its permissions or export another folder"
        free = free_bytes(v)
        if free is not None and free < min_free_gb * 1e9:
            return False, f"{v}: only {free / 1e9:.1f} GB free (want {min_free_gb:g} GB): free space or move it"
        return True, f"{v} (writable, {free / 1e9:.0f} GB free)" if free is not None else f"{v} (writable)"
    return check


def check_n_proc_da() -> Result:
    try:
        n = n_proc_da()
    except ValueError as e:
        return False, str(e)
    return True, "unset (nnU-Net picks a number per machine)" if n is None else \
        f"{n}" + (" (augmentation in the main process; planning uses 1 thread)" if n == 0 else "")


def check_ext_trainer() -> Result:
    v = os.environ.get("nnUNet_extTrainer")
    fix = 'eval "$(nnUNetv2_mmpretrain_ext_trainer)"'
    if not v:
        return False, f"not set, nnU-Net cannot find this plugin's trainers: {fix}"
    folder = ext_trainer_folder()
    parts = [os.path.realpath(p) for p in v.split(os.pathsep) if p.strip()]
    if os.path.realpath(folder) not in parts:
        return False, f"{v} does not list {folder}: {fix}"
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        with contextlib.redirect_stdout(io.StringIO()):
            found = [recursive_find_trainer_class_by_name(t).__name__ for t in TRAINERS]
    except Exception as e:  # noqa: BLE001 - the shim failing to import is the finding
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return False, f"nnU-Net's trainer lookup failed ({type(e).__name__}: {first}); reinstall the plugin"
    return True, f"{folder} (nnU-Net finds {', '.join(found)})"


def checks(min_free_gb: float) -> List[Tuple[str, Callable[[], Result]]]:
    out: List[Tuple[str, Callable[[], Result]]] = [("nnunetv2", check_nnunet)]
    for dist in ("torch", "dynamic-network-architectures", "blosc2"):
        out.append((dist, dependency_check(dist)))
    out.append(("torchvision", check_torchvision))
    out += [(var, path_check(var, min_free_gb)) for var in PATH_VARS]
    out.append(("nnUNet_n_proc_DA", check_n_proc_da))
    out.append(("nnUNet_extTrainer", check_ext_trainer))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_mmpretrain_doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-free-gb", type=float, default=5.0,
                   help="free disk space each nnU-Net folder needs (default 5 GB)")
    a = p.parse_args(argv)
    failed = []
    n_proc_ok = check_n_proc_da()[0]
    for name, fn in checks(a.min_free_gb):
        if name == "nnUNet_extTrainer" and not n_proc_ok:  # importing nnU-Net would fail
            print(f"FAIL {name}: not checked: nnU-Net cannot be imported until nnUNet_n_proc_DA is fixed")
            failed.append(name)
            continue
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - a check that cannot run has failed
            ok, detail = False, f"check could not run ({type(e).__name__}: {e})"
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failed.append(name)
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
