#!/usr/bin/env bash
# Set up (if needed) and run the demo on the built-in phantoms:  bash scripts/demo.sh [--fresh]
# Outputs land in demo_output/ (nnUNet_raw, nnUNet_preprocessed, nnUNet_results, predictions).
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python -m nnunet_mmpretrain.demo --out "$REPO/demo_output" "$@"
