#!/usr/bin/env bash
# The main job on built-in demo data: generate, prepare, train briefly, infer, write submission.csv, score it.
# Every stage is idempotent: re-running skips finished work (delete the demo folder to start over).
# The screen gets one line per stage and its result; each stage's full log is in DEMO/logs/.
set -euo pipefail
PY=${1:?usage: demo.sh PYTHON DEMO_DIR}
DEMO=${2:?usage: demo.sh PYTHON DEMO_DIR}
SIZE=${DEMO_TILE_SIZE:-256}
LOGS="$DEMO/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
start=$SECONDS
stage() { printf '== [%4ds] %s\n' $((SECONDS - start)) "$*"; }
# run LOG CMD...: the command's whole output goes to LOGS/LOG; on failure, its last lines come to the screen
run() {
  local log="$LOGS/$1"
  shift
  if ! "$@" >"$log" 2>&1; then
    printf 'FAILED (exit %s): %s\n--- last lines of %s:\n' "$?" "$*" "$log"
    tail -n 40 "$log"
    exit 1
  fi
}
# the trainers' closing report: the validation Dice table of the submission path, or the line saying the run was
# already trained (a re-run of make demo: the log then has no table, which must not fail the stage)
report() {
  tr '\r' '\n' < "$LOGS/$1" | sed -n '/validation Dice of the submission path/,$p' | grep -v '^\s*$' | head -n 12 || true
  grep -h "already trained" "$LOGS/$1" | sed "s/^/   /" || true
}

stage "1/7 demo dataset -> $DEMO/data"
if [ -f "$DEMO/data/test_solution.csv" ]; then echo "   already there"; else
  run 1_make_demo.log "$PY" -m data_prep.make_demo --out "$DEMO/data" --seed 0
fi

stage "2/7 folds -> $DEMO/folds.csv"
run 2_folds.log "$PY" -m data_prep.make_folds --train-csv "$DEMO/data/train.csv" --out "$DEMO/folds.csv" --n-folds 5 --seed 42

stage "3/7 multi-scale tiles (1x1, 2x2, 3x3 at ${SIZE}px) + Laplacian pyramid blends -> $DEMO/tiles; look at $DEMO/preview.png"
run 3_tiles.log "$PY" -m data_prep.tiles --data-dir "$DEMO/data" --folds "$DEMO/folds.csv" --out "$DEMO/tiles" --size "$SIZE" --splits 1,2,3 --scaled 0.8 --workers 2
run 3_lpb.log "$PY" -m data_prep.lpb --tiles "$DEMO/tiles" --n-per-organ 8 --seed 0
run 3_preview.log "$PY" -m data_prep.preview --tiles "$DEMO/tiles" --out "$DEMO/preview.png"
grep -h "^wrote" "$LOGS/3_tiles.log" "$LOGS/3_lpb.log" "$LOGS/3_preview.log" | sed "s/^/   /" || true

stage "4/7 fastai UNet (resnet18, random init), fold 0"
run 4_fastai.log "$PY" -m train.fastai_unet --config train/configs/fastai/cpu/unet_r18_demo.py --fold 0 --tiles "$DEMO/tiles" --out "$DEMO/outputs"
report 4_fastai.log

stage "5/7 mmseg UperNet (tiny ConvNeXt, random init), fold 0, exported to TorchScript"
run 5_mmseg.log "$PY" -m train.mmseg_train --config train/configs/mmseg/upernet_convnext-demo.py --fold 0 --tiles "$DEMO/tiles" --out "$DEMO/outputs"
report 5_mmseg.log

stage "6/7 predict the demo test set with both models -> $DEMO/submission.csv"
run 6_predict.log "$PY" -m inference.predict --data-dir "$DEMO/data" \
  --models "$DEMO/outputs/unet_r18_demo/fold0" "$DEMO/outputs/upernet_convnext-demo/fold0" \
  --ensemble union --out "$DEMO/submission.csv"
grep -E "^(wrote|WARNING)" "$LOGS/6_predict.log" | head -n 5 | sed "s/^/   /" || true

stage "7/7 score against the demo ground truth (an empty submission scores 0.0000: every image has an FTU)"
"$PY" -m inference.score --submission "$DEMO/submission.csv" --solution "$DEMO/data/test_solution.csv" | tee "$LOGS/7_score.log"
run 7_overlay.log "$PY" -m inference.overlay --data-dir "$DEMO/data" --submission "$DEMO/submission.csv" \
  --solution "$DEMO/data/test_solution.csv" --out "$DEMO/overlays"
echo "   predicted (cyan) and true (yellow) outlines in $DEMO/overlays; full logs in $LOGS"
stage "done"
