"""Seconds per image of the submission loop with checkpoints shaped as the trainers write them, against the 9 h limit.

    python benchmarks/kernel.py [--sizes 160 3000 4500] [--n-folds 1] [--ensemble-folds 5] [--tta 4]
        [--encoder tu-resnet18] [--real] [--device auto] [--repeat 1]

Checkpoint geometry is what the trainers write for the README's real recipe: the fastai UNet
(train/configs/fastai/recipes/unet_effb7_768.py: 768 px crops at its pixel_size, 0.8 um/px, and its overlap) and the mmseg
UperNet (768 px tiles of splits 1,2,3 of 3000 px HPA images at 0.4 um/px: reduce_k = the finest split, 3;
pixel_size = the median tile's um/px, 0.52).
On CPU the network is a small smp Unet (--encoder) at that geometry; with CUDA or --real the real encoders are
timed too (EfficientNet-B7 UNet; ResNeSt-269e UNet standing in for UperNet-ConvNeXt, which needs mmseg).

Images are HuBMAP-like, one per size: 160 px prostate at 6.263 um/px (upscaled 12x to the working scale),
3000 px kidney HPA at 0.4, 4500 px lung Hubmap at 0.7562 (capped at --max-side). For each, the exact number of
sliding windows the default Options (pixel-size mode, the cap) give is multiplied by the measured seconds per
window of the network, by the TTA views and by --ensemble-folds (members run one after another): s/image and
the projected hours for 550 such images, with and without TTA, against the 9 h limit. --e2e (default with
CUDA) also times inference.predict.predict_one end to end (--n-folds folds, scaled linearly) and prints its
ratio to the projection, i.e. what resizing, blending and RLE add.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from checkpoints import make_smp_checkpoint  # noqa: E402

from inference.cli import hidden_alias  # noqa: E402
from inference.engine.ensemble import Member  # noqa: E402
from inference.engine.models import resolve_device  # noqa: E402
from inference.engine.predictor import load_predictor  # noqa: E402
from inference.predict import Options, predict_one  # noqa: E402
from inference.tiling import split_boxes, window_starts  # noqa: E402

HOURS_LIMIT = 9.0
HIDDEN_IMAGES = 550
IMAGES = {160: ("prostate", "Hubmap", 6.263), 3000: ("kidney", "HPA", 0.4), 4500: ("lung", "Hubmap", 0.7562)}


def recipe_tiles(side: int = 3000, tile: int = 768, splits: tuple[int, ...] = (1, 2, 3)) -> pd.DataFrame:
    """The tile rows data_prep.tiles writes for one 0.4 um/px HPA image (what the trainers read)."""
    rows = []
    for n in splits:
        for x0, y0, x1, y1 in split_boxes(side, side, n):
            rows.append({"source": "original", "split": n, "tile_pixel_size": 0.4 * ((x1 - x0) + (y1 - y0)) / (2 * tile)})
    return pd.DataFrame(rows)


def trainer_geometry() -> dict[str, dict]:
    """config.json geometry of the fastai UNet and the mmseg UperNet, as the trainers write it."""
    from train.configs.fastai.base import load_config

    _, fastai = load_config("unet_effb7_768")
    tiles = recipe_tiles(tile=768)
    finest = float(tiles["split"].max())  # mmseg: reduce_k = the finest split trained on
    tile_pixel_size = float(np.median(tiles["tile_pixel_size"]))  # mmseg: the median training tile's um/px
    mmseg = runpy.run_path(str(ROOT / "train/configs/mmseg/_base_/datasets/hubmap_tiles.py"))
    return {
        # crops at the config's pixel_size; reduce_k = the working side of a 3000 px image / tile (reduce mode only)
        "fastai unet_effb7_768": dict(tile=fastai.tile_size, overlap=fastai.overlap, reduce=fastai.reduce,
                                      reduce_k=3000 * 0.4 / fastai.pixel_size / fastai.tile_size,
                                      pixel_size=fastai.pixel_size, real_encoder="tu-tf_efficientnet_b7"),
        "mmseg upernet_convnext-b_768": dict(tile=int(mmseg["tile_size"]), overlap=mmseg["inference"]["overlap"],
                                             reduce=mmseg["inference"]["reduce"],
                                             reduce_k=mmseg["inference"]["reduce_k"] or finest,
                                             pixel_size=tile_pixel_size, real_encoder="tu-resnest269e"),
    }


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs (like tissue, unlike white noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size // 64 + 1, size // 64 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def members(work: Path, name: str, geo: dict, encoder: str, folds: int, device: torch.device,
            batch: int) -> list[Member]:
    out = []
    for k in range(folds):
        folder = work / f"{name.split()[1]}_{encoder}" / f"fold{k}"
        if not (folder / "config.json").is_file():
            make_smp_checkpoint(folder, tile=geo["tile"], encoder=encoder, seed=k, fold=k, overlap=geo["overlap"],
                                reduce=geo["reduce"], reduce_k=geo["reduce_k"], pixel_size=geo["pixel_size"])
        out.append(Member(load_predictor(folder, device, batch_size=batch), 1.0))
    return out


def seconds(ms: list[Member], size: int, options: Options, repeat: int) -> float:
    """Median end-to-end seconds of predict_one on a synthetic image of this size."""
    organ, source, pixel_size = IMAGES[size]
    image = synthetic_image(size)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        predict_one(image, organ, pixel_size, ms, options, data_source=source, image_id=f"bench{size}")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def window_seconds(member: Member, batch: int, repeat: int) -> float:
    """Seconds per tile of one forward pass (normalise, network, activation), batch tiles at a time."""
    p = member.predictor
    tiles = torch.randint(0, 255, (batch, 3, p.config.tile_size, p.config.tile_size), dtype=torch.uint8)
    times = []
    with torch.inference_mode():
        p._forward(tiles.to(p.device))  # warm-up (cuDNN autotune, allocator)
        for _ in range(repeat):
            start = time.perf_counter()
            p._forward(tiles.to(p.device))
            if p.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def windows(ms: list[Member], size: int, options: Options) -> tuple[int, int]:
    """(working side, sliding windows per view and member) of an image of this size."""
    p = ms[0].predictor
    scale = p.scale(size, size, options.scale_mode, IMAGES[size][2], options.max_side)
    n = len(window_starts(max(scale.size[0], p.config.tile_size), p.config.tile_size, p.stride))
    return scale.size[0], n * n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(IMAGES), choices=sorted(IMAGES))
    ap.add_argument("--n-folds", dest="folds", type=int, default=1,
                    help="folds built and timed end to end per model (--e2e)")
    ap.add_argument("--ensemble-folds", type=int, default=5, help="folds per model in the projected ensemble")
    ap.add_argument("--tta", type=int, default=4, choices=(2, 4, 8))
    ap.add_argument("--encoder", default="tu-resnet18", help="encoder of the CPU stand-in networks")
    ap.add_argument("--window-batch", dest="batch", type=int, default=4, help="windows per forward pass")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--real", action="store_true", help="also time the real encoders (default: only with CUDA)")
    ap.add_argument("--e2e", action="store_true", help="also time predict_one end to end (default: only with CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hubmap_bench_kernel"))
    # the old spellings: --folds is a folds.csv elsewhere, and inference.predict says --window-batch
    hidden_alias(ap, "--folds", "--n-folds")
    hidden_alias(ap, "--batch", "--window-batch")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    e2e = args.e2e or device.type == "cuda"
    plain = Options()
    print(f"device {device}, torch threads {torch.get_num_threads()}, scale mode {plain.scale_mode}, max side "
          f"{plain.max_side}, {args.ensemble_folds} folds per model, TTA {args.tta}; limit {HOURS_LIMIT} h for "
          f"{HIDDEN_IMAGES} images = {HOURS_LIMIT * 3600 / HIDDEN_IMAGES:.0f} s/image")
    print(f"{'model':<28s} {'geometry':<34s} {'px':>5s} {'work':>5s} {'win':>4s} {'s/win':>6s} {'s/img':>7s} "
          f"{'tta s/img':>9s} {'h':>6s} {'tta h':>6s} {'e2e s/img':>9s} {'e2e/proj':>8s}")
    encoders = [(args.encoder, False)] + ([("real", True)] if args.real or device.type == "cuda" else [])
    for name, geo in trainer_geometry().items():
        for encoder, real in encoders:
            enc = geo["real_encoder"] if real else encoder
            ms = members(args.work, name, geo, enc, args.folds, device, args.batch)
            per_window = window_seconds(ms[0], args.batch, args.repeat)
            geometry = f"t{geo['tile']} o{geo['overlap']} k{geo['reduce_k']:g} {geo['pixel_size']:.2f}um {enc[3:]}"
            for size in args.sizes:
                side, n = windows(ms, size, plain)
                proj = [n * views * args.ensemble_folds * per_window for views in (1, args.tta)]
                hours = [s * HIDDEN_IMAGES / 3600 for s in proj]
                measured, ratio = "", ""
                if e2e:
                    s0 = seconds(ms, size, plain, args.repeat) * args.ensemble_folds / args.folds
                    measured, ratio = f"{s0:9.2f}", f"{s0 / proj[0]:8.2f}"
                print(f"{name:<28s} {geometry:<34s} {size:5d} {side:5d} {n:4d} {per_window:6.3f} {proj[0]:7.1f} "
                      f"{proj[1]:9.1f} {hours[0]:6.1f} {hours[1]:6.1f} {measured:>9s} {ratio:>8s}")
    print(f"s/img = windows x views x {args.ensemble_folds} folds x s/win (network only); h = {HIDDEN_IMAGES} images "
          f"all of that size; e2e = predict_one measured with {args.folds} fold(s), scaled to {args.ensemble_folds}. "
          f"A 2-model ensemble costs the sum of its rows; over {HOURS_LIMIT} h, --time-budget degrades.")


if __name__ == "__main__":
    main()
