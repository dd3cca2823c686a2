"""Seconds per image of the submission loop against the notebook's budget, and peak memory at 4500x4500.

    python benchmarks/kernel.py [--folds 5] [--encoder tu-resnet18] [--tile 96] [--tta 0] [--repeat 2]
        [--real] [--device auto]

Builds --folds random-init smp Unet checkpoints (default: the demo config unet_r18_demo, tile 96,
adaptive reduce), then times, per 3000x3000 image: reading the TIFF, inference.predict.predict_one
(every fold, resize to full resolution, threshold, post-process, RLE). With CUDA (or --real) it also
times the real configs (EfficientNet-B7 and ResNeSt-269e UNets at 768 px, 5 folds each). The budget is
9 h for ~550 hidden test images = 59 s/image for the whole ensemble. Peak memory of predict_one on a
4500x4500 image is measured with tracemalloc (numpy and OpenCV buffers; torch's working-scale tensors
are not traced) and stated in full-resolution float32 maps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from checkpoints import make_smp_checkpoint  # noqa: E402

from inference.ensemble import Member  # noqa: E402
from inference.io import read_image, write_image  # noqa: E402
from inference.predict import Options, predict_one  # noqa: E402
from inference.predictor import load_predictor, resolve_device  # noqa: E402

BUDGET_S = 9 * 3600 / 550
REAL_CONFIGS = (("tu-tf_efficientnet_b7", 768), ("tu-resnest269e", 768))


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs (compresses like tissue, unlike white noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size // 64 + 1, size // 64 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def ensemble(work: Path, encoder: str, tile: int, folds: int, device: torch.device, batch: int) -> list[Member]:
    members = []
    for k in range(folds):
        folder = work / f"{encoder}_{tile}" / f"fold{k}"
        if not (folder / "config.json").is_file():
            make_smp_checkpoint(folder, tile=tile, encoder=encoder, seed=k, fold=k)
        members.append(Member(load_predictor(folder, device, batch_size=batch), 1.0))
    return members


def time_images(members: list[Member], tiff: Path, options: Options, repeat: int) -> tuple[float, float]:
    """Median seconds to read the TIFF and to predict it."""
    reads, predicts = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        image = read_image(tiff)
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        predict_one(image, "kidney", 0.4, members, options)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        predicts.append(time.perf_counter() - start)
    return statistics.median(reads), statistics.median(predicts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--encoder", default="tu-resnet18")
    ap.add_argument("--tile", type=int, default=96)
    ap.add_argument("--tta", type=int, default=0, choices=(0, 2, 4, 8))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--real", action="store_true", help="also time the real configs (default: only with CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hubmap_bench_kernel"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    tiff = args.work / "image3000.tiff"
    if not tiff.is_file():
        write_image(tiff, synthetic_image(3000))
    options = Options(tta=args.tta, fill_holes=True)
    print(f"device {device}, torch threads {torch.get_num_threads()}, tta {args.tta}, budget {BUDGET_S:.1f} s/image")
    print(f"{'ensemble':<36s} {'read s':>7s} {'predict s':>9s} {'total s':>8s} {'x budget':>8s}")

    rows = [(args.encoder, args.tile)]
    if args.real or device.type == "cuda":
        rows += list(REAL_CONFIGS)
    demo_members = None
    for encoder, tile in rows:
        members = ensemble(args.work, encoder, tile, args.folds, device, args.batch)
        if demo_members is None:
            demo_members = members
        read_s, predict_s = time_images(members, tiff, options, args.repeat)
        total = read_s + predict_s
        label = f"{args.folds} x Unet {encoder} @{tile}"
        print(f"{label:<36s} {read_s:7.2f} {predict_s:9.2f} {total:8.2f} {total / BUDGET_S:8.3f}")

    big = synthetic_image(4500, seed=1)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    predict_one(big, "kidney", 0.4, demo_members, options)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    full_map = 4500 * 4500 * 4
    print(f"peak traced memory of predict_one on 4500x4500 with {args.folds} folds: {peak / 2**20:.0f} MiB "
          f"= {peak / full_map:.2f} full-resolution float32 maps (excluding the 58 MiB input image)")


if __name__ == "__main__":
    main()
