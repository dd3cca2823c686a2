"""Data-pipeline throughput: samples/s per CPU worker of every GPU config's training pipeline at its real size, and
the DataLoader workers each config needs to keep its GPU fed.

    python benchmarks/data_pipeline.py [--work benchmarks_out/data_pipeline] [--samples 24] [--only NAME ...]
        [--n-train 5] [--gpu-results benchmarks_out/gpu_check/results.json] [--no-reference]
        [--before-after slowest|all]

1. Data, built once under --work: demo data at full size (data_prep.make_demo --scale 1: 3000 px HPA train images
   at 0.4 um/px), folds, one tile set per tile size the configs train at (data_prep.tiles --size S --splits 1,2;
   the 768 px set also --scaled 0.8, the whole images the crop sampler draws from) and one stain copy per whole
   image (data_prep.stain_copies --copies 1, make_demo's targets), so the recipe's 30% stain-copy share is drawn.
2. Each GPU config's training Dataset, item by item in this process with one OpenCV and one torch thread (one
   DataLoader worker on one core): fastai configs (those built on train/configs/fastai/_gpu_recipe.py) the Dataset
   train.fastai_data.make_dataloaders builds for fold 0 (the crop sampler at the config's tile size and um/px,
   stain-copy share, low-res blur, the `seed10+stain` preset, normalisation and target; or the tile sampler), mmseg
   configs (MMSEG_CONFIGS) the train dataset mmseg's registry builds from the config (HubmapTileDataset and the
   config's pipeline: tile read, FtuMask, AugmentPreset, RandomResize / RandomCrop, PackSegInputs). The mmseg tile
   reader's decoded copies (train.decoded_tiles) are written first and timed on their own (PNG decode, first read,
   later reads), so the pipelines are timed as in every epoch after a run's first.
   Every config a quarter of --samples per round, 4 rounds round-robin (so all see the same machine load), each
   round after one untimed warm-up sample, timed one by one: samples/s per worker from the median (a shared
   machine's stalls left out).
3. Workers per GPU: ceil(GPU images/s / samples/s per worker). GPU images/s is gpu_check.py's measured img_s where
   --gpu-results holds a GPU run of that config; otherwise an ASSUMPTION (GPU_ASSUMED: published forward GFLOPs,
   an A100 with AMP at an assumed sustained rate), printed as such.
4. Before / after on the slowest pipeline of each trainer (--before-after all: on every config): the same samples
   (same seeds) through the reference implementation of the per-sample steps these changes made faster (kept
   below: REFERENCE) and through today's code, rounds interleaved so both see the same machine load; prints the
   ratio and the largest difference between their samples (0: the same outputs).
Prints markdown tables; writes WORK/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # the datasets' image-loading bars, once per dataset built

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import albumentations as A  # noqa: E402

import data_prep.augment as augment  # noqa: E402
import train.crops as crops  # noqa: E402
import train.fastai_data as fastai_data  # noqa: E402
from data_prep.tileset import load_index, read_png  # noqa: E402
from train.configs.fastai.base import FastaiConfig, experiment_names, load_config, resolve_config_path  # noqa: E402

MMSEG_DIR = REPO / "train" / "configs" / "mmseg"
# The mmseg GPU recipes (their _classweight / _sgd ablations share upernet_convnext-b_768's pipeline and size).
MMSEG_CONFIGS = (
    "segformer_mit-b3_1024", "segformer_mit-b4_960", "segformer_mit-b5_960", "upernet_convnext-b_768",
    "upernet_convnext-xl_768",
)  # fmt: skip
PIXEL_SIZE = 0.8  # um/px of the crop configs (_gpu_recipe.GPU_CROPS)

# ASSUMED GPU training rates (no GPU has run benchmarks/gpu_check.py yet): images/s per GPU = sustained TFLOP/s /
# (3 x forward GFLOPs of the model at the config's tile size). Forward GFLOPs: the architecture papers' figures at
# their stated input (EfficientNet B7 37 G at 600 px, EfficientNetV2-L 53 G at 480, ConvNeXt-L 34.4 G at 224,
# CoaT-Lite Medium 9.8 G at 224, ResNeSt-269 77 G at 416; whole SegFormer B3 / B4 / B5 963 / 1241 / 1460 G and
# UperNet ConvNeXt-B 1170 G at 1024x2048 and 512x2048, UperNet ConvNeXt-XL 3335 G at 640x2560), scaled by pixel
# count, times 1.3 for a UNet decoder over a bare encoder (2 for UNet++). Sustained rate: an A100 with AMP at
# 100 TFLOP/s (a third of its fp16 tensor peak), 30 for depthwise EfficientNets (memory-bound). Order of
# magnitude only: --gpu-results replaces them with measured img_s.
A100_TFLOPS, DEPTHWISE_TFLOPS = 100.0, 30.0
GPU_ASSUMED: dict[str, tuple[float, int, float, float]] = {  # config: (GFLOPs, at pixels, decoder factor, TFLOP/s)
    "unet_convnext_large_768": (34.4, 224 * 224, 1.3, A100_TFLOPS),
    "unet_coat_lite_medium_768": (9.8, 224 * 224, 1.3, A100_TFLOPS),
    "unet_effb7_768": (37.0, 600 * 600, 1.3, DEPTHWISE_TFLOPS),
    "unet_effv2_l_768": (53.0, 480 * 480, 1.3, DEPTHWISE_TFLOPS),
    "unet_mit_b5_1024": (1460.4, 1024 * 2048, 1.0, A100_TFLOPS),  # MiT-b5 + UNet decoder ~ SegFormer-B5's MLP head
    "unetpp_effb7_1024": (37.0, 600 * 600, 2.0, DEPTHWISE_TFLOPS),
    "unet_resnest269_768": (77.0, 416 * 416, 1.3, A100_TFLOPS),
    "segformer_mit-b3_1024": (962.9, 1024 * 2048, 1.0, A100_TFLOPS),
    "segformer_mit-b4_960": (1240.6, 1024 * 2048, 1.0, A100_TFLOPS),
    "segformer_mit-b5_960": (1460.4, 1024 * 2048, 1.0, A100_TFLOPS),
    "upernet_convnext-b_768": (1170.0, 512 * 2048, 1.0, A100_TFLOPS),
    "upernet_convnext-xl_768": (3335.0, 640 * 2560, 1.0, A100_TFLOPS),
}


def assumed_gpu_rate(name: str, tile: int) -> float:
    """Assumed training images/s of one GPU (see GPU_ASSUMED)."""
    gflops, pixels, decoder, tflops = GPU_ASSUMED[name]
    return tflops * 1e3 / (3 * gflops * tile * tile / pixels * decoder)


# ---- the reference implementation: the per-sample steps as they were before this benchmark made them faster ----

_MEAN, _STD = fastai_data.MEAN, fastai_data.STD


def reference_normalise(images: np.ndarray) -> np.ndarray:
    """The former train.fastai_data.normalise: float arithmetic on every pixel, then a strided copy to CHW."""
    x = (images.astype(np.float32) / 255.0 - _MEAN) / _STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def reference_crop_reflect(array: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """The former train.crops.crop_reflect: two index gathers (rows, then columns) wherever the crop leaves the image."""
    return array[crops._window(array.shape[0], y0, side)][:, crops._window(array.shape[1], x0, side)]


def reference_stain_transfer(image: np.ndarray, stain_matrix: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The former data_prep.augment.stain_transfer: the tissue weight merged as a fourth OD channel, one 4-channel
    cv2.transform (OpenCV's scalar path) and a negation before exp."""
    od = augment.optical_density(image)
    matrix = (augment.HED_FROM_RGB @ np.asarray(stain_matrix)).T.astype(np.float32)
    background = np.asarray(background, np.float32)
    if background.any():
        low, high = augment.TISSUE_OD
        ramp = np.array([[1, 1, 1, -low]], np.float32) / (high - low)
        tissue = cv2.transform(od, ramp)
        np.clip(tissue, 0.0, 1.0, out=tissue)
        od = cv2.merge([od, tissue])
        matrix = np.hstack([matrix, background[:, None]])
    density = cv2.transform(od, matrix)
    np.clip(density, 0.0, augment._MAX_DENSITY, out=density)
    return cv2.convertScaleAbs(cv2.exp(-density), alpha=256.0, beta=-1.0)


def reference_load_tile_image(self: object, results: dict) -> dict:
    """The former mmseg LoadTileImage: the tile PNG decoded on every read (no decoded copy)."""
    img = read_png(Path(results["img_path"]))
    results["img"], results["img_shape"], results["ori_shape"] = img, img.shape[:2], img.shape[:2]
    return results


def reference_ftu_mask(self: object, results: dict) -> dict:
    """The former mmseg FtuMask: np.where over the mask, then a cast."""
    mask = results["gt_seg_map"]
    results["gt_seg_map"] = np.where(mask == 255, 255, mask > 0).astype(mask.dtype)
    return results


# (module, name, the former implementation): what reference_path puts back
REFERENCE: list[tuple[object, str, object]] = [
    (fastai_data, "normalise", reference_normalise),
    (crops, "crop_reflect", reference_crop_reflect),
    (augment, "OpenCVRandomRotate90", A.RandomRotate90),  # np.rot90 views, copied by the next transform
    (augment, "stain_transfer", reference_stain_transfer),
]


def mmseg_reference() -> list[tuple[object, str, object]]:
    """REFERENCE entries of the mmseg pipeline steps (imported only where mmcv is, and an mmseg config is run)."""
    from train.mmseg_ext import transforms

    return [(transforms.LoadTileImage, "transform", reference_load_tile_image),
            (transforms.FtuMask, "transform", reference_ftu_mask)]


@contextlib.contextmanager
def reference_path(mmseg: bool = False) -> Iterator[None]:
    """The pipeline with the REFERENCE implementations in place of today's (datasets built inside use them)."""
    reference = REFERENCE + (mmseg_reference() if mmseg else [])
    saved = [(module, name, getattr(module, name)) for module, name, _ in reference]
    for module, name, former in reference:
        setattr(module, name, former)
    try:
        yield
    finally:
        for module, name, today in saved:
            setattr(module, name, today)


# ---- data ----


def run(*command: str) -> None:
    """Run `python -m ...` in the repo root, quietly; a failure stops the benchmark with its output."""
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def prepare(work: Path, sizes: list[int], n_train: int) -> dict[int, Path]:
    """Full-size demo data, folds, one tile set per size (768: with whole images at 0.8 um/px and stain copies)."""
    data, folds = work / "data", work / "folds.csv"
    if not (data / "train.csv").is_file():
        run("-m", "data_prep.make_demo", "--out", str(data), "--n-train", str(n_train), "--n-test", "5",
            "--n-targets", "2", "--scale", "1")
    if not folds.is_file():
        run("-m", "data_prep.make_folds", "--train-csv", str(data / "train.csv"), "--out", str(folds))
    tiles = {}
    for size in sorted(set(sizes) | {768}):
        out = work / f"tiles{size}"
        scaled = ["--scaled", f"{PIXEL_SIZE:g}"] if size == 768 else []
        if not (out / "index.csv").is_file():
            run("-m", "data_prep.tiles", "--data-dir", str(data), "--folds", str(folds), "--out", str(out),
                "--size", str(size), "--splits", "1,2", *scaled, "--workers", "2")
        tiles[size] = out
    if not (tiles[768] / "stain_copies.json").is_file():
        run("-m", "data_prep.stain_copies", "--tiles", str(tiles[768]), "--targets", str(data / "targets"),
            "--copies", "1")
    return tiles


# ---- datasets ----


def gpu_fastai_configs() -> list[str]:
    """The fastai experiments built on the GPU recipe (_gpu_recipe.py)."""
    return [n for n in experiment_names() if "_gpu_recipe" in resolve_config_path(n).read_text()]


def fastai_dataset(cfg: FastaiConfig, tiles: Path, n: int) -> torch.utils.data.Dataset:
    """The training Dataset make_dataloaders builds for fold 0 (crop sampler or tile sampler)."""
    train, _ = fastai_data.split_rows(load_index(tiles), 0, cfg)
    if cfg.sampler == "crops":
        sampler = fastai_data.CropSampler(
            fastai_data.load_scaled_images(train, tiles, cfg.seed), fastai_data.crop_settings(cfg))
        return fastai_data.CropDataset(sampler, n, cfg.augment, cfg.histmatch_targets)
    return fastai_data.TileDataset(train, tiles, cfg.tile_size, cfg.augment, cfg.histmatch_targets)


def mmseg_dataset(name: str, tiles: dict[int, Path]) -> tuple[torch.utils.data.Dataset, int, int, str]:
    """(the config's train dataset built by mmseg's registry for fold 0 on the tile set of its size, tile size,
    batch size, its pipeline's steps)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    from mmseg.registry import DATASETS

    cfg = Config.fromfile(str(MMSEG_DIR / f"{name}.py"))
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)
    dataset_cfg = cfg.train_dataloader.dataset
    dataset_cfg.update(tiles_dir=str(tiles[int(cfg.tile_size)]), fold=0)
    steps = " > ".join(step.get("preset", step["type"]) for step in dataset_cfg.pipeline)
    return DATASETS.build(dataset_cfg), int(cfg.tile_size), int(cfg.train_dataloader.batch_size), steps


def time_samples(dataset: torch.utils.data.Dataset, samples: int, seed: int) -> tuple[list[float], list]:
    """(seconds of each of `samples` items after one untimed warm-up, the items); the seeds fix the draws."""
    torch.manual_seed(seed)  # our datasets' and AugmentPreset's draws (worker_seed)
    np.random.seed(seed)  # noqa: NPY002 - mmcv's RandomResize / RandomCrop draw from numpy's global generator
    random.seed(seed)
    order = np.random.default_rng(seed).permutation(max(len(dataset), samples + 1))
    items = [int(i) % len(dataset) for i in order[: samples + 1]]
    out, seconds = [dataset[items[0]]], []
    for i in items[1:]:
        start = time.perf_counter()
        out.append(dataset[i])
        seconds.append(time.perf_counter() - start)
    return seconds, out


def build(kind: str, name: str, tiles: dict[int, Path], n: int) -> tuple[torch.utils.data.Dataset, int, int, str]:
    """(a GPU config's training dataset of n samples, tile size, batch size, its pipeline in words)."""
    if kind == "mmseg":
        return mmseg_dataset(name, tiles)
    cfg = load_config(name)[1]
    dataset = fastai_dataset(cfg, tiles[768 if cfg.sampler == "crops" else cfg.tile_size], n)
    return dataset, cfg.tile_size, cfg.bs, f"fastai {cfg.sampler} > {cfg.augment} > normalise"


def tensors(sample: object) -> list[torch.Tensor]:
    """A sample's tensors: fastai's (image, target), mmseg's packed inputs and ground-truth map."""
    if isinstance(sample, dict):
        return [sample["inputs"], sample["data_samples"].gt_sem_seg.data]
    return list(sample)


def max_difference(a: list, b: list) -> float:
    """Largest absolute difference between two lists of samples."""
    return max(float((x.float() - y.float()).abs().max())
               for sa, sb in zip(a, b, strict=True) for x, y in zip(tensors(sa), tensors(sb), strict=True))


def before_after(kind: str, name: str, tiles: dict[int, Path], samples: int, rounds: int = 4) -> dict:
    """A config's pipeline through REFERENCE and through today's code, interleaved rounds of the same samples."""
    per_round = max(3, samples // rounds)
    seconds: dict[str, list[float]] = {"reference": [], "today": []}
    difference = 0.0
    for r in range(rounds):
        outputs = {}
        for path in ("reference", "today") if r % 2 == 0 else ("today", "reference"):
            with reference_path(kind == "mmseg") if path == "reference" else contextlib.nullcontext():
                dataset = build(kind, name, tiles, per_round + 1)[0]
                spent, outputs[path] = time_samples(dataset, per_round, seed=1000 + r)
            seconds[path] += spent
        difference = max(difference, max_difference(outputs["reference"], outputs["today"]))
    reference, today = float(np.median(seconds["reference"])), float(np.median(seconds["today"]))
    return dict(reference_s=reference, today_s=today, speedup=reference / today, max_abs_difference=difference)


def decoded_copies(tiles: Path) -> dict:
    """ms per image tile of TILES: the PNG decode alone, the first read through train.decoded_tiles from an empty
    TILES/decoded (decode and write the copy: the first epoch), and the next read (the copy: every later epoch).
    Leaves the copies written, as a run's first epoch does."""
    import shutil

    from train.decoded_tiles import DECODED_DIR, read_tile_image

    shutil.rmtree(tiles / DECODED_DIR, ignore_errors=True)
    paths = [tiles / p for p in load_index(tiles)["image_path"]]
    seconds: dict[str, list[float]] = {"png_decode_ms": [], "first_read_ms": [], "later_read_ms": []}
    for key, read in (("png_decode_ms", read_png), ("first_read_ms", read_tile_image),
                      ("later_read_ms", read_tile_image)):
        for path in paths:
            start = time.perf_counter()
            read(path)
            seconds[key].append(time.perf_counter() - start)
    return {"tiles": tiles.name, **{k: 1e3 * float(np.median(v)) for k, v in seconds.items()}}


def gpu_rates(path: Path | None) -> dict[str, float]:
    """Measured training img_s per config from a gpu_check.py results.json run on a GPU (none: {})."""
    if path is None or not path.is_file():
        return {}
    result = json.loads(path.read_text())
    if result.get("smoke") or result.get("device", "cpu") == "cpu":
        return {}
    return {row["config"]: float(row["img_s"]) for row in result.get("train", []) if row.get("img_s")}


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of the rows' columns."""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/data_pipeline.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("benchmarks_out/data_pipeline"), help="data and results folder")
    ap.add_argument("--samples", type=int, default=24, help="timed samples per config")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these configs (fastai or mmseg stems)")
    ap.add_argument("--n-train", type=int, default=5, help="make_demo train images (one per organ at 5)")
    ap.add_argument("--gpu-results", type=Path, default=Path("benchmarks_out/gpu_check/results.json"),
                    help="gpu_check.py results.json of a GPU run: its measured img_s replace the assumed rates")
    ap.add_argument("--no-reference", action="store_true", help="skip the before / after comparison")
    ap.add_argument("--before-after", choices=("slowest", "all"), default="slowest",
                    help="compare REFERENCE and today on the slowest config of each trainer, or on every config")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # one DataLoader worker on one core
    torch.set_num_threads(1)
    fastai_names = gpu_fastai_configs()
    plan = [("fastai", n) for n in fastai_names] + [("mmseg", n) for n in MMSEG_CONFIGS]
    if args.only:
        unknown = sorted(set(args.only) - {n for _, n in plan})
        if unknown:
            ap.error(f"--only {unknown}: not GPU configs; choose from {[n for _, n in plan]}")
        plan = [(kind, n) for kind, n in plan if n in args.only]
    configs = [load_config(n)[1] for kind, n in plan if kind == "fastai"]
    sizes = [c.tile_size for c in configs if c.sampler == "tiles"]
    mmseg_sizes = []
    if any(kind == "mmseg" for kind, _ in plan):
        from mmengine.config import Config

        mmseg_sizes = [int(Config.fromfile(str(MMSEG_DIR / f"{n}.py")).tile_size) for kind, n in plan if kind == "mmseg"]
    tiles = prepare(args.work.resolve(), sizes + mmseg_sizes, args.n_train)
    measured = gpu_rates(args.gpu_results)
    # the mmseg tile reader's decoded copies: their cost, and written before timing (the epochs after the first)
    copies = [decoded_copies(tiles[size]) for size in sorted(set(mmseg_sizes))]
    if copies:
        print("\n### mmseg tile reads (ms per tile): PNG decode, first read (decode + decoded copy), later reads\n")
        print(markdown(copies, ["tiles", "png_decode_ms", "first_read_ms", "later_read_ms"]))
    built = {name: build(kind, name, tiles, args.samples + 1) for kind, name in plan}
    spent: dict[str, list[float]] = {name: [] for _, name in plan}
    rounds = 4  # every config a quarter of its samples per round, so all of them see the same machine load
    for r in range(rounds):
        for name in [n for _, n in plan][r % len(plan):] + [n for _, n in plan][: r % len(plan)]:
            spent[name] += time_samples(built[name][0], max(1, args.samples // rounds), args.seed + r)[0]
    rows = []
    for kind, name in plan:
        _, tile, batch, pipeline = built[name]
        seconds = float(np.median(spent[name]))
        rate = measured.get(name)
        gpu = rate if rate is not None else assumed_gpu_rate(name, tile)
        row = dict(config=name, kind=kind, tile=tile, batch=batch, pipeline=pipeline, ms_per_sample=1e3 * seconds,
                   samples_s_worker=1 / seconds, gpu_img_s=gpu, gpu_rate="measured" if rate is not None else "ASSUMED",
                   workers_needed=math.ceil(gpu * seconds))
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    result: dict = {"samples": args.samples, "rows": rows, "decoded_copies": copies}
    print("\n### Samples/s per CPU worker (one core, one OpenCV thread) and workers per GPU\n")
    print(markdown(rows, ["config", "tile", "batch", "pipeline", "ms_per_sample", "samples_s_worker", "gpu_img_s",
                          "gpu_rate", "workers_needed"]))
    if not args.no_reference and rows:
        # the slowest pipeline, and the slowest of the other trainer's too (--before-after all: every config)
        slowest = {kind: max((r for r in rows if r["kind"] == kind), key=lambda r: r["ms_per_sample"])
                   for kind in ("fastai", "mmseg") if any(r["kind"] == kind for r in rows)}
        chosen = rows if args.before_after == "all" else list(slowest.values())
        compared = []
        for row in sorted(chosen, key=lambda row: -row["ms_per_sample"]):
            one = before_after(row["kind"], row["config"], tiles, args.samples)
            compared.append({"config": row["config"], "reference_ms": 1e3 * one["reference_s"],
                             "today_ms": 1e3 * one["today_s"], "speedup": one["speedup"],
                             "max_abs_difference": one["max_abs_difference"]})
        result["before_after"] = compared
        which = "every config" if args.before_after == "all" else "the slowest pipeline of each trainer"
        print(f"\n### Before / after (REFERENCE vs today) on {which}, same samples\n")
        print(markdown(compared, ["config", "reference_ms", "today_ms", "speedup", "max_abs_difference"]))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
