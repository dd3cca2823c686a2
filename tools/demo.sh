#!/usr/bin/env bash
# The main job on built-in demo data: generate, prepare, train briefly, infer, write submission.csv, score it.
# Every stage is idempotent: re-running skips finished work (delete the demo folder to start over).
set -euo pipefail
PY=${1:?usage: demo.sh PYTHON DEMO_DIR}
DEMO=${2:?usage: demo.sh PYTHON DEMO_DIR}
SIZE=${DEMO_TILE_SIZE:-256}
export PYTHONUNBUFFERED=1
start=$SECONDS
stage() { printf '\n== [%4ds] %s\n' $((SECONDS - start)) "$*"; }

stage "1/7 demo dataset -> $DEMO/data"
if [ -f "$DEMO/data/test_solution.csv" ]; then echo "already there"; else
  "$PY" -m data_prep.make_demo --out "$DEMO/data" --seed 0
fi

stage "2/7 folds -> $DEMO/folds.csv"
"$PY" -m data_prep.make_folds --train-csv "$DEMO/data/train.csv" --out "$DEMO/folds.csv" --n-folds 5 --seed 42

stage "3/7 multi-scale tiles (1x1, 2x2, 3x3 at ${SIZE}px) + Laplacian pyramid blends -> $DEMO/tiles, look at them in $DEMO/preview.png"
"$PY" -m data_prep.tiles --data-dir "$DEMO/data" --folds "$DEMO/folds.csv" --out "$DEMO/tiles" --size "$SIZE" --splits 1,2,3 --scaled 0.8 --workers 2
"$PY" -m data_prep.lpb --tiles "$DEMO/tiles" --n-per-organ 8 --seed 0
"$PY" -m data_prep.preview --tiles "$DEMO/tiles" --out "$DEMO/preview.png"

stage "4/7 fastai UNet (resnet18, random init), fold 0"
"$PY" -m train.fastai_unet --config train/configs/fastai/unet_r18_demo.py --fold 0 --tiles "$DEMO/tiles" --out "$DEMO/outputs"

stage "5/7 mmseg UperNet (tiny ConvNeXt, random init), fold 0, exported to TorchScript"
"$PY" -m train.mmseg_train --config train/configs/mmseg/upernet_convnext-demo.py --fold 0 --tiles "$DEMO/tiles" --work-dir "$DEMO/outputs" --resume

stage "6/7 predict the demo test set with both models -> $DEMO/submission.csv"
"$PY" -m inference.predict --data-dir "$DEMO/data" \
  --models "$DEMO/outputs/unet_r18_demo/fold0" "$DEMO/outputs/upernet_convnext-demo/fold0" \
  --ensemble union --use-organ --out "$DEMO/submission.csv"

stage "7/7 score against the demo ground truth; predicted (cyan) and true (yellow) outlines in $DEMO/overlays"
"$PY" -m inference.score --submission "$DEMO/submission.csv" --solution "$DEMO/data/test_solution.csv"
printf '\n(an empty submission scores 0.0000: every image has at least one FTU)\n'
"$PY" -m inference.overlay --data-dir "$DEMO/data" --submission "$DEMO/submission.csv" \
  --solution "$DEMO/data/test_solution.csv" --out "$DEMO/overlays"
stage "done"
