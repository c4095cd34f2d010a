"""Behaviour shared by every converter: resumable / idempotent runs, atomic writes, dry runs,
hard links and copies, safety of output paths, clear errors, the command line."""
from __future__ import annotations

import errno
import json
import os

import pytest

from nnunet_mmpretrain.cli import convert as cli
from nnunet_mmpretrain.conversion import (ALREADY_DONE, ConversionError, brats2021, execute,
                                          folder_corpus, ixi)
import release_fakes as F
from nnunet_mmpretrain.conversion.common import CaseSkip, safe_join
from nnunet_mmpretrain.corpus.manifest import load_manifest

DS = "Dataset521_BraTS2021"


@pytest.fixture
def brats(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2021(rel, n=3)
    return rel, raw


def test_second_run_converts_nothing(brats):
    rel, raw = brats
    s1 = brats2021.convert(rel, raw, progress=False)
    assert len(s1.converted) == 3
    mtimes = {f: os.stat(os.path.join(raw, f)).st_mtime_ns for f in F.tree(raw)}
    s2 = brats2021.convert(rel, raw, progress=False)
    assert s2.converted == [] and len(s2.already_done) == 3 and s2.problems == {}
    assert set(s2.skipped.values()) == {ALREADY_DONE}
    assert {f: os.stat(os.path.join(raw, f)).st_mtime_ns for f in F.tree(raw) if f != f"{DS}/dataset.json"} == \
        {f: t for f, t in mtimes.items() if f != f"{DS}/dataset.json"}
    assert "skipped 3 already converted" in s2.report()


def test_resume_after_a_killed_run(brats):
    rel, raw = brats
    brats2021.convert(rel, raw, progress=False)
    folder = os.path.join(raw, DS)
    # as a killed run leaves it: one case without its label, a temp file in .partial/
    os.remove(os.path.join(folder, "labelsTr", "BraTS2021_00001.nii.gz"))
    os.makedirs(os.path.join(folder, ".partial"))
    with open(os.path.join(folder, ".partial", "abc_BraTS2021_00001.nii.gz"), "wb") as f:
        f.write(b"truncated")
    s = brats2021.convert(rel, raw, progress=False)
    assert s.converted == ["BraTS2021_00001"] and len(s.already_done) == 2
    assert not os.path.exists(os.path.join(folder, ".partial"))
    F.verify_fast(folder)


def test_failure_in_the_middle_of_a_case_leaves_no_file(brats, monkeypatch):
    rel, raw = brats
    real = execute.write_image

    def failing(img, folder, final):
        if "labelsTr" in final and "00001" in final:
            raise RuntimeError("ITK ERROR: cannot write the label")  # one case's problem
        return real(img, folder, final)

    monkeypatch.setattr(execute, "write_image", failing)
    s = brats2021.convert(rel, raw, progress=False)
    assert sorted(s.converted) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert "cannot write the label" in s.problems["BraTS2021_00001"]
    folder = os.path.join(raw, DS)
    assert not [f for f in F.tree(folder) if "00001" in f]
    assert not os.path.exists(os.path.join(folder, ".partial"))
    with open(os.path.join(folder, "dataset.json")) as f:
        assert json.load(f)["numTraining"] == 2
    F.verify_fast(folder)
    monkeypatch.setattr(execute, "write_image", real)
    s = brats2021.convert(rel, raw, progress=False)
    assert s.converted == ["BraTS2021_00001"]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_errors_end_the_conversion(brats, monkeypatch, err):
    """A full / read-only / forbidden disk is not a per-case problem: the conversion stops with
    one line naming the path, no dataset.json with the survivors; a re-run resumes."""
    rel, raw = brats
    real = execute.write_image

    def failing(img, folder, final):
        if "labelsTr" in final and "00001" in final:
            raise OSError(err, os.strerror(err), final)
        return real(img, folder, final)

    monkeypatch.setattr(execute, "write_image", failing)
    with pytest.raises(ConversionError) as ei:
        brats2021.convert(rel, raw, progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "labelsTr" in msg and "BraTS2021_00001" in msg
    assert ("no space left" in msg and "more are needed" in msg) if err == errno.ENOSPC else True
    folder = os.path.join(raw, DS)
    assert not os.path.exists(os.path.join(folder, "dataset.json"))
    assert not [f for f in F.tree(folder) if "00001" in f] and "finished cases" in msg
    monkeypatch.setattr(execute, "write_image", real)
    s = brats2021.convert(rel, raw, progress=False)
    assert "BraTS2021_00001" in s.converted and s.problems == {}


def test_overwrite_is_built_beside_and_swapped_in(brats, monkeypatch):
    rel, raw = brats
    brats2021.convert(rel, raw, progress=False)
    folder = os.path.join(raw, DS)
    before = {f: os.path.getsize(os.path.join(raw, f)) for f in F.tree(raw)}
    real = execute.write_image
    calls = []

    def interrupted(img, fold, final):  # Ctrl-C in the middle of the second case
        calls.append(final)
        assert fold != folder  # never written into the complete dataset
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(img, fold, final)

    monkeypatch.setattr(execute, "write_image", interrupted)
    with pytest.raises(ConversionError) as ei:
        brats2021.convert(rel, raw, overwrite=True, progress=False)
    assert "interrupted" in str(ei.value) and "unchanged" in str(ei.value)
    assert {f: os.path.getsize(os.path.join(raw, f)) for f in F.tree(raw)} == before
    assert os.listdir(raw) == [DS]  # no temporary folder left
    for err in (errno.ENOSPC, errno.EROFS):
        def full(img, fold, final, err=err):
            raise OSError(err, os.strerror(err), final)
        monkeypatch.setattr(execute, "write_image", full)
        with pytest.raises(ConversionError, match="previous dataset in .* is unchanged"):
            brats2021.convert(rel, raw, overwrite=True, progress=False)
        assert {f: os.path.getsize(os.path.join(raw, f)) for f in F.tree(raw)} == before
    monkeypatch.setattr(execute, "write_image", real)
    s = brats2021.convert(rel, raw, overwrite=True, progress=False)
    assert len(s.converted) == 3 and os.listdir(raw) == [DS]
    F.verify_fast(folder)


def test_damaged_release_file_skips_its_case_and_verify_names_damaged_output(brats, capsys):
    rel, raw = brats
    base = os.path.join(rel, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021")
    t2 = os.path.join(base, "BraTS2021_00001", "BraTS2021_00001_t2.nii.gz")
    data = open(t2, "rb").read()
    open(t2, "wb").write(data[: len(data) // 2])  # SimpleITK alone would read zeros
    s = brats2021.convert(rel, raw, progress=False)
    assert sorted(s.converted) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert t2 in s.problems["BraTS2021_00001"] and "truncated" in s.problems["BraTS2021_00001"]
    out = os.path.join(raw, DS, "imagesTr", "BraTS2021_00000_0000.nii.gz")
    data = open(out, "rb").read()
    os.remove(out)  # a hard link of the release: replace, not rewrite, the file
    open(out, "wb").write(data[:-40])
    with pytest.raises(SystemExit) as e:
        cli.main(["brats2021", rel, "-o", raw, "-q", "--verify"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and out in err[0] and "again" in err[0]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_mode(brats, umask):
    """mkstemp makes 0600 files; what we write must be readable as any new file would be."""
    import numpy as np
    import SimpleITK as sitk
    from nnunet_mmpretrain.io_utils import atomic_path, atomic_write_json
    rel, raw = brats
    old = os.umask(umask)
    try:
        brats2021.convert(rel, raw, progress=False)
        p = os.path.join(raw, "x.json")
        atomic_write_json({"a": 1}, p)
        with atomic_path(os.path.join(raw, "x.nii.gz")) as tmp:
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32)), tmp)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for f in (os.path.join(raw, DS, "dataset.json"), p, os.path.join(raw, "x.nii.gz")):
        assert os.stat(f).st_mode & 0o777 == want, f


def test_kill_between_the_two_renames_of_overwrite_is_recovered(brats):
    rel, raw = brats
    brats2021.convert(rel, raw, progress=False)
    folder = os.path.join(raw, DS)
    before = F.tree(folder)
    os.rename(folder, os.path.join(raw, "." + DS + ".replaced"))  # the swap's first rename only
    os.makedirs(os.path.join(raw, "." + DS + ".overwrite", "imagesTr"))
    s = brats2021.convert(rel, raw, progress=False)
    assert len(s.already_done) == 3 and F.tree(folder) == before and os.listdir(raw) == [DS]


def test_release_inside_the_target_is_refused(tmp_path):
    raw = tmp_path / "raw"
    rel = raw / DS / "release"
    F.fake_brats2021(str(rel), n=1)
    before = F.tree(str(tmp_path))
    for overwrite in (False, True):
        with pytest.raises(ConversionError, match="lies inside the output dataset folder"):
            brats2021.convert(str(rel), str(raw), overwrite=overwrite, progress=False)
    assert F.tree(str(tmp_path)) == before


def test_dry_run_writes_nothing(brats, tmp_path):
    rel, raw = brats
    before = F.tree(str(tmp_path))
    s = brats2021.convert(rel, raw, dry_run=True, progress=False)
    assert s.dry_run and len(s.converted) == 3 and F.tree(str(tmp_path)) == before
    assert not os.path.exists(raw) and "would convert 3" in s.report()
    brats2021.convert(rel, raw, progress=False)
    before = F.tree(str(tmp_path))
    s = brats2021.convert(rel, raw, dry_run=True, overwrite=True, progress=False)
    assert len(s.converted) == 3 and F.tree(str(tmp_path)) == before  # overwrite only announced


def test_overwrite_converts_again(brats):
    rel, raw = brats
    brats2021.convert(rel, raw, progress=False)
    s = brats2021.convert(rel, raw, overwrite=True, progress=False)
    assert len(s.converted) == 3 and s.already_done == []


def test_copy_and_link_fallback(brats, monkeypatch):
    rel, raw = brats
    src = os.path.join(rel, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021", "BraTS2021_00000",
                       "BraTS2021_00000_t1.nii.gz")
    s = brats2021.convert(rel, raw, link=False, progress=False)
    out = os.path.join(raw, DS, "imagesTr", "BraTS2021_00000_0000.nii.gz")
    assert s.files["copied"] == 12 and s.files["linked"] == 0 and not os.path.samefile(src, out)

    def no_link(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    s = brats2021.convert(rel, raw, dataset_id=522, name="BraTS2021copy", progress=False)
    assert s.files["link_fallback_copies"] == 12 and s.files["copied"] == 12
    assert any("hard links were not possible" in n for n in s.notes)


def test_parallel_workers(brats):
    rel, raw = brats
    s = brats2021.convert(rel, raw, num_processes=2, progress=False)
    assert sorted(s.converted) == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]


def test_grid_mismatch_and_bad_labels_are_skipped_with_reasons(brats):
    rel, raw = brats
    base = os.path.join(rel, "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021")
    F.write(os.path.join(base, "BraTS2021_00001", "BraTS2021_00001_t2.nii.gz"), F.noise_image(0, 100, shape=(10, 12, 14)))
    lab = F.tumour_label(F.CODES["brats2021"])
    lab[0, 0, 0] = 3  # 3 does not exist in BraTS 2021
    F.write(os.path.join(base, "BraTS2021_00002", "BraTS2021_00002_seg.nii.gz"), lab, **F.BRATS_GEOMETRY)
    s = brats2021.convert(rel, raw, progress=False)
    assert s.converted == ["BraTS2021_00000"]
    r1, r2 = s.problems["BraTS2021_00001"], s.problems["BraTS2021_00002"]
    assert "BraTS2021_00001_t2.nii.gz" in r1 and "size" in r1
    assert "BraTS2021_00002_seg.nii.gz" in r2 and "value(s) 3" in r2 and "BraTS 2021" in r2


def test_paths_never_leave_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert safe_join(str(out), "imagesTr/a.nii.gz") == os.path.join(str(out), "imagesTr/a.nii.gz")
    for bad in ("../a.nii.gz", "imagesTr/../../a.nii.gz", "/etc/a.nii.gz"):
        with pytest.raises(CaseSkip):
            safe_join(str(out), bad)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(str(elsewhere), str(out / "images"))
    with pytest.raises(CaseSkip, match="outside"):
        safe_join(str(out), "images/a.nii.gz")
    # case ids that are not plain names are rejected (here a subject folder called 'a..b')
    rel = tmp_path / "rel"
    F.write(str(rel / "a..b" / "t1.nii.gz"), F.noise_image(0, 100))
    F.write(str(rel / "good" / "t1.nii.gz"), F.noise_image(0, 100))
    s = folder_corpus.convert(str(rel), str(tmp_path / "raw"), progress=False)
    assert s.converted == ["good"] and "invalid case id" in s.problems["a..b"]
    assert [c.case_id for c in load_manifest(str(tmp_path / "raw" / "Dataset553_FolderCorpus")).cases] == ["good"]


def test_clear_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        brats2021.convert(str(tmp_path / "nope"), str(tmp_path / "raw"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no BraTS 2021 cases"):
        brats2021.convert(str(tmp_path / "empty"), str(tmp_path / "raw"))
    with pytest.raises(ConversionError, match="no IXI scans"):
        ixi.convert(str(tmp_path / "empty"), str(tmp_path / "raw"))
    F.fake_brats2021(str(tmp_path / "rel"), n=1)
    (tmp_path / "raw" / "Dataset521_Other").mkdir(parents=True)
    with pytest.raises(ConversionError, match="already used by Dataset521_Other"):
        brats2021.convert(str(tmp_path / "rel"), str(tmp_path / "raw"))


def test_cli(tmp_path, capsys, monkeypatch):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2021(rel, n=2)
    assert cli.main(["brats2021", rel, "-o", raw, "-q", "--dry-run"]) == 0
    assert "would convert 2" in capsys.readouterr().out and not os.path.exists(raw)
    with F.serial_nnunet_verify():
        assert cli.main(["brats2021", rel, "-o", raw, "-q", "--copy", "-d", "600", "--name", "B21", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "converted 2 case(s)" in out and "verify_dataset_integrity Done" in out
    # $nnUNet_raw is the default output
    monkeypatch.setenv("nnUNet_raw", raw)
    assert cli.main(["brats2021", rel, "-q"]) == 0
    assert os.path.isfile(os.path.join(raw, DS, "dataset.json"))
    # one-line errors, exit code 2
    with pytest.raises(SystemExit) as e:
        cli.main(["brats2021", str(tmp_path / "missing"), "-o", raw])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "does not exist" in err
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(SystemExit):
        cli.main(["brats2021", rel])
    assert "nnUNet_raw" in capsys.readouterr().err
    # kind-specific options
    F.fake_ixi(str(tmp_path / "ixi"))
    assert cli.main(["corpus-ixi", str(tmp_path / "ixi"), "-o", raw, "-q", "--resample-to-t1"]) == 0
    assert len(load_manifest(os.path.join(raw, "Dataset551_IXICorpus")).cases) == 2
    c = F.fake_csv_release(str(tmp_path / "adni"))
    assert cli.main(["csv-labels", c["images"], "--csv", c["csv"], "--id-column", "Subject", "--label-column",
                     "Group", "--pattern", "{id}/{id}_mprage.nii.gz", "--class-map", "CN=0,MCI=1", "-o", raw,
                     "-q"]) == 0
    assert os.path.isfile(os.path.join(raw, "Dataset540_ADNI_labels", "classes.csv"))
    with pytest.raises(SystemExit):
        cli.main(["csv-labels", c["images"], "--csv", c["csv"], "--id-column", "Subject", "--label-column",
                  "Group", "--class-map", "CN:0", "-o", raw])
    assert "NAME=INT" in capsys.readouterr().err


def test_corpus_overwrite_of_one_source_is_staged(tmp_path, monkeypatch):
    """--overwrite of one source of a multi-source corpus: built beside it (the other source's
    files hard-linked), swapped in when complete; a failure leaves the corpus as it was."""
    raw = str(tmp_path / "raw")
    F.fake_subject_folders(str(tmp_path / "a"))
    F.fake_ixi(str(tmp_path / "ixi"))
    folder_corpus.convert(str(tmp_path / "a"), raw, name="Mixed", progress=False, print_summary=False)
    ixi.convert(str(tmp_path / "ixi"), raw, dataset_id=553, name="Mixed", progress=False, print_summary=False)
    folder = os.path.join(raw, "Dataset553_Mixed")
    before = {f: os.path.getsize(os.path.join(folder, f)) for f in F.tree(folder)}
    sources = {c.source for c in load_manifest(folder).cases}
    assert len(sources) == 2

    def full(src, fold, final, link):
        raise OSError(errno.ENOSPC, "No space left on device", final)

    monkeypatch.setattr(execute, "place_file", full)
    monkeypatch.setattr(execute, "write_image", lambda img, fold, final: full(None, fold, final, True))
    with pytest.raises(ConversionError, match="previous corpus in .* is unchanged"):
        folder_corpus.convert(str(tmp_path / "a"), raw, name="Mixed", overwrite=True, progress=False)
    assert {f: os.path.getsize(os.path.join(folder, f)) for f in F.tree(folder)} == before
    assert sorted(os.listdir(raw)) == ["Dataset553_Mixed"]
    monkeypatch.undo()
    s = folder_corpus.convert(str(tmp_path / "a"), raw, name="Mixed", overwrite=True, progress=False)
    man = load_manifest(folder)
    assert {c.source for c in man.cases} == sources and len(s.converted) == 3
    assert all(os.path.isfile(man.path(c, m)) for c in man.cases for m in c.images)
    assert sorted(os.listdir(raw)) == ["Dataset553_Mixed"]


def test_sigterm_during_overwrite_keeps_the_dataset(tmp_path):
    """A killed job (SIGTERM) mid --overwrite: the previous dataset stays, the command says so."""
    import signal
    import subprocess
    import sys
    import time
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2021(rel, n=3)
    brats2021.convert(rel, raw, progress=False)
    before = {f: os.path.getsize(os.path.join(raw, f)) for f in F.tree(raw)}
    code = ("import sys, time; from nnunet_mmpretrain.conversion import execute; real = execute.write_image\n"
            "def slow(*a):\n    print('writing', flush=True); time.sleep(30); return real(*a)\n"
            "execute.write_image = slow\nfrom nnunet_mmpretrain.cli.convert import main\n"
            f"sys.exit(main(['brats2021', {rel!r}, '-o', {raw!r}, '-q', '--overwrite']))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # wait until the new dataset is being written
        if "writing" in line:
            break
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "unchanged" in err and "Traceback" not in err
    assert {f: os.path.getsize(os.path.join(raw, f)) for f in F.tree(raw)} == before
    assert os.listdir(raw) == [DS]


def test_every_registered_release_is_a_subcommand_and_options_are_checked(tmp_path):
    """The CLI is generated from the registry (nothing registered is unreachable), and the
    options object refuses keywords it does not know instead of silently ignoring them."""
    from nnunet_mmpretrain.cli.convert import build_parser
    from nnunet_mmpretrain.conversion.registry import releases
    sub = next(a for a in build_parser()._actions if a.dest == "kind")
    assert set(releases()) <= set(sub.choices)
    with pytest.raises(TypeError, match="dry_run"):
        brats2021.convert(str(tmp_path), str(tmp_path / "raw"), dry_runn=True)
