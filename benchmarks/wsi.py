"""Whole-slide throughput and memory: inference.wsi against flat-image prediction, strip TIFFs, Ray cohorts.

    python benchmarks/wsi.py [--side 30000] [--slide-compression zlib|lzw|jpeg] [--strip-side 20000] [--mpp 0.5]
        [--model-mpp 4.0] [--tile 256] [--block 2048] [--cohort-slides 4] [--cohort-side 2048] [--keep DIR]
        [--skip slide,strip,cohort]

1. slide: writes a --side x --side pyramidal OME-TIFF (tiles in --slide-compression) strip by strip (a few
   make_demo kidney patches repeated inside a section outline, so the slide is never whole in memory), builds
   a random-init smp Unet-ResNet18 checkpoint at --model-mpp um/px and runs `python -m inference.wsi` on it in
   a child process: peak RSS (VmHWM of the child's own address space, polled, with its largest anonymous and
   file-backed parts; getrusage would count the RSS it was forked with), wall time, windows predicted and
   skipped (with --fill-holes --min-area 100: the random network's mask is noise). Then the same tissue windows
   as flat images: every block region the slide run predicted, already in memory, through
   inference.engine.ensemble.predict_image with the same window filter (what predicting the tissue as a folder
   of flat images costs, without reading or writing anything). Ratio = slide seconds / flat seconds (goal <= 1.1).
2. strip: a --strip-side single-strip uncompressed TIFF (what `tifffile.imwrite` writes by default), predicted
   the same way (read row by row per region, on a work grid at the model's um/px; goal < 1.5 GB peak RSS).
3. cohort: --cohort-slides demo slides predicted with `--engine ray` on a local Ray cluster of 1 and of 2
   CPU workers (torch one thread each): slides per minute.
"""

from __future__ import annotations

import argparse
import json
import os
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
# a random-init network's mask is noise (one slide-wide FTU with 10^5 holes): clean it as a user would
POST = ("--fill-holes", "--min-area", "100")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}


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


def _memory_mib(pid: int) -> dict[str, float] | None:
    """VmHWM (peak RSS of the current address space), RssAnon and RssFile of a process in MiB; None once it exited."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmHWM", "RssAnon", "RssFile")}
    except KeyError:  # a zombie: the address space is gone
        return None


def run_with_peak_rss(cmd: list[str]) -> dict[str, float]:
    """Run a command to completion: its peak RSS (VmHWM) and the largest anonymous (heap) and file-backed RSS
    seen, in MiB, polled every 50 ms (the file-backed part is page cache the kernel can drop)."""
    child = subprocess.Popen(cmd, cwd=ROOT, env=ENV)
    peak = {"VmHWM": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    while child.poll() is None:
        for key, value in (_memory_mib(child.pid) or {}).items():
            peak[key] = max(peak[key], value)
        time.sleep(0.05)
    if child.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {child.returncode}")
    return peak


def memory_text(peak: dict[str, float]) -> str:
    return (f"peak RSS {peak['VmHWM']:.0f} MiB (goal < 1536 MiB; largest anonymous {peak['RssAnon']:.0f} MiB, "
            f"file-backed {peak['RssFile']:.0f} MiB)")


def stage_seconds(summary: dict) -> str:
    """'tissue 2, read 0, predict 358, ...' from an S_summary.json."""
    return ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_seconds"].items())


def predict_wsi(slide: Path, run: Path, out: Path, block: int) -> tuple[dict[str, float], float, dict]:
    """(peak memory in MiB as run_with_peak_rss, wall seconds, summary) of `python -m inference.wsi` on one slide."""
    cmd = [sys.executable, "-m", "inference.wsi", "--slide", str(slide), "--models", str(run), "--out", str(out),
           "--block", str(block), "--device", "cpu", "--overwrite", *POST]
    start = time.perf_counter()
    peak = run_with_peak_rss(cmd)
    seconds = time.perf_counter() - start
    stem = slide.name.split(".")[0]
    return peak, seconds, json.loads((out / f"{stem}_summary.json").read_text())


def flat_seconds(slide_path: Path, run: Path, block: int) -> tuple[float, int]:
    """(seconds, windows) of predict_image on every tissue block region of the slide run, regions preloaded."""
    import torch

    from inference.engine.ensemble import predict_image
    from inference.engine.sliding import WindowFilter
    from inference.predict import load_members
    from inference.tissue import tissue_mask
    from inference.wsi.predict import WorkGrid, WsiOptions, block_regions, model_pixel_size, read_work_region
    from inference.wsi.reader import open_slide, thumbnail

    torch.set_num_threads(1)
    members = load_members([run], None, "cpu", 4, "gaussian")
    with open_slide(slide_path) as slide:
        grid = WorkGrid.for_models(slide, model_pixel_size(members))  # what inference.wsi predicts on
        thumb, thumb_factor = thumbnail(slide, 2048)
        tissue = tissue_mask(thumb, slide.mpp * thumb_factor)
        blocks = [b for b in block_regions(grid, members, block, tissue, thumb_factor) if b.keep.any()]
        images = [read_work_region(slide, grid, b.region) for b in blocks]
    start = time.perf_counter()
    windows = 0
    for b, image in zip(blocks, images, strict=True):
        keep = WindowFilter(b.keep)
        predict_image(image, members, organ="kidney", pixel_size=grid.mpp, options=WsiOptions(organ="kidney"),
                      windows=keep)
        windows += keep.predicted
    return time.perf_counter() - start, windows


def write_strip_tiff(path: Path, side: int, mpp: float) -> None:
    """A single-strip uncompressed RGB TIFF, filled row band by row band through tifffile's memory map."""
    image = tifffile_memmap(path, side, mpp)
    for y, rows in zip(range(0, side, PATCH), slide_strips(side, mpp, seed=1), strict=True):
        image[y : y + len(rows)] = rows
        image.flush()
    del image


def tifffile_memmap(path: Path, side: int, mpp: float) -> np.memmap:
    import tifffile

    return tifffile.memmap(path, shape=(side, side, 3), dtype=np.uint8, photometric="rgb",
                           resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def cohort_rates(work: Path, run: Path, n: int, side: int, block: int) -> dict[int, tuple[float, float]]:
    """{workers: (seconds, slides per minute)} of `--engine ray` on n demo slides, in a child process each."""
    from data_prep.make_demo import make_slides

    csv = work / "cohort" / "slides.csv"
    if not csv.is_file():
        make_slides(csv.parent, n, seed=3, side=side)
    rates = {}
    for workers in (1, 2):
        out = work / f"cohort_out{workers}"
        code = (
            "import sys, ray, tempfile; from inference.wsi.cli import main; "
            f"ray.init(num_cpus={workers}, include_dashboard=False, object_store_memory=100 * 2**20, "
            "_temp_dir=tempfile.mkdtemp(prefix='ray', dir='/tmp'), logging_level='WARNING', "
            f"runtime_env={{'env_vars': {{'PYTHONPATH': {str(ROOT)!r}, 'OMP_NUM_THREADS': '1'}}}}); "
            f"sys.exit(main(['--slides', {str(csv)!r}, '--models', {str(run)!r}, '--out', {str(out)!r}, "
            f"'--engine', 'ray', '--device', 'cpu', '--block', '{block}', '--overwrite']))"
        )
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rates[workers] = (seconds, n / seconds * 60)
    return rates


class Report(list):
    """Lines printed as they come (a long run shows its first figures early)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)

    def extend(self, lines: list[str]) -> None:
        for line in lines:
            self.append(line)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/wsi.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=30000, help="pyramidal slide side (px)")
    ap.add_argument("--slide-compression", default="zlib", choices=("zlib", "lzw", "jpeg"),
                    help="tile codec of the pyramidal slide (jpeg / lzw: what scanners and libvips write)")
    ap.add_argument("--strip-side", type=int, default=20000, help="single-strip TIFF side (px)")
    ap.add_argument("--mpp", type=float, default=0.5, help="slide um/px")
    ap.add_argument("--model-mpp", type=float, default=4.0, help="checkpoint um/px (decides the pyramid level)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--cohort-slides", type=int, default=4)
    ap.add_argument("--cohort-side", type=int, default=2048)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: slide, strip, cohort")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.update(OMP_NUM_THREADS="1")
    lines = Report()
    lines.append(f"benchmarks/wsi.py on {os.cpu_count()} CPU cores (torch one thread per process)")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        run = work / "runs" / "unet_r18_bench"
        make_smp_checkpoint(run / "fold0", tile=args.tile, pixel_size=args.model_mpp)
        if "slide" not in skip:
            slide = work / f"big-{args.slide_compression}.ome.tif"
            start = time.perf_counter()
            if not slide.is_file():
                write_pyramid(slide, slide_strips(args.side, args.mpp), args.side, args.side, mpp=args.mpp,
                              layout="subifds", compression=args.slide_compression)
            made = time.perf_counter() - start
            peak, seconds, summary = predict_wsi(slide, run, work / "wsi", args.block)
            flat, windows = flat_seconds(slide, run, args.block)
            rgb = args.side**2 * 3 / 2**30
            lines.extend([
                f"slide {args.side}x{args.side} at {args.mpp} um/px ({args.slide_compression} pyramidal OME-TIFF, "
                f"{slide.stat().st_size / 2**20:.0f} MiB, written in {made:.0f} s)",
                f"  inference.wsi (Unet-R18 at {args.model_mpp} um/px, tile {args.tile}, level {summary['level']}): "
                f"{seconds:.0f} s wall, {summary['seconds']:.0f} s after start-up, {summary['predicted_windows']} "
                f"windows run, {summary['skipped_windows']} background windows skipped, {summary['ftus']} FTUs",
                f"  same {windows} tissue windows as flat in-memory images: {flat:.0f} s -> slide / flat = "
                f"{summary['seconds'] / flat:.2f}x (goal <= 1.1x; the slide run also reads, writes the mask and "
                f"probability pyramids, GeoJSON and CSV)",
                f"  seconds by stage: {stage_seconds(summary)}",
                f"  {memory_text(peak)}; holding the slide as RGB uint8 would take "
                f"{rgb:.2f} GiB",
            ])
        if "strip" not in skip:
            strip = work / "strip.tif"
            if not strip.is_file():
                write_strip_tiff(strip, args.strip_side, args.mpp)
            peak, seconds, summary = predict_wsi(strip, run, work / "strip_out", args.block)
            lines.append(
                f"single-strip uncompressed TIFF {args.strip_side}x{args.strip_side} "
                f"({strip.stat().st_size / 2**30:.2f} GiB, read row by row per region): {seconds:.0f} s wall, "
                f"level {summary['level']}, work grid {summary['work_dimensions']} at {summary['work_mpp']:.3g} um/px, "
                f"{summary['predicted_windows']} windows; {memory_text(peak)}; seconds by "
                f"stage: {stage_seconds(summary)}")
        if "cohort" not in skip:
            rates = cohort_rates(work, run, args.cohort_slides, args.cohort_side, min(args.block, 1024))
            (s1, r1), (s2, r2) = rates[1], rates[2]
            lines.append(
                f"cohort of {args.cohort_slides} demo slides ({args.cohort_side} px) on a local Ray cluster: "
                f"1 worker {s1:.0f} s ({r1:.1f} slides/min), 2 workers {s2:.0f} s ({r2:.1f} slides/min), "
                f"speed-up {s1 / s2:.2f}x (Ray start-up included)")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"(benchmark process itself: peak RSS {own:.0f} MiB)")


if __name__ == "__main__":
    main()
