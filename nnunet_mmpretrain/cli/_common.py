"""Helpers shared by the console scripts: one clear line (no traceback) for bad input and for
output folders that cannot be written."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Iterable, Iterator, NoReturn, Optional

from nnunet_mmpretrain.io_utils import (diagnose_disk, is_fatal_os_error, is_write_failure,  # noqa: F401
                                        os_error_line, write_probe)
from nnunet_mmpretrain.planning.nnunet_plan import n_proc_da


def die(message: str, code: int = 2) -> NoReturn:
    """Print one clear error line (no traceback) and exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def exit_2_on_bad_input(cls: type, errors: tuple, methods: tuple = ("__init__",)) -> type:
    """Make ``methods`` of ``cls`` (and its subclasses; constructing by default) end with :func:`die`
    on one of ``errors``.

    For trainers that ``nnUNetv2_train`` constructs and resumes: that command is nnU-Net's, so this
    plugin's only place between it and the trainer is the ``nnUNet_extTrainer`` shim, which applies
    this to the trainer classes whose bad input (a class table, a benchmark cell's settings, a
    checkpoint of another cell) is known before any work starts. The library raises its own error;
    this turns it into one ``error:`` line and exit code 2."""
    for name in methods:
        fn = getattr(cls, name)
        if getattr(fn, "_exits_2_on", None) == errors:
            continue
        setattr(cls, name, _exiting_2(fn, errors))
    return cls


def _exiting_2(fn, errors: tuple):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except errors as e:
            die(str(e))

    wrapper._exits_2_on = errors
    return wrapper


def require_env(*names: str) -> None:
    for var in names:
        if not os.environ.get(var):
            die(f"{var} is not set: export it (see nnU-Net's documentation/setting_up_paths.md).")


def check_n_proc_da() -> None:
    """nnU-Net reads ``$nnUNet_n_proc_DA`` and ``$nnUNet_def_n_proc`` with int() when it is
    imported: a bad value would be a traceback from inside nnU-Net. Call before importing nnunetv2."""
    try:
        n_proc_da()
    except ValueError as e:
        die(str(e))
    v = os.environ.get("nnUNet_def_n_proc")
    if v is not None and not (v.strip().isdigit() and int(v) >= 1):
        die(f"nnUNet_def_n_proc={v!r} is not a whole number >= 1: export the number of worker processes "
            f"nnU-Net may use (e.g. 4) or unset it.")


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def output_folder(path: str, flag: str = "-o", inputs: Iterable[Optional[str]] = ()) -> str:
    """An output folder argument: not an existing file, not one of the ``inputs``; created and
    probed for writing (read-only, full or forbidden disks are named in one line)."""
    if os.path.exists(path) and not os.path.isdir(path):
        die(f"{flag} {path} is an existing file: name a folder for the output.")
    for i in inputs:
        if i and _same(path, i):
            die(f"{flag} {path} is also the input folder: write the output to another folder.")
    writable_folder(path)
    return path


def output_file(path: str, flag: str = "-o", inputs: Iterable[Optional[str]] = ()) -> str:
    """An output file argument: not a folder, not one of the ``inputs``; its folder writable."""
    if os.path.isdir(path):
        die(f"{flag} {path} is a folder: name the output file (e.g. {os.path.join(path, 'out.csv')}).")
    for i in inputs:
        if i and os.path.exists(i) and _same(path, i):
            die(f"{flag} {path} is also an input: write the output to another file.")
    writable_folder(os.path.dirname(os.path.abspath(path)))
    return path


def writable_folder(path: str) -> None:
    """Write (then remove) a probe file in ``path``, or in its nearest existing parent when it
    does not exist yet (nothing is created); die naming the folder when the disk is read-only,
    full or forbidden, or when ``path`` is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        die(f"{path} is an existing file, not a folder: choose another output folder.")
    where = os.path.abspath(path)
    while not os.path.isdir(where):
        parent = os.path.dirname(where)
        if os.path.exists(where) or parent == where:
            die(f"{path} cannot be created: {where} is not a folder; choose another output folder.")
        where = parent
    e = write_probe(where)
    if e is not None:
        die(os_error_line(OSError(e.errno, e.strerror, path)))


@contextlib.contextmanager
def disk_errors(what: str = "the output folder") -> Iterator[None]:
    """A full, read-only or forbidden disk met while working under ``what``: one line naming the
    path. Writers that report a failed write as RuntimeError (blosc2, SimpleITK) are checked
    against the state of the disk holding ``what``."""
    try:
        yield
    except OSError as e:
        if is_fatal_os_error(e):
            die(os_error_line(e, what=what))
        raise
    except RuntimeError:
        disk = diagnose_disk(what)
        if disk is not None:
            die(os_error_line(disk, what=what) + " (finished cases are kept; a re-run resumes)")
        raise


def save_failed_line(path: str, e: BaseException) -> str:
    """One line for a checkpoint / bundle write that failed, naming ``path`` and the disk."""
    disk = diagnose_disk(os.path.dirname(os.path.abspath(path)) or ".")
    why = os_error_line(disk, what=path) if disk is not None else (
        f"writing {path} failed ({(str(e).strip().splitlines() or [type(e).__name__])[-1][:160]}): the disk is "
        f"probably full or the file too large")
    return why + "; nothing was replaced (free space or choose another output path, then run again)"


def require_trained_folder(folder: str, fix: str) -> None:
    """Exit 2 unless ``folder`` is an nnU-Net trainer output folder (dataset.json and plans.json);
    ``fix`` ends the message (what the user should check)."""
    if not os.path.isdir(folder):
        die(f"no trained model at {folder}: {fix}")
    for f in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(folder, f)):
            die(f"{folder} has no {f}, so it is not a trained nnU-Net folder: train with nnUNetv2_train or {fix}")

