"""Peak memory of inference.wsi on a large slide, against what holding the slide in memory would take.

    python benchmarks/wsi.py [--side 30000] [--mpp 0.5] [--model-mpp 4.0] [--tile 256] [--block 2048] [--keep DIR]

Writes a --side x --side pyramidal OME-TIFF strip by strip (a few make_demo kidney patches repeated inside a
section outline, so the slide is never whole in memory), builds a random-init smp Unet-ResNet18 checkpoint
at --model-mpp um/px, then runs `python -m inference.wsi` on it in a child process and reports the child's
peak RSS (VmHWM of its own address space, polled: getrusage would count the RSS it was forked with),
its wall time, windows predicted and skipped, and the bytes a whole-slide array would
need (RGB uint8 at level 0, and one float32 probability map at level 0). The issue's target: peak RSS under
1.5 GB at 30k x 30k.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from checkpoints import make_smp_checkpoint  # noqa: E402

from data_prep.make_demo import GLASS, make_image, section_outline  # noqa: E402
from inference.organs import organ  # noqa: E402
from inference.wsi.reader import write_pyramid  # noqa: E402

PATCH = 2048


def slide_strips(side: int, mpp: float, seed: int = 0, n_patches: int = 4) -> Iterator[np.ndarray]:
    """Rows of a synthetic kidney slide: n drawn patches tiled over a section outline, PATCH rows at a time."""
    rng = np.random.default_rng(seed)
    scale = organ("kidney").pixel_size["Hubmap"] / mpp
    patches = [make_image("kidney", "Hubmap", PATCH, PATCH, scale, rng)[0] for _ in range(n_patches)]
    outline = section_outline(rng, side, side)
    oy = np.minimum(np.arange(side) * outline.shape[0] // side, outline.shape[0] - 1)
    ox = np.minimum(np.arange(side) * outline.shape[1] // side, outline.shape[1] - 1)
    for i, y in enumerate(range(0, side, PATCH)):
        h = min(PATCH, side - y)
        row = np.full((h, side, 3), GLASS, np.uint8)
        for j, x in enumerate(range(0, side, PATCH)):
            w = min(PATCH, side - x)
            inside = outline[oy[y : y + h]][:, ox[x : x + w]]
            row[:, x : x + w][inside] = patches[(i + j) % n_patches][:h, :w][inside]
        yield row


def _hwm_mib(pid: int) -> float | None:
    """Peak RSS of a process's current address space (VmHWM), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_with_peak_rss(cmd: list[str]) -> float:
    """Run a command to completion and return its peak RSS in MiB (VmHWM polled every 50 ms)."""
    child = subprocess.Popen(cmd, cwd=ROOT)
    peak = 0.0
    while child.poll() is None:
        hwm = _hwm_mib(child.pid)
        peak = max(peak, hwm or 0.0)
        time.sleep(0.05)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {child.returncode}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=30000)
    ap.add_argument("--mpp", type=float, default=0.5, help="slide um/px")
    ap.add_argument("--model-mpp", type=float, default=4.0, help="checkpoint um/px (decides the pyramid level)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        slide = work / "big.ome.tif"
        start = time.perf_counter()
        if not slide.is_file():
            write_pyramid(slide, slide_strips(args.side, args.mpp), args.side, args.side, mpp=args.mpp)
        made = time.perf_counter() - start
        own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run = work / "runs" / "unet_r18_bench"
        make_smp_checkpoint(run / "fold0", tile=args.tile, pixel_size=args.model_mpp)
        out = work / "wsi"
        cmd = [sys.executable, "-m", "inference.wsi", "--slide", str(slide), "--models", str(run), "--out",
               str(out), "--block", str(args.block), "--device", "cpu"]
        start = time.perf_counter()
        peak = run_with_peak_rss(cmd)
        seconds = time.perf_counter() - start
        summary = json.loads((out / "big_work" / "state.json").read_text())["summary"]
        size = slide.stat().st_size / 2**20
    rgb = args.side * args.side * 3 / 2**30
    prob = args.side * args.side * 4 / 2**30
    print(f"slide {args.side}x{args.side} at {args.mpp} um/px: {size:.0f} MiB on disk, written in {made:.0f} s "
          f"with peak RSS {own_rss:.0f} MiB")
    print(f"inference.wsi (model at {args.model_mpp} um/px, tile {args.tile}, level {summary['level']}): "
          f"{seconds:.0f} s, {summary['predicted_windows']} windows predicted, {summary['skipped_windows']} "
          f"background windows skipped ({summary['blocks_without_tissue']} of {summary['blocks']} blocks without "
          f"tissue), {summary['ftus']} FTUs")
    print(f"peak RSS of inference.wsi: {peak:.0f} MiB (target < 1536 MiB); holding the slide would take "
          f"{rgb:.2f} GiB as RGB uint8 plus {prob:.2f} GiB per float32 level-0 map "
          f"({rgb * 1024 / peak:.1f}x the measured peak for the RGB alone)")


if __name__ == "__main__":
    main()
