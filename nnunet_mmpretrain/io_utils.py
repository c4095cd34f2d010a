"""Small I/O helpers: atomic writes so nothing is left half-written (with the umask's file mode),
NIfTI writing and a full read of compressed NIfTI files, one-line descriptions of disk errors."""
from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import tempfile
import zlib
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

#: errors of the output disk that end a whole command (not one case): full, read-only, no permission
FATAL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS,
                                     errno.EACCES) if e is not None)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` must set one
    to read it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder under the current umask (0o755 under the usual 022)."""
    return 0o777 & ~_umask()


@contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path beside ``final_path``; rename it into place only on success.

    The temporary name keeps the final file's extension(s) so writers that look at the suffix
    (SimpleITK, nibabel, torch) behave the same.
    """
    folder = os.path.dirname(os.path.abspath(final_path)) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(final_path)
    ext = base[base.index("."):] if "." in base else ""
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + base.split(".")[0] + "_", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        if os.path.isfile(tmp):  # mkstemp makes 0600 files: give them the mode any new file gets
            os.chmod(tmp, file_mode())
        os.replace(tmp, final_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(obj, path: str, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)


def atomic_write_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def normal_modes(folder: str) -> None:
    """Give ``folder`` and everything in it the modes a plain ``open`` / ``mkdir`` would (files
    made through ``tempfile`` are 0600, folders 0700)."""
    d_mode, f_mode = dir_mode(), file_mode()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, d_mode)
        for f in files:
            os.chmod(os.path.join(root, f), f_mode)


def swap_folder(new: str, folder: str, aside: Optional[str] = None) -> None:
    """Put the complete folder ``new`` at ``folder`` (renames on one file system). An existing
    ``folder`` is first renamed to ``aside`` (default: a fresh hidden name beside it), put back
    when the second rename fails, and removed only once ``new`` is in place, so a reader sees
    the old folder or the new one, never a half-written one."""
    if not os.path.lexists(folder):
        os.rename(new, folder)
        return
    if aside is None:
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=os.path.dirname(folder))
        os.rmdir(aside)
    os.rename(folder, aside)
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def is_fatal_os_error(e: BaseException) -> bool:
    """True for a full disk / quota, a read-only file system or a permission error."""
    return isinstance(e, OSError) and e.errno in FATAL_ERRNOS


#: what torch.save / its zip writer say when a write fails (full disk, file size limit)
_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos", "No space left")


def is_write_failure(e: BaseException) -> bool:
    """True for the RuntimeError torch.save raises when the disk refuses a write (it raises no
    OSError), and for a fatal OSError of the output disk."""
    return (isinstance(e, RuntimeError) and any(w in str(e) for w in _WRITE_FAILED)) or \
        (isinstance(e, OSError) and is_fatal_os_error(e)) or (isinstance(e, OSError) and e.errno == errno.EFBIG)


def _gb(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def existing_parent(path: str) -> str:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    p = os.path.abspath(path)
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def write_probe(folder: str) -> Optional[OSError]:
    """Write and remove a small file in the existing ``folder``: None when that works, else the OSError."""
    probe = os.path.join(folder, f".write_probe_{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("x")
        os.remove(probe)
    except OSError as e:
        return e
    return None


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = existing_parent(path)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def diagnose_disk(path: str, min_free: int = 1 << 20) -> Optional[OSError]:
    """An OSError describing why writing under ``path`` fails (read-only file system, less than
    ``min_free`` bytes free), or None. For writers that report a failed write without errno
    (SimpleITK's and blosc2's RuntimeError)."""
    p = existing_parent(path)
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    if st.f_bavail * st.f_frsize < min_free:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return None


def os_error_line(e: OSError, needed_bytes: Optional[int] = None, what: str = "the output folder") -> str:
    """One line for an OSError of the output disk, naming the path and the fix."""
    path = e.filename or what
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        free = free_bytes(path) if e.filename else None
        need = f"about {_gb(needed_bytes)} more are needed" if needed_bytes else "more space is needed"
        have = f", {_gb(free)} free" if free is not None else ""
        return (f"no space left on the device writing {path} ({need}{have}): free space or choose "
                f"another output folder, then re-run")
    if e.errno == errno.EROFS:
        return f"{path} is on a read-only file system: choose a writable output folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for {path}: fix its permissions or choose another output folder"
    return f"{e.strerror or e}: {path}"


def nifti_damage(path: str) -> Optional[str]:
    """Why a NIfTI file is damaged, or None. ``.nii.gz`` files are decompressed to the end (a
    truncated or corrupted gzip stream is an error here; SimpleITK fills truncated data with
    zeros); the voxel data must be as long as the header says (``.nii`` and ``.nii.gz``)."""
    low = path.lower()
    if not (low.endswith(".nii") or low.endswith(".nii.gz")):
        return None
    try:
        if low.endswith(".gz"):
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return None  # not gzip at all: the image reader names the problem
            with gzip.open(path, "rb") as f:
                head = f.read(352)
                n = len(head)
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    n += len(chunk)
        else:
            with open(path, "rb") as f:
                head = f.read(352)
            n = os.path.getsize(path)
    except EOFError:
        return "is truncated (the compressed data ends early): copy or download it again"
    except (gzip.BadGzipFile, zlib.error) as e:
        return f"is damaged (gzip: {e}): copy or download it again"
    except OSError as e:
        if e.errno is not None:
            raise
        return f"is damaged ({e}): copy or download it again"
    expected = _nifti_bytes(head)
    if expected is None:
        return None  # not a NIfTI-1/2 header: the image reader gives its own verdict
    if n < expected:
        return (f"is truncated ({n} bytes of data, the header needs {expected}): copy or download it "
                f"again")
    return None


def damaged_files(dataset_folder: str, subfolders=("imagesTr", "labelsTr", "imagesTs")):
    """(path, reason) of every truncated / corrupt NIfTI file of an nnU-Net raw dataset, sorted."""
    out = []
    for sub in subfolders:
        d = os.path.join(dataset_folder, sub)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            why = nifti_damage(os.path.join(d, fn))
            if why:
                out.append((os.path.join(d, fn), why))
    return out


def _nifti_bytes(head: bytes) -> Optional[int]:
    """Bytes a single-file NIfTI needs (vox_offset + voxels), from its header; None if unknown."""
    if len(head) < 348:
        return None
    for order in ("<", ">"):
        hdr_size = int(np.frombuffer(head[:4], dtype=order + "i4")[0])
        if hdr_size == 348 and head[344:347] in (b"n+1", b"ni1"):
            dims = np.frombuffer(head[40:56], dtype=order + "i2").astype(np.int64)
            bitpix = int(np.frombuffer(head[72:74], dtype=order + "i2")[0])
            off = int(np.frombuffer(head[108:112], dtype=order + "f4")[0])
            if head[344:347] == b"ni1":
                return None  # header and data in two files
            nd = int(dims[0])
            if not 1 <= nd <= 7 or bitpix <= 0:
                return None
            n_vox = int(np.prod(np.maximum(dims[1:1 + nd], 1)))
            return max(off, 348) + n_vox * bitpix // 8
    return None


class FolderBusyError(ValueError):
    """Another process holds the lock of a folder (one line naming it and the fix)."""


@contextmanager
def exclusive_lock(folder: str, command: str) -> Iterator[None]:
    """Hold ``folder/.lock`` (an advisory ``flock``) while the block runs; FolderBusyError at once
    when another process (``command``) holds it. The lock goes with the process, also when it is
    killed."""
    import fcntl
    path = os.path.join(folder, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"another {command} is working on {folder} (it holds {path}): wait for it to "
                                  f"finish, then run again") from None
        yield
    finally:
        os.close(fd)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_csv_text(path: str):
    """(text, csv.DictReader) of a small table: UTF-8 with or without BOM, the delimiter (, ; or
    tab) sniffed from its start. The text is '' for an empty or blank file (the reader is then
    None), so callers can say what the file should hold."""
    import csv
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        return "", None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return text, csv.DictReader(text.splitlines(), dialect=dialect)
