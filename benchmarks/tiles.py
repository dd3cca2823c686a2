"""Tile-set speed and peak memory: data_prep.tiles (1 and 2 workers) against a plain single-process PIL loop.

    python benchmarks/tiles.py [--n-images 6] [--size 768] [--data DIR] [--workers 1,2] [--no-big]

Renders --n-images 3000x3000 demo train images (data_prep.make_demo's drawing, about 10-25 s each; pass
--data DIR to keep and reuse them), then cuts them into the 1,2,3 split tile set (14 tiles per image)
three ways, each in a fresh process: the baseline a seed notebook would write (PIL open/crop/resize/save,
one image after another), and build_tiles with each --workers count. Prints tiles/s, the ratio to the
baseline and the peak RSS of the biggest process. Unless --no-big, it also tiles one 4500x4500 image (a
3000 px one upscaled) with splits 1,2,3 and reduce 4 in one process and prints its peak RSS (what a worker needs).
Target (issue 3): at least 1.5x the baseline with 2 workers on a 2-core machine; worker RSS under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.make_demo import make_image  # noqa: E402
from data_prep.make_folds import ids_from_train_csv, make_folds  # noqa: E402
from data_prep.tiles import build_tiles  # noqa: E402
from inference.io import read_image, write_image  # noqa: E402
from inference.organs import ORGANS, class_index  # noqa: E402
from inference.rle import decode, encode  # noqa: E402
from inference.tiling import split_boxes  # noqa: E402

SPLITS = (1, 2, 3)


def write_dataset(out: Path, images: list[tuple[int, str, np.ndarray, np.ndarray]]) -> Path:
    """Write (id, organ, image, mask) tuples in competition layout with a folds.csv."""
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, organ, image, mask in images:
        write_image(out / "train_images" / f"{image_id}.tiff", image)
        h, w = mask.shape
        rows.append((image_id, organ, "HPA", h, w, 0.4, 4, encode(mask), 50.0, "Female"))
    columns = ["id", "organ", "data_source", "img_height", "img_width", "pixel_size", "tissue_thickness", "rle"]
    pd.DataFrame(rows, columns=[*columns, "age", "sex"]).to_csv(out / "train.csv", index=False)
    make_folds(ids_from_train_csv(out / "train.csv")).to_csv(out / "folds.csv", index=False)
    return out


def render(out: Path, n_images: int, side: int = 3000) -> Path:
    """Draw n demo images of side x side (organs round-robin) unless out already holds them."""
    if (out / "train.csv").is_file() and len(pd.read_csv(out / "train.csv")) == n_images:
        return out
    images = []
    for i in range(n_images):
        organ = ORGANS[i % len(ORGANS)]
        t0 = time.perf_counter()
        image, mask = make_image(organ, "HPA", side, side, 1.0, np.random.default_rng([0, i]))
        images.append((1000 + i, organ, image, mask))
        print(f"rendered {organ} {side}x{side} in {time.perf_counter() - t0:.0f} s", flush=True)
    return write_dataset(out, images)


def pil_baseline(data: Path, out: Path, size: int) -> int:
    """The straightforward loop: PIL open, crop each part, resize (box filter / nearest), save PNG."""
    n = 0
    for r in pd.read_csv(data / "train.csv").itertuples():
        image = Image.open(data / "train_images" / f"{r.id}.tiff").convert("RGB")
        mask = Image.fromarray(decode(r.rle, r.img_height, r.img_width) * class_index(r.organ))
        for split in SPLITS:
            for k, box in enumerate(split_boxes(r.img_height, r.img_width, split)):
                image.crop(box).resize((size, size), Image.Resampling.BOX).save(out / f"{r.id}_{split}_{k}.png")
                mask.crop(box).resize((size, size), Image.Resampling.NEAREST).save(out / f"{r.id}_{split}_{k}_m.png")
                n += 1
    return n


def peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM); getrusage's maxrss also counts the parent's before a fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(mode: str, data: Path, out: Path, size: int, workers: int) -> None:
    """Run one configuration in this (fresh) process and print its time, tile count and peak RSS as JSON."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if mode == "baseline":
        tiles = pil_baseline(data, out, size)
    else:
        reduces = (4,) if mode == "big" else ()
        tiles = len(build_tiles(data, data / "folds.csv", out, size, SPLITS, reduces, workers=workers))
    seconds = time.perf_counter() - t0
    rss = {"self_mb": peak_rss_mb(), "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    print(json.dumps({"seconds": seconds, "tiles": tiles, **rss}))


def run(mode: str, data: Path, out: Path, size: int, workers: int = 1) -> dict:
    """Run a configuration in a fresh interpreter; return its JSON report."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--out", str(out), "--size", str(size)]
    proc = subprocess.run([*cmd, "--workers", str(workers)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=6)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--data", type=Path, default=None, help="folder for the rendered images (kept and reused)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--no-big", action="store_true", help="skip the 4500x4500 peak-memory run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.data, args.out, args.size, int(args.workers))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = render(args.data or tmp / "data", args.n_images)
        n = len(pd.read_csv(data / "train.csv"))
        print(f"{n} images of 3000x3000, splits 1,2,3 -> {14 * n} tiles of {args.size} px (one run each)")
        base = run("baseline", data, tmp / "base", args.size)
        print(
            f"PIL baseline         {base['tiles'] / base['seconds']:6.1f} tiles/s  {base['seconds']:6.1f} s"
            f"   peak RSS {base['self_mb']:6.0f} MB"
        )
        for workers in (int(w) for w in args.workers.split(",")):
            ours = run("ours", data, tmp / f"ours{workers}", args.size, workers)
            if ours["tiles"] != base["tiles"]:
                raise RuntimeError(f"tile counts differ: ours {ours['tiles']}, baseline {base['tiles']}")
            peak = max(ours["self_mb"], ours["workers_mb"])
            print(
                f"build_tiles {workers} worker{'s' if workers > 1 else ' '}  {ours['tiles'] / ours['seconds']:6.1f} tiles/s"
                f"  {ours['seconds']:6.1f} s   peak RSS {peak:6.0f} MB   ratio {base['seconds'] / ours['seconds']:.2f}x"
                + ("  (target >= 1.5x)" if workers == 2 else "")
            )
        if not args.no_big:
            image = read_image(data / "train_images" / "1000.tiff")
            row = pd.read_csv(data / "train.csv").iloc[0]
            mask = decode(row["rle"], row["img_height"], row["img_width"])
            big = write_dataset(
                tmp / "big",
                [
                    (
                        9000,
                        row["organ"],
                        cv2.resize(image, (4500, 4500), interpolation=cv2.INTER_CUBIC),
                        cv2.resize(mask, (4500, 4500), interpolation=cv2.INTER_NEAREST),
                    )
                ],
            )
            del image, mask
            report = run("big", big, tmp / "big_tiles", args.size, workers=1)  # in-process: VmHWM is exact
            print(
                f"4500x4500 image, splits 1,2,3 + reduce 4: {report['tiles']} tiles in {report['seconds']:.1f} s, "
                f"peak RSS {report['self_mb']:.0f} MB (one process doing a worker's job; target < 1536 MB)"
            )


if __name__ == "__main__":
    main()
