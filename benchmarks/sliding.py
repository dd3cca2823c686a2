"""Sliding-window prediction cost, measured side by side in one run on the same model and image.

    python benchmarks/sliding.py [--image-side 768] [--tile 256] [--overlap 0.5] [--window-batch 4] [--repeat 3] [--threads N]

(a) ours: Predictor.predict_working (uint8 tiles, normalisation, sigmoid, Gaussian-weighted accumulation);
(b) bare: the model's forward alone over the same number of pre-cut, pre-normalised tiles;
(c) MONAI sliding_window_inference with the same tile, overlap, batch and Gaussian weights.
Targets (issue 6): (a)/(b) < 1.15 on CPU; (a) agrees with (c) to 1e-4; (a) at most as slow as (c).
Model: smp Unet tu-resnet18, random init (speed does not depend on the weights). Medians over --repeat rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from checkpoints import make_smp_checkpoint  # noqa: E402

from inference.cli import hidden_alias  # noqa: E402
from inference.engine.predictor import load_predictor  # noqa: E402
from inference.tiling import grid_boxes  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-side", type=int, default=768, help="side of the square test image")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--window-batch", type=int, default=4, help="windows per forward pass")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hubmap_bench_sliding"))
    hidden_alias(ap, "--size", "--image-side")  # the old spellings (--size is a tile side elsewhere)
    hidden_alias(ap, "--batch", "--window-batch")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from monai.inferers import sliding_window_inference

    folder = make_smp_checkpoint(args.work / "fold0", tile=args.tile, overlap=args.overlap)
    predictor = load_predictor(folder, "cpu", batch_size=args.window_batch)
    model = predictor.model
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (args.image_side, args.image_side, 3), dtype=np.uint8)
    mean = torch.tensor(predictor.config.mean).view(3, 1, 1)
    std = torch.tensor(predictor.config.std).view(3, 1, 1)
    normalised = (torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - mean) / std
    boxes = grid_boxes(args.image_side, args.image_side, args.tile, predictor.stride)
    tiles = torch.stack([normalised[:, y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])

    def ours() -> np.ndarray:
        return predictor.predict_working(image, (args.image_side, args.image_side))[0]

    @torch.inference_mode()
    def bare() -> None:
        for i in range(0, len(tiles), args.window_batch):
            model(tiles[i : i + args.window_batch])

    @torch.inference_mode()
    def monai() -> np.ndarray:
        out = sliding_window_inference(normalised[None], (args.tile, args.tile), args.window_batch,
                                       lambda x: model(x).sigmoid(), overlap=args.overlap, mode="gaussian",
                                       sigma_scale=0.125)
        return out[0, 0].numpy()

    timings: dict[str, list[float]] = {"ours": [], "bare": [], "monai": []}
    results = {}
    bare()  # warm-up
    for _ in range(args.repeat):
        for name, fn in (("ours", ours), ("bare", bare), ("monai", monai)):
            start = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in timings.items()}
    diff = float(np.abs(results["ours"] - results["monai"]).max())
    print(f"image {args.image_side}x{args.image_side}, tile {args.tile}, overlap {args.overlap}, {len(boxes)} tiles, "
          f"batch {args.window_batch}, torch threads {torch.get_num_threads()}, median of {args.repeat}")
    print(f"{'ours':>8s} {'bare':>8s} {'monai':>8s}   {'ours/bare':>9s} {'ours/monai':>10s}  max|ours-monai|")
    print(f"{med['ours']:7.2f}s {med['bare']:7.2f}s {med['monai']:7.2f}s   {med['ours'] / med['bare']:9.3f} "
          f"{med['ours'] / med['monai']:10.3f}  {diff:.2e}")
    print(f"targets: ours/bare < 1.15 -> {'ok' if med['ours'] / med['bare'] < 1.15 else 'MISSED'}; "
          f"agreement <= 1e-4 -> {'ok' if diff <= 1e-4 else 'MISSED'}; "
          f"ours/monai <= 1 -> {'ok' if med['ours'] <= med['monai'] else 'MISSED'}")


if __name__ == "__main__":
    main()
