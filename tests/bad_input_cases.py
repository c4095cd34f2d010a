"""Cases of the bad-input catalogue (tests/test_bad_inputs.py): ``CATALOGUE`` lists
``(name, setup)``; ``setup(ws)`` prepares the input in the workspace and returns
``(main, argv, needles)``: the command's main function, its arguments and the strings its one
error line must contain (the file or argument at fault, the key word of the problem)."""
from __future__ import annotations

import builtins
import errno
import gzip
import os

import numpy as np
import pytest

import release_fakes as F

CATALOGUE = []
SHAPE = (8, 12, 10)


def case(name):
    def reg(fn):
        CATALOGUE.append((name, fn))
        return fn
    return reg


class Workspace:
    """tmp folder with nnU-Net folders set in the environment; ``io`` holds the disk wrappers."""

    def __init__(self, root, monkeypatch):
        self.root, self.mp, self.io = root, monkeypatch, pytest.MonkeyPatch()
        self.raw, self.pre, self.res = (str(root / n) for n in ("raw", "pre", "res"))
        for var, p in (("nnUNet_raw", self.raw), ("nnUNet_preprocessed", self.pre), ("nnUNet_results", self.res)):
            os.makedirs(p)
            monkeypatch.setenv(var, p)
        monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)

    def p(self, *parts) -> str:
        return os.path.join(str(self.root), *parts)

    def restore(self):
        self.io.undo()

    def failing_disk(self, folder: str, err: int = errno.EROFS):
        """Writes under ``folder`` raise OSError(err): open() for writing, os.open with O_CREAT,
        mkdir, and the converters' image writers (SimpleITK / links are C code)."""
        folder = os.path.abspath(folder)
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

        def under(path):
            return os.path.abspath(str(path)).startswith(folder + os.sep) or os.path.abspath(str(path)) == folder

        def fail(path):
            raise OSError(err, os.strerror(err), str(path))

        def w_open(file, mode="r", *a, **kw):
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
                fail(file)
            return real_open(file, mode, *a, **kw)

        def w_os_open(path, flags, *a, **kw):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and under(path):
                fail(path)
            return real_os_open(path, flags, *a, **kw)

        def w_mkdir(path, *a, **kw):
            if under(path) and not os.path.isdir(path):
                fail(path)
            return real_mkdir(path, *a, **kw)

        from nnunet_mmpretrain.conversion import execute
        self.io.setattr(builtins, "open", w_open)
        self.io.setattr(os, "open", w_os_open)
        self.io.setattr(os, "mkdir", w_mkdir)
        self.io.setattr(execute, "write_image", lambda img, fold, final: fail(final))
        self.io.setattr(execute, "place_file", lambda src, fold, final, link: fail(final))


def img(path, arr=None, **kw):
    return F.write(path, np.random.default_rng(0).random(SHAPE).astype(np.float32) + 1 if arr is None else arr, **kw)


def damage(path, how):
    data = open(path, "rb").read()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "corrupt":
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        data = bytes(b)
    elif how == "short":
        data = gzip.compress(gzip.decompress(data)[:-64])
    elif how == "garbage":
        data = b"not an image" * 10
    elif how == "empty":
        data = b""
    os.remove(path)  # may be a hard link
    open(path, "wb").write(data)
    return path


# ---- converters ----------------------------------------------------------------------------
def conv(ws, *args):
    from nnunet_mmpretrain.cli.convert import main
    return main, list(args) + ["-q"]


def brats(ws, root=None):
    root = root or ws.p("rel")
    F.fake_brats2021(root, n=1)
    return root, os.path.join(root, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021", "BraTS2021_00000",
                              "BraTS2021_00000_")


@case("convert: release folder missing")
def _(ws):
    return (*conv(ws, "brats2021", ws.p("nope"), "-o", ws.raw), [ws.p("nope"), "does not exist"])


@case("convert: release is a file")
def _(ws):
    open(ws.p("f.txt"), "w").write("x")
    return (*conv(ws, "brats2021", ws.p("f.txt"), "-o", ws.raw), [ws.p("f.txt"), "not a directory"])


@case("convert: -o an existing file")
def _(ws):
    rel, _ = brats(ws)
    open(ws.p("out.txt"), "w").write("x")
    return (*conv(ws, "brats2021", rel, "-o", ws.p("out.txt")), [ws.p("out.txt"), "not a directory"])


@case("convert: no -o and nnUNet_raw unset")
def _(ws):
    rel, _ = brats(ws)
    ws.mp.delenv("nnUNet_raw")
    return (*conv(ws, "brats2021", rel), ["nnUNet_raw", "-o"])


@case("convert: dataset id out of range")
def _(ws):
    rel, _ = brats(ws)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw, "-d", "1000"), ["1..999", "1000"])


@case("convert: dataset id used by another dataset")
def _(ws):
    rel, _ = brats(ws)
    os.makedirs(os.path.join(ws.raw, "Dataset521_Other"))
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), ["Dataset521_Other", "-d"])


@case("convert: invalid dataset name")
def _(ws):
    rel, _ = brats(ws)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw, "--name", "a b"), ["'a b'"])


@case("convert: -np 0")
def _(ws):
    rel, _ = brats(ws)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw, "-np", "0"), ["-np"])


@case("convert: release inside the output dataset folder")
def _(ws):
    rel, _ = brats(ws, os.path.join(ws.raw, "Dataset521_BraTS2021", "release"))
    return (*conv(ws, "brats2021", rel, "-o", ws.raw, "--overwrite"), ["lies inside", "Dataset521_BraTS2021"])


@case("convert: output folder equal to the input folder")
def _(ws):
    rel, _ = brats(ws, os.path.join(ws.raw, "Dataset521_BraTS2021"))
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), ["lies inside"])


for _how in ("truncated", "corrupt", "short", "garbage", "empty"):
    @case(f"convert: {_how} .nii.gz in the release")
    def _(ws, how=_how):
        rel, stem = brats(ws)
        return (*conv(ws, "brats2021", rel, "-o", ws.raw), [damage(stem + "t2.nii.gz", how), "no case could"])


@case("convert: 4D image as one modality")
def _(ws):
    rel, stem = brats(ws)
    F.write(stem + "t1.nii.gz", np.ones((2,) + F.SHAPE_ZYX, np.float32), **F.BRATS_GEOMETRY)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), [stem + "t1.nii.gz", "4D"])


@case("convert: 2D image as one modality")
def _(ws):
    rel, stem = brats(ws)
    F.write(stem + "flair.nii.gz", np.ones((12, 12), np.float32))
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), [stem + "flair.nii.gz", "2D"])


@case("convert: label value the release does not define")
def _(ws):
    rel, stem = brats(ws)
    lab = F.tumour_label(F.CODES["brats2021"])
    lab[0, 0, 0] = 7
    F.write(stem + "seg.nii.gz", lab, **F.BRATS_GEOMETRY)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), [stem + "seg.nii.gz", "value(s) 7"])


@case("convert: modality on another grid")
def _(ws):
    rel, stem = brats(ws)
    F.write(stem + "t2.nii.gz", F.noise_image(0, 100, shape=(10, 12, 14)))
    return (*conv(ws, "brats2021", rel, "-o", ws.raw), [stem + "t2.nii.gz", "grid"])


@case("convert: empty release folder")
def _(ws):
    os.makedirs(ws.p("rel"))
    return (*conv(ws, "brats2021", ws.p("rel"), "-o", ws.raw), [ws.p("rel"), "no BraTS 2021 cases"])


for _err, _needle in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):
    @case(f"convert: output disk {errno.errorcode[_err]}")
    def _(ws, err=_err, needle=_needle):
        rel, _ = brats(ws)
        ws.failing_disk(ws.raw, err)
        return (*conv(ws, "brats2021", rel, "-o", ws.raw), [needle, "Dataset521_BraTS2021"])


@case("convert: full disk during --overwrite keeps the old dataset")
def _(ws):
    rel, _ = brats(ws)
    from nnunet_mmpretrain.conversion import brats2021
    brats2021.convert(rel, ws.raw, progress=False, print_summary=False)
    ws.failing_disk(ws.raw, errno.ENOSPC)
    return (*conv(ws, "brats2021", rel, "-o", ws.raw, "--overwrite"), ["no space left", "unchanged"])


def csv_rel(ws):
    c = F.fake_csv_release(ws.p("adni"))
    return c["images"], c["csv"]


@case("convert csv-labels: --csv missing")
def _(ws):
    im, _ = csv_rel(ws)
    return (*conv(ws, "csv-labels", im, "--csv", ws.p("no.csv"), "--id-column", "Subject", "--label-column",
                  "Group", "--pattern", "{id}/{id}_mprage.nii.gz", "-o", ws.raw), [ws.p("no.csv")])


@case("convert csv-labels: unknown id column")
def _(ws):
    im, c = csv_rel(ws)
    return (*conv(ws, "csv-labels", im, "--csv", c, "--id-column", "PTID", "--label-column", "Group",
                  "--pattern", "{id}/{id}_mprage.nii.gz", "-o", ws.raw), ["PTID"])


@case("convert csv-labels: malformed --class-map")
def _(ws):
    im, c = csv_rel(ws)
    return (*conv(ws, "csv-labels", im, "--csv", c, "--id-column", "Subject", "--label-column", "Group",
                  "--class-map", "CN", "-o", ws.raw), ["--class-map", "'CN'"])


@case("convert corpus-folder: no subject folders")
def _(ws):
    os.makedirs(ws.p("subjects"))
    return (*conv(ws, "corpus-folder", ws.p("subjects"), "-o", ws.raw), [ws.p("subjects")])


@case("convert corpus-folder: unknown --resample-to modality")
def _(ws):
    img(ws.p("subjects", "s1", "s1_t1.nii.gz"))
    return (*conv(ws, "corpus-folder", ws.p("subjects"), "-o", ws.raw, "--resample-to", "spectro"), ["spectro"])


@case("convert corpus-folder: the only scan truncated")
def _(ws):
    p = damage(img(ws.p("subjects", "s1", "s1_t1.nii.gz")), "truncated")
    return (*conv(ws, "corpus-folder", ws.p("subjects"), "-o", ws.raw), [p, "truncated"])


from bad_input_cases_more import register  # noqa: E402  (planning, prediction, benchmark cases)

register(case, img, damage)

from bad_input_cases_integrity import register as register_integrity  # noqa: E402  (data integrity, faults)

register_integrity(case, img, damage)
