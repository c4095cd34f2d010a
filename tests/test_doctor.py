"""``nnUNetv2_mmpretrain_doctor``: passes in the test environment, fails naming the check when an
nnU-Net folder is unset or unusable or the trainer shim is not on nnUNet_extTrainer."""
from __future__ import annotations

import os

import pytest

from nnunet_mmpretrain.cli import doctor
from nnunet_mmpretrain.training.lookup import ext_trainer_value


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in doctor.PATH_VARS:
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_value(None))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return tmp_path


def _run(capsys, *args):
    rc = doctor.main(["--min-free-gb", "0.5", *args])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_passes_in_the_test_environment(env, capsys):
    rc, lines, _ = _run(capsys)
    checks = [ln for ln in lines if ln.startswith(("ok", "FAIL"))]
    assert rc == 0, lines
    assert len(checks) == 10 and all(ln.startswith("ok ") for ln in checks)
    names = {ln.split()[1].rstrip(":") for ln in checks}
    assert {"nnunetv2", "torch", "torchvision", "dynamic-network-architectures", "blosc2", "nnUNet_raw",
            "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_extTrainer"} == names
    assert "nnUNetTrainerMMPretrain" in [ln for ln in checks if "extTrainer" in ln][0]


@pytest.mark.parametrize("var,how,needle", [
    ("nnUNet_results", "unset", "not set"),
    ("nnUNet_preprocessed", "file", "is a file, not a folder"),
    ("nnUNet_raw", "missing", "does not exist"),
    ("nnUNet_extTrainer", "unset", "not set"),
    ("nnUNet_extTrainer", "other", "does not list"),
    ("nnUNet_n_proc_DA", "-1", "whole number"),
])
def test_fails_naming_the_check(env, capsys, monkeypatch, var, how, needle):
    if how == "unset":
        monkeypatch.delenv(var)
    elif how == "file":
        (env / "afile").write_text("x")
        monkeypatch.setenv(var, str(env / "afile"))
    elif how == "missing":
        monkeypatch.setenv(var, str(env / "nowhere"))
    elif how == "-1":
        monkeypatch.setenv(var, how)
    else:
        monkeypatch.setenv(var, str(env))
    rc, lines, err = _run(capsys)
    fails = [ln for ln in lines if ln.startswith("FAIL") and "not checked" not in ln]
    assert rc != 0 and len(fails) == 1 and fails[0].startswith(f"FAIL {var}:") and needle in fails[0]
    assert var in err


def test_unwritable_folder_and_too_little_space(env, capsys, monkeypatch):
    import builtins
    real_open = builtins.open
    ro = str(env / "nnUNet_results")

    def read_only_open(file, mode="r", *a, **kw):  # a read-only mount, also when tests run as root
        if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(ro + os.sep):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", read_only_open)
    rc, lines, _ = _run(capsys)
    assert rc == 1 and [ln for ln in lines if ln.startswith("FAIL")] == \
        [f"FAIL nnUNet_results: {ro} is not writable (Read-only file system): fix its permissions or "
         f"export another folder"]
    monkeypatch.setattr(builtins, "open", real_open)
    rc, lines, _ = _run(capsys, "--min-free-gb", "1e9")
    assert rc == 1 and sum(ln.startswith("FAIL nnUNet_") and "GB free" in ln for ln in lines) == 3


def test_version_rules():
    assert doctor.check_nnunet()[0]
    ok, detail = doctor.dependency_check("torch")()
    assert ok and "nnunetv2 needs" in detail
    ok, detail = doctor.dependency_check("no-such-dist-xyz")()
    assert not ok and "not installed" in detail
