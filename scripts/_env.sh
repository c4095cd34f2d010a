#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
# Creates .venv in the repository (once), installs the package with the exact tested versions of
# its dependencies (scripts/constraints.txt; setup.cfg holds the ranges), only when setup.cfg,
# pyproject.toml or the constraints changed since the last install, and exports the nnU-Net folders.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMPRETRAIN_VENV:-$REPO/.venv}"
PY_BOOT="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
STAMP="$VENV/.mmpretrain-installed"
CONSTRAINTS="$REPO/scripts/constraints.txt"
WANT="$(cat "$REPO/setup.cfg" "$REPO/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ] || ! "$VENV/bin/python" -c "import nnunet_mmpretrain" 2>/dev/null; then
  echo "[setup] installing nnunet-mmpretrain with the tested dependency versions (first run: a few minutes, ~6 GB)"
  # torch and torchvision first, as the matching pair of the constraints file
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" torch torchvision 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" -e "$REPO[test]" 2>&1 | grep -v "is ignored: it is neither" || true
  "$VENV/bin/python" -c "import torch, torchvision, nnunetv2, nnunet_mmpretrain; import torchvision.ops; print('[setup] torch', torch.__version__, 'torchvision', torchvision.__version__)"
  echo "$WANT" > "$STAMP"
else
  echo "[setup] environment up to date ($VENV)"
fi
export PATH="$VENV/bin:$PATH"
# nnU-Net finds our trainers through this folder (nnunetv2 >= 2.8.0)
_ext_line="$("$VENV/bin/python" -m nnunet_mmpretrain.cli.ext_trainer_path)"
eval "$_ext_line"
# 2 cores: keep nnU-Net's worker pools small
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
