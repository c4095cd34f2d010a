"""``--overwrite`` without losing data: the new dataset is built in a hidden sibling folder and
swapped in only when it is complete; an interrupted or failed run removes the half-built folder
and leaves the previous dataset as it was. Also: a release inside the target folder is refused,
and disk errors (full, read-only, no permission) end the conversion with one line."""
from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import Iterable, Optional, Sequence

from nnunet_mmpretrain.conversion.spec import CaseSpec
from nnunet_mmpretrain.conversion.summary import ConversionError
from nnunet_mmpretrain.io_utils import is_fatal_os_error, os_error_line, swap_folder

log = logging.getLogger("nnunet_mmpretrain.conversion")


class OutputError(ConversionError):
    """The output cannot be written (disk full, read-only, no permission): the whole command ends."""


class ConversionInterrupted(ConversionError):
    """Ctrl-C / SIGTERM during a conversion; the message says what was kept."""


def _inside(path: str, folder: str) -> bool:
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or os.path.commonpath([p, f]) == f


def spec_sources(specs: Iterable[CaseSpec]) -> Iterable[str]:
    for s in specs:
        for im in s.images:
            yield im.src
        if s.label is not None:
            yield s.label.src


def refuse_release_inside(folder: str, specs: Sequence[CaseSpec], extra: Sequence[str] = ()) -> None:
    """ConversionError when an input file of the release lies inside the output dataset folder
    (the output would be mixed with, and ``--overwrite`` would replace, its own input)."""
    for src in list(extra) + list(spec_sources(specs)):
        if src and _inside(src, folder):
            raise ConversionError(f"the input {src} lies inside the output dataset folder {folder}: "
                                  f"move the release out of it or choose another -o / -d / --name.")


def estimate_bytes(specs: Iterable[CaseSpec]) -> int:
    """Rough size of the output of ``specs``: the size of their source files."""
    n = 0
    for src in spec_sources(specs):
        try:
            n += os.path.getsize(src)
        except OSError:
            pass
    return n


def restore_interrupted(folder: str) -> None:
    """An ``--overwrite`` killed between its two renames left the previous complete folder as
    ``.<name>.replaced`` and no ``<name>``: rename it back (call before reading the folder)."""
    parent, base = os.path.split(os.path.abspath(folder))
    old = os.path.join(parent, f".{base}.replaced")
    if not os.path.exists(folder) and os.path.isdir(old):
        os.rename(old, folder)
        log.warning("restored %s from an interrupted --overwrite", folder)


class Staging:
    """Where a conversion writes. Without ``--overwrite`` (or when the target does not exist yet)
    that is the target itself (per-file atomic writes, resumable). With ``--overwrite`` of an
    existing folder it is ``.<name>.overwrite`` beside it, swapped in by :meth:`commit`."""

    def __init__(self, folder: str, overwrite: bool, dry_run: bool, what: str = "dataset"):
        self.folder = folder
        self.what = what
        parent, base = os.path.split(os.path.abspath(folder))
        self._old = os.path.join(parent, f".{base}.replaced")
        staging = os.path.join(parent, f".{base}.overwrite")
        if not dry_run:
            restore_interrupted(folder)
        self.staged = bool(overwrite and not dry_run and os.path.isdir(folder))
        self.created = not os.path.exists(folder)  # by this run: removed again when it stays empty
        self.build = staging if self.staged else folder
        if not dry_run:
            for p in (staging, self._old):  # left by a killed earlier run (ours by name)
                shutil.rmtree(p, ignore_errors=True)
        if self.staged:
            try:
                os.makedirs(self.build)
            except OSError as e:
                if not is_fatal_os_error(e):
                    raise
                raise OutputError(f"{os_error_line(e, what=self.build)}; {self.kept_line()}.") from None

    def kept_line(self, staged: Optional[bool] = None) -> str:
        if self.staged if staged is None else staged:
            return f"the previous {self.what} in {self.folder} is unchanged"
        if self.created and not os.path.isdir(self.folder):
            return "nothing was written"
        return f"finished cases in {self.folder} are kept (a re-run resumes)"

    def commit(self) -> None:
        """Swap the complete new folder in (two renames on one file system)."""
        if not self.staged:
            return
        swap_folder(self.build, self.folder, aside=self._old)   # the fixed name restore_interrupted knows
        self.staged = False

    def discard(self) -> None:
        """Remove the half-built folder (staged), or the target when this run created it and
        left it without a file."""
        if self.staged:
            shutil.rmtree(self.build, ignore_errors=True)
            self.staged = False
        elif self.created and os.path.isdir(self.folder):
            for cur, _dirs, _files in sorted(os.walk(self.folder), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(cur)  # only empty folders
                except OSError:
                    pass

    def fail(self, e: BaseException) -> BaseException:
        """The exception to raise for ``e`` after removing the half-built folder: one line that
        says what happened and what was kept (errors that are bugs pass unchanged)."""
        was_staged = self.staged
        self.discard()
        if isinstance(e, KeyboardInterrupt):
            return ConversionInterrupted(f"interrupted: {self.kept_line(was_staged)}.")
        if is_fatal_os_error(e):
            need = getattr(e, "needed_bytes", None)
            return OutputError(f"{os_error_line(e, need, what=self.build)}; {self.kept_line(was_staged)}.")
        if isinstance(e, ConversionError) and was_staged:
            return type(e)(f"{e} ({self.kept_line(True)})")
        return e


def link_tree(src: str, dst: str, skip: Iterable[str] = ()) -> None:
    """Recreate ``src`` under ``dst`` with hard links (copies where linking fails), leaving out
    the files in ``skip`` (real paths) and temporary folders."""
    skip = {os.path.realpath(p) for p in skip}
    for cur, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".partial")]
        rel = os.path.relpath(cur, src)
        out = os.path.join(dst, rel) if rel != "." else dst
        os.makedirs(out, exist_ok=True)
        for fn in files:
            p = os.path.join(cur, fn)
            if os.path.realpath(p) in skip:
                continue
            try:
                os.link(p, os.path.join(out, fn))
            except OSError as e:
                if is_fatal_os_error(e) and e.errno != errno.EACCES:
                    raise
                shutil.copy2(p, os.path.join(out, fn))
