#!/usr/bin/env bash
# GPU check (issue 12): one prepared command, meant to take under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh [--dry-run] [--real-size] [--out DIR]
#
# On phantoms at 1 mm planned with the ResEnc-M preset (the corpus's 3d_fullres configuration):
#   1. pretraining, 5 epochs x 3 iterations, twice: nnUNetv2_train -num_gpus 1 (AMP) and
#      nnUNetv2_mmpretrain_train_ddp -nproc 1 --device cuda (NCCL process group, AMP); each final
#      checkpoint must load with torch.load(weights_only=True);
#   2. BrainMVP training step vs two plain MAE steps at the planned patch, batch and architecture
#      (scripts/bench_pretrain_step.py --plans ... --amp --fused-adamw, the trainer's optimiser);
#   3. fine-tuning step, nnUNetTrainerMMFinetune vs the stock nnUNetTrainer, on the phantom
#      segmentation dataset with the pretraining topology and the exported bundle
#      (scripts/bench_finetune_step.py --device cuda).
# Writes a Markdown table to stdout and DIR/gpu_check.md (default bench_output/gpu_check), the
# JSON results and the logs of every step (DIR/logs). torch.compile is off (nnUNet_compile=f) so
# that compilation time does not enter the figures.
#
# --dry-run, or a machine without CUDA: the same steps on the CPU at a tiny patch (3 mm phantoms,
# a 32^3 configuration); its report says that the GPU figures are unmeasured.
#
# --real-size: the rehearsal at the size users run (scripts/rehearse_real_size.py, issue 24): 1 mm
# phantoms (8 labelled cases, 16 corpus subjects), the ResEnc-M plans as planned, every step of the
# chain (pretraining with BrainMVP's defaults and the CPU recipe, the BrainMVP step against two MAE
# steps, DDP, export, transfer with preprocessing, fine-tuning, nnUNetv2_predict of a full case, the
# missing-channel fill, the loaders' samples/s) with wall time and peak RSS per process. On the CPU
# (no CUDA, or with --dry-run) it is the CPU rehearsal of scripts/BENCHMARKS.md (about 40 minutes on
# 2 cores); with a GPU the same stages run on it (--device cuda), so the figures compare stage by
# stage. Report: DIR/real_size/rehearsal.md.
set -euo pipefail
DRY=0
REAL=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --real-size) REAL=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$1' (use --dry-run, --real-size, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
source "$(dirname "$0")/_env.sh"   # after the options: --help and a bad option need no environment
cd "$REPO"
OUT="${OUT:-$REPO/bench_output/gpu_check}"
if [ "$DRY" = 0 ] && ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu_check] torch sees no CUDA device: running the CPU dry run (the GPU figures stay unmeasured)"
  DRY=1
fi
mkdir -p "$OUT" || { echo "error: cannot create --out $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
if [ "$REAL" = 1 ]; then
  if [ "$DRY" = 1 ]; then RDEV=cpu; else RDEV=cuda; fi
  echo "[gpu_check] real-size rehearsal on $RDEV (1 mm phantoms, ResEnc-M plans): $OUT/real_size"
  exec python scripts/rehearse_real_size.py --device "$RDEV" --out "$OUT/real_size"
fi
WORK="$OUT/work"
rm -rf "$WORK" "$OUT/logs" "$OUT/stages.txt" "$OUT/pretrain_step.json" "$OUT/finetune_step.json"
mkdir -p "$WORK/nnUNet_raw" "$WORK/nnUNet_preprocessed" "$OUT/logs"
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed"
export nnUNet_results="$WORK/results_train" nnUNet_compile=f

NP="$(python -c "import os; print(max(1, min(16, (os.cpu_count() or 2) - 1)))")"
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SPACING=3; CONFIG=3d_tiny; ITERS=2; WARMUP=1; AMP=(); GRID=(--grid 96 112 96)
  PLAN_EXTRA=(--add-config 3d_tiny --patch 32 32 32 --features 8 16 32)
  export nnUNet_n_proc_DA=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
else
  DEVICE=cuda; SPACING=1; CONFIG=3d_fullres; ITERS=10; WARMUP=3; AMP=(--amp); GRID=(); PLAN_EXTRA=()
  export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-$NP}"
fi
PRETRAINER=nnUNetTrainerMMPretrain_5epochs

stage() {   # stage NAME LOG COMMAND...: run, log, time; a failure ends the check with one line
  local name="$1" log="$OUT/logs/$2.log" t0=$SECONDS
  shift 2
  echo "[gpu_check] $name: $*"
  if ! "$@" >"$log" 2>&1; then
    echo "error: gpu_check stage '$name' failed; see $log (last lines below)" >&2
    tail -n 15 "$log" >&2
    exit 1
  fi
  echo "$name $((SECONDS - t0))" >>"$OUT/stages.txt"
}

stage "phantoms (${SPACING} mm)" phantoms nnUNetv2_mmpretrain_make_phantoms --what seg,corpus --num-train 6 \
  --num-test 1 --corpus-cases 3 --spacing "$SPACING" -np "$NP" --overwrite
stage "plan corpus (ResEnc-M)" plan nnUNetv2_mmpretrain_plan_and_preprocess -d 992 -pl ResEncM -np "$NP" "${PLAN_EXTRA[@]}"
stage "pretrain -num_gpus 1" train nnUNetv2_train 992 "$CONFIG" all -tr "$PRETRAINER" -p mmPretrainPlans \
  -num_gpus 1 -device "$DEVICE"
stage "pretrain DDP -nproc 1" train_ddp env nnUNet_results="$WORK/results_ddp" nnUNetv2_mmpretrain_train_ddp 992 \
  "$CONFIG" all -tr "$PRETRAINER" -p mmPretrainPlans -nproc 1 --device "$DEVICE" --threads "${OMP_NUM_THREADS:-1}"
stage "BrainMVP vs 2 MAE steps" pretrain_step python scripts/bench_pretrain_step.py \
  --plans "$nnUNet_preprocessed/Dataset992_PhantomCorpus/mmPretrainPlans.json" -c "$CONFIG" --device "$DEVICE" \
  --iters "$ITERS" --warmup "$WARMUP" --fused-adamw "${AMP[@]}" "${GRID[@]}" --out "$OUT/pretrain_step.json"
FOLD="$WORK/results_train/Dataset992_PhantomCorpus/${PRETRAINER}__mmPretrainPlans__${CONFIG}/fold_all"
stage "export bundle" export nnUNetv2_mmpretrain_export "$FOLD/checkpoint_final.pth" -o "$WORK/bundle"
stage "transfer plans to 990" transfer nnUNetv2_mmpretrain_transfer_plans -s 992 -t 990 -c "$CONFIG" \
  --bundle "$WORK/bundle" --preprocess -np "$NP"
stage "fine-tuning step vs stock" finetune_step python scripts/bench_finetune_step.py --root "$WORK" --dataset 990 \
  -c "$CONFIG" -p mmPretrainPlans --device "$DEVICE" --iters "$ITERS" --warmup "$WARMUP" --out "$OUT/finetune_step.json"

echo
python - "$OUT" "$WORK" "$CONFIG" "$DRY" <<'PY'
import sys
sys.path.insert(0, "scripts")
from bench_common import gpu_check_report
out, work, config, dry = sys.argv[1:]
print(gpu_check_report(out, work, config, dry == "1"))
print(f"report: {out}/gpu_check.md; logs: {out}/logs")
PY
