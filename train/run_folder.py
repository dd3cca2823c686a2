"""The run folder both trainers write, OUT/<config-stem>/fold<k>/, and what they share about it.

One place for the ideas the fastai and mmseg trainers have in common, so their command lines and folders read alike:
- the flags: --config, --fold, --tiles, --data-dir, --minutes, --out, --encoder-weights, --no-resume, --overwrite and
  --max-steps (add_run_arguments; old spellings stay as hidden aliases);
- the resume policy: a finished folder (metrics.json present) is kept, an unfinished one is resumed, --no-resume
  starts it over, --overwrite retrains either (prepare);
- atomic files: metrics.json and checkpoints through inference.atomic (write_metrics, save_torch), so a kill never
  leaves half a file that a resume or kernels.build would trust;
- smoke runs: --max-steps N trains N optimizer steps and marks config.json and metrics.json `"smoke": true`
  (smoke_record, is_smoke): train.export warns, kernels.build refuses one unless given --allow-smoke;
- the validation images (validation_rows) and the scale rule that writes config.json's reduce_k and pixel_size
  (inference_scale).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data_prep.tileset import read_png, source_data_dir
from inference.atomic import atomic_write, write_json
from inference.cli import hidden_alias
from inference.tables import load_train

METRICS = "metrics.json"
RANDOM_WEIGHTS = "none"  # --encoder-weights none: random initialisation
SMOKE_WARNING = "a smoke run (--max-steps): a few optimizer steps to check the pipeline, not a trained model"


def run_dir(out: str | Path, name: str, fold: int) -> Path:
    """OUT/<config-stem>/fold<k>: the config's stem names the run."""
    return Path(out) / name / f"fold{fold}"


def weights_arg(text: str) -> str:
    """--encoder-weights value: 'none' (also 'null', 'random') for random weights, else kept as given."""
    return RANDOM_WEIGHTS if text.lower() in ("none", "null", "random") else text


def positive_int(text: str) -> int:
    """argparse type of --max-steps."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, config_help: str, weights_help: str) -> None:
    """The flags both trainers take, with one meaning each (the trainer adds its own after these)."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--fold", type=int, required=True, help="validation fold k; -1 trains on all folds")
    parser.add_argument("--tiles", type=Path, required=True, help="tile set folder (python -m data_prep.tiles)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="runs go to OUT/<config-stem>/fold<k>")
    parser.add_argument(
        "--data-dir", type=Path, help="competition folder (train.csv, train_images/) of the validation images "
        "(default: the one the tile set's tiles.json records)"
    )
    parser.add_argument("--minutes", type=float, help="training time budget in minutes (the LR schedule follows it)")
    parser.add_argument("--encoder-weights", type=weights_arg, help=weights_help)
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start an unfinished run folder over instead of resuming it")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete OUT/<config-stem>/fold<k> first, finished or not, and train from scratch")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass: far less memory for one more forward pass "
                        "per step (1024 px models on a 24 GB card; default: the config's)")
    parser.add_argument("--max-steps", type=positive_int,
                        help="smoke run: stop after N optimizer steps, validate once and mark the folder smoke")
    # the old spellings of the mmseg trainer, for one release (--resume was needed to continue; now the default)
    hidden_alias(parser, "--work-dir", "--out")
    hidden_alias(parser, "--backbone-weights", "--encoder-weights")
    parser.add_argument("--resume", dest="resume", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


def read_metrics(folder: Path) -> dict | None:
    """metrics.json of a finished run folder, or None while the run is unfinished."""
    path = Path(folder) / METRICS
    return json.loads(path.read_text()) if path.is_file() else None


def prepare(folder: Path, *, resume: bool = True, overwrite: bool = False, launched: bool = False) -> dict | None:
    """Apply the resume policy to a run folder; return the metrics of a finished run (to be kept), else None.

    overwrite deletes the folder; a finished folder is otherwise kept; an unfinished one is resumed, or deleted when
    resume is False. Deleting under a launcher (several processes) would race, so it is refused there.
    """
    folder = Path(folder)
    finished = read_metrics(folder)
    start_over = overwrite or (finished is None and not resume and folder.exists())
    if start_over:
        if launched:
            raise ValueError(
                f"--overwrite / --no-resume under a launcher would race between processes: delete {folder} first"
            )
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return finished


def json_safe(value: Any) -> Any:
    """A config or metrics value as plain JSON types (tuples become lists, numpy scalars floats, the rest repr)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def write_metrics(folder: Path, metrics: dict) -> dict:
    """Write metrics.json atomically (its presence marks a finished run); return it as a re-run reads it back."""
    safe = json_safe(metrics)
    write_json(Path(folder) / METRICS, safe)
    return json.loads(json.dumps(safe))


def save_torch(obj: Any, path: Path) -> Path:
    """torch.save through the one atomic writer: a kill leaves the previous file (or none), never a torn one."""
    with atomic_write(path, "wb", suffix=".pth") as handle:
        torch.save(obj, handle)
    return Path(path)


def inside(path: Path, folder: Path) -> bool:
    """True when path, links resolved, lies inside folder (a checkpoint we wrote, not one a link points at)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def smoke_record(max_steps: int | None) -> dict:
    """What config.json's train record and metrics.json say about a --max-steps run ({} for a real run)."""
    return {} if max_steps is None else {"smoke": True, "max_steps": int(max_steps)}


def is_smoke(folder: Path) -> bool:
    """True when a checkpoint folder was written by a --max-steps smoke run (metrics.json or config.json say so)."""
    folder = Path(folder)
    for name, key in ((METRICS, None), ("config.json", "train")):
        path = folder / name
        if path.is_file():
            record = json.loads(path.read_text())
            record = record.get(key) or {} if key else record
            if isinstance(record, dict) and record.get("smoke"):
                return True
    return False


def resolve_data_dir(data_dir: Path | None, tiles: Path) -> Path:
    """--data-dir, else the competition folder the tile set was cut from (tiles.json); it must hold train.csv."""
    data_dir = data_dir if data_dir is not None else source_data_dir(tiles)
    if data_dir is None:
        raise FileNotFoundError(
            f"validation predicts the original images, but {Path(tiles) / 'tiles.json'} records no data folder: "
            "pass --data-dir DATA (the competition folder with train.csv and train_images/)"
        )
    if not (Path(data_dir) / "train.csv").is_file():
        raise FileNotFoundError(
            f"{Path(data_dir) / 'train.csv'} not found: validation reads whole images from the competition folder; "
            "pass --data-dir DATA"
        )
    return Path(data_dir)


def validation_rows(data_dir: Path, image_ids: Iterable[Any]) -> tuple[pd.DataFrame, Path]:
    """train.csv rows of the validation images in the given order, and their image folder; names any missing."""
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    table = load_train(Path(data_dir) / "train.csv")
    table = table.assign(id=table["id"].astype(str)).set_index("id", drop=False)
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise ValueError(
            f"{len(missing)} validation image(s) of the tile set are not in {Path(data_dir) / 'train.csv'} "
            f"(first: {missing[:3]}): --data-dir must be the competition folder the tiles were cut from"
        )
    return table.loc[ids].reset_index(drop=True), Path(data_dir) / "train_images"


def inference_scale(
    rows: pd.DataFrame, tiles_dir: Path, tile_size: int, pixel_size: float | None = None, reduce_k: float | None = None,
    resized: bool = True,
) -> tuple[float, float]:
    """(reduce_k, pixel_size) config.json gives the kernel: the scale the model trained at, in both scale modes.

    reduce = ceil(side / (tile * k)) in reduce mode; pixel_size is the um/px of the model input in pixel-size mode.
    Crop sampler (pixel_size given: the crops' um/px): k = the training images' median working side / tile, so
    reduce is about image um/px -> training um/px. Tiles: k = the finest split trained on (the model sees that
    scale most: on the demo k=3 beat k=1), or the config's reduce_k; pixel_size = the median um/px of the original
    tiles at the split nearest k, times tile side / tile_size when tiles are resized on load. Reduce-only tile sets:
    their finest reduce. resized=False (the mmseg trainer, whose pipeline crops tiles at their own scale): no
    tile side / tile_size factor.
    """
    if pixel_size is not None:
        if reduce_k is None:
            sample = rows.drop_duplicates("image_id").head(20)
            sides = [max(read_png(Path(tiles_dir) / p, mask=True).shape) for p in sample["mask_path"]]
            reduce_k = float(np.median(sides)) / tile_size
        return float(reduce_k), float(pixel_size)
    original = rows[rows["source"] == "original"]
    rows = original if len(original) else rows
    splits = sorted(int(s) for s in rows.loc[rows["split"] > 0, "split"].unique())
    if splits:
        reduce_k = float(max(splits)) if reduce_k is None else float(reduce_k)
        level = min(splits, key=lambda s: abs(s - reduce_k))
        level_rows = rows[rows["split"] == level]
    else:
        reduce_k = 1.0 if reduce_k is None else float(reduce_k)
        level_rows = rows[rows["reduce"] == rows["reduce"].min()]
    if not resized:
        return float(reduce_k), float(np.median(level_rows["tile_pixel_size"]))
    side = read_png(Path(tiles_dir) / level_rows["image_path"].iloc[0]).shape[0]
    return float(reduce_k), float(np.median(level_rows["tile_pixel_size"])) * side / tile_size
