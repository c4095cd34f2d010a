"""The plugin added to an existing nnU-Net environment without touching its torch.

The documented way (README, "Using it on your data"): ``pip install --no-deps`` into the user's
environment. Here: the wheel built from a copy of the sources, installed without dependencies into
a fresh virtual environment that reuses this test environment's packages (a ``.pth`` file naming
its site-packages, standing in for "the user's nnU-Net environment"); then, from a temporary
folder and without PYTHONPATH, the console scripts, a named suite from the package data and
nnU-Net's own trainer lookup through ``nnUNet_extTrainer``.
"""
from __future__ import annotations

import configparser
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "nnunet_mmpretrain", "nnunet_mmpretrain_ext", "plans")


def console_scripts() -> dict:
    """name -> "module:function" of every console script in setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    lines = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    return dict(tuple(x.strip() for x in ln.split("=", 1)) for ln in lines)


def _run(cmd, cwd, env, timeout=300):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        p = os.path.join(REPO, name)
        if os.path.isdir(p):
            shutil.copytree(p, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(p, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "nnUNet_extTrainer")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "wheel"),
          str(src)], str(tmp), env)
    wheel = glob.glob(str(tmp / "wheel" / "*.whl"))
    assert len(wheel) == 1, wheel
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], str(tmp), env)
    py = str(venv / "bin" / "python")
    new_site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], str(tmp), env).stdout.strip()
    # the "existing environment": this test environment's packages (torch, nnU-Net, ...), after the venv's own
    ours = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    with open(os.path.join(new_site, "existing_environment.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(ours)) + "\n")
    import torch
    torch_before = (torch.__version__, os.path.realpath(torch.__file__), os.path.getmtime(torch.__file__))
    # --ignore-installed: never uninstall the copy the test environment may hold (outside the venv)
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
          "--disable-pip-version-check", wheel[0]], str(tmp), env)
    run_env = dict(env, PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1")
    return {"tmp": tmp, "venv": venv, "py": py, "site": new_site, "wheel": wheel[0], "env": run_env,
            "torch_before": torch_before}


def test_wheel_ships_every_suite_and_preset(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for sub in ("", "presets"):
        shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "plans", sub, "*.json")))
        assert shipped, sub
        for f in shipped:
            assert "/".join(x for x in ("nnunet_mmpretrain/plans", sub, f) if x) in names, (sub, f)


def test_no_deps_install_keeps_torch_and_works_outside_the_checkout(installed):
    tmp, py, env = str(installed["tmp"]), installed["py"], installed["env"]
    # torch untouched: not installed into the venv, the environment's own copy imported, unchanged on disk
    assert not glob.glob(os.path.join(installed["site"], "torch*"))
    r = _run([py, "-c", "import torch, nnunet_mmpretrain; print(torch.__version__); print(torch.__file__); "
                        "print(nnunet_mmpretrain.__file__)"], tmp, env)
    version, torch_file, pkg_file = r.stdout.split()
    v0, f0, m0 = installed["torch_before"]
    assert version == v0 and os.path.realpath(torch_file) == f0 and os.path.getmtime(f0) == m0
    assert pkg_file.startswith(installed["site"]) and not pkg_file.startswith(REPO)   # the wheel, not the checkout

    # every console script of setup.cfg is installed and its entry point imports
    scripts = console_scripts()
    assert len(scripts) >= 15
    for name in scripts:
        assert os.access(os.path.join(installed["venv"], "bin", name), os.X_OK), name
    _run([py, "-c", "import importlib.metadata as m; eps = [e for e in m.entry_points(group='console_scripts') "
                    "if e.name.startswith('nnUNetv2_mmpretrain_')]; [e.load() for e in eps]; print(len(eps))"], tmp, env)

    # a named suite from the package data (no checkout around)
    r = _run(["nnUNetv2_mmpretrain_benchmark", "phantom-smoke", "--dry-run", "--out", os.path.join(tmp, "bench")],
             tmp, env)
    assert "nnUNetv2_train 990 3d_bench 0 -tr nnUNetTrainerMMBench_pretrainedFrozen" in r.stdout, r.stdout[-2000:]
    assert not os.path.exists(os.path.join(tmp, "bench"))

    # nnU-Net's own trainer lookup through nnUNet_extTrainer, as nnUNetv2_train does it
    line = _run(["nnUNetv2_mmpretrain_ext_trainer"], tmp, env).stdout.strip()
    assert line.startswith("export nnUNet_extTrainer=")
    folder = _run(["nnUNetv2_mmpretrain_ext_trainer", "--path"], tmp, env).stdout.strip()
    assert folder.startswith(installed["site"]), folder
    r = _run([py, "-c", "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
                        "c = f('nnUNetTrainerMMPretrain_demo'); import sys; print(c.__module__, "
                        "sys.modules[c.__module__].__file__)"], tmp, dict(env, nnUNet_extTrainer=folder))
    module, path = r.stdout.strip().splitlines()[-1].split()
    assert path.startswith(installed["site"]), path
