"""The repo's training recipe against a plain training loop at equal wall time, per organ and per data source.

    python benchmarks/recipe.py [--work benchmarks_out/recipe] [--config unet_r18_cpu [--also CFG ...]] [--minutes 20]
        [--seeds 3] [--data demo|real-masks | --data-dir DATA] [--n-train 40] [--n-test 20] [--scale 0.1667]
        [--mmseg [CFG ...]]

For each seed, side by side and one thread each (so every model gets the same share of the machine):
  ours   python -m train.fastai_unet --config C --fold -1 --tiles T --minutes M --seed S
  plain  python benchmarks/plain_loop.py --minutes M --seed S   (benchmarks/plain_loop.py: the 100-line loop)
  --also more fastai configs (ablations), each as another process alongside
  mmseg  (--mmseg [CFG ...]) python -m train.mmseg_train --config CFG --fold -1 --minutes M for each mmseg config
         (default upernet_convnext-cpu; e.g. --mmseg upernet_convnext-cpu segformer_mit-b0_cpu), alongside
Weight averaging is a config delta: --also unet_r18_cpu_avg3 (the mean of the last 3 epochs) beside ours.
then every model predicts the same test set with `python -m inference.predict` (default settings) and is scored
with inference.score. Without --data-dir the benchmark writes demo data (data_prep.make_demo, HPA train images,
HPA + Hubmap test images at the Hubmap pixel sizes and stains), or with --data real-masks the real-mask benchmark
(data_prep.real_masks: the 71 real train masks of ../shared/fixtures/hubmap2022 at their real geometry, rendered
at --real-pixel-size um/px, split by folds.csv; skipped with a reason where ../shared is absent). Prints mean +- std over seeds of the Dice overall,
per data source and per organ, and the ratio ours / plain; writes WORK/results.json. Finished runs are reused,
so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference.organs import DATA_SOURCES, ORGANS  # noqa: E402
from inference.score import score  # noqa: E402
from inference.tables import load_solution, load_submission  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402

MMSEG_CONFIG = REPO / "train/configs/mmseg/upernet_convnext-cpu.py"


def run(command: list[str], log: Path, threads: int) -> subprocess.Popen:
    """Start a command with `threads` OpenMP threads, output to log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every process; a failure stops the benchmark with the tail of its log."""
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); last lines of {log}:\n{log.read_text()[-3000:]}")


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """The benchmark data options shared with benchmarks/domain_curves.py."""
    ap.add_argument("--data", choices=("demo", "real-masks"), default="demo",
                    help="demo: data_prep.make_demo; real-masks: data_prep.real_masks (needs ../shared)")
    ap.add_argument("--data-dir", type=Path, help="competition-layout data with test_solution.csv (overrides --data)")
    ap.add_argument("--data-seed", type=int, default=1, help="make_demo / real_masks seed")
    ap.add_argument("--n-train", type=int, default=40, help="make_demo train images")
    ap.add_argument("--n-test", type=int, default=20, help="make_demo test images")
    ap.add_argument("--scale", type=float, default=1 / 6, help="make_demo --scale (1 = 3000 px train images)")
    ap.add_argument("--real-pixel-size", type=float, default=1.6, help="real_masks --pixel-size (um/px of HPA images)")
    ap.add_argument("--real-test-folds", default="0", help="real_masks --test-folds")
    ap.add_argument("--extra-data", type=Path, action="append", default=[], metavar="DATA",
                    help="data_prep.tiles --extra-data: training-only rows (e.g. train.pseudo_label's output) that "
                         "every fastai model trains on")


def make_data(args: argparse.Namespace) -> Path:
    """The benchmark's data folder: --data-dir as given, else demo or real-mask data written under --work once."""
    py = sys.executable
    if args.data_dir is not None:
        return args.data_dir
    if args.data == "real-masks":
        data = args.work / f"data_real_px{args.real_pixel_size:g}"
        if not (data / "test_solution.csv").is_file():
            from data_prep.real_masks import DEFAULT_ROWS

            if not DEFAULT_ROWS.is_file():
                print(f"skipped: --data real-masks needs the real train rows at {DEFAULT_ROWS} (../shared is absent)")
                raise SystemExit(0)
            subprocess.run([py, "-m", "data_prep.real_masks", "--out", str(data), "--seed", str(args.data_seed),
                            "--pixel-size", f"{args.real_pixel_size:g}", "--test-folds", args.real_test_folds,
                            "--swap-stain", "--with-targets"], cwd=REPO, check=True)
        return data
    data = args.work / "data"
    if not (data / "test_solution.csv").is_file():
        subprocess.run([py, "-m", "data_prep.make_demo", "--out", str(data), "--seed", str(args.data_seed),
                        "--n-train", str(args.n_train), "--n-test", str(args.n_test), "--scale", str(args.scale)],
                       cwd=REPO, check=True)
    return data


def prepare(args: argparse.Namespace, pixel_size: float | list[float]) -> tuple[Path, Path]:
    """The data (make_data), folds and a tile set with whole images at the recipes' pixel size(s)."""
    py = sys.executable
    data = make_data(args)
    sizes = {float(p) for p in (pixel_size if isinstance(pixel_size, list) else [pixel_size])}
    record = args.work / "tiles" / "tiles.json"
    if record.is_file():  # keep the scales an earlier run built, so the tile set is reused, not refused
        sizes |= {float(p) for p in json.loads(record.read_text()).get("scaled", [])}
    sizes = sorted(sizes)
    folds = args.work / "folds.csv"
    subprocess.run([py, "-m", "data_prep.make_folds", "--train-csv", str(data / "train.csv"), "--out", str(folds)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    tiles = args.work / "tiles"
    subprocess.run([py, "-m", "data_prep.tiles", "--data-dir", str(data), "--folds", str(folds), "--out", str(tiles),
                    "--size", "256", "--splits", "1,2,3", *(a for p in sizes for a in ("--scaled", f"{p:g}")),
                    *(a for d in args.extra_data for a in ("--extra-data", str(d))), "--workers", "2"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return data, tiles


def predict_and_score(models: list[Path], data: Path, out: Path) -> dict:
    """inference.predict with default settings on the test set, scored against test_solution.csv."""
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "inference.predict", "--data-dir", str(data), "--models",
                        *map(str, models), "--out", str(out)], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return score(load_submission(out), load_solution(data / "test_solution.csv"))


def columns(result: dict) -> dict[str, float]:
    """One row of the table: all, per data source, per organ, per organ and data source ("kidney Hubmap")."""
    row = {"all": result["dice"]}
    row.update({s: result.get("per_data_source", {}).get(s, np.nan) for s in DATA_SOURCES})
    row.update({o: result["per_organ"].get(o, np.nan) for o in ORGANS})
    cells = result.get("per_organ_source", {})
    row.update({f"{o} {s}": cells.get(f"{o}/{s}", np.nan) for o in ORGANS for s in DATA_SOURCES})
    return row


def optimizer_steps(recipe: str, folder: Path) -> int | None:
    """Optimizer steps a run made: metrics.json's steps (fastai) or trained_iters (mmseg), the plain loop's
    config.json train.steps."""
    if recipe == "plain":
        return json.loads((folder / "config.json").read_text()).get("train", {}).get("steps")
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics.get("steps", metrics.get("trained_iters"))


def _markdown(df: pd.DataFrame, cols: list[str]) -> list[str]:
    mean, std = df.groupby("recipe")[cols].mean(), df.groupby("recipe")[cols].std(ddof=0)
    lines = ["| recipe (seeds) | steps | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for recipe in mean.index:
        runs = df[df["recipe"] == recipe]
        steps = runs["steps"].dropna()
        step_cell = f"{steps.min():.0f}-{steps.max():.0f}" if len(steps) else "?"
        cells = [f"{mean.loc[recipe, c]:.3f} ± {std.loc[recipe, c]:.3f}" for c in cols]
        lines.append(f"| {recipe} ({len(runs)}) | {step_cell} | " + " | ".join(cells) + " |")
    if {"ours", "plain"} <= set(mean.index):
        ratio = mean.loc["ours"] / mean.loc["plain"]
        lines.append("| ours / plain | | " + " | ".join(f"{ratio[c]:.2f}" for c in cols) + " |")
    return lines


def table(rows: list[dict]) -> str:
    """Markdown tables of mean +- std over seeds per recipe (all, per source, per organ; then per organ x source),
    with the optimizer steps each made and the ratio of means ours / plain."""
    df = pd.DataFrame(rows)
    main = _markdown(df, ["all", *DATA_SOURCES, *ORGANS])
    by_source = _markdown(df, [f"{o} {s}" for o in ORGANS for s in DATA_SOURCES])
    return "\n".join([*main, "", "Per organ and data source:", "", *by_source])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("benchmarks_out/recipe"))
    ap.add_argument("--config", default="unet_r18_cpu", help="fastai experiment (name or file): 'ours'")
    ap.add_argument("--also", nargs="*", default=[], help="more fastai experiments trained alongside (ablations)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training minutes per model and seed")
    ap.add_argument("--seeds", type=int, default=3)
    add_data_arguments(ap)
    ap.add_argument("--mmseg", nargs="*", default=None, help="also train these mmseg configs (stems under "
                    f"train/configs/mmseg; none given: {MMSEG_CONFIG.stem}) alongside")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    name, cfg = load_config(args.config)
    data, tiles = prepare(args, [float(cfg.pixel_size), *(float(load_config(c)[1].pixel_size) for c in args.also)])
    py, rows = sys.executable, []
    fastai_runs = {"ours": args.config, **{load_config(c)[0]: c for c in args.also}}
    mmseg_runs = {} if args.mmseg is None else {
        Path(c).stem: MMSEG_CONFIG.parent / f"{Path(c).stem}.py" for c in (args.mmseg or [MMSEG_CONFIG.stem])}
    for seed in range(args.seeds):
        base = args.work / f"seed{seed}"
        folders = {recipe: base / recipe / load_config(c)[0] / "fold-1" for recipe, c in fastai_runs.items()}
        folders["plain"] = base / "plain" / "fold-1"
        for recipe in mmseg_runs:
            folders[recipe] = base / "mmseg" / recipe / "fold-1"
        commands = {
            recipe: [py, "-m", "train.fastai_unet", "--config", c, "--fold", "-1", "--tiles", str(tiles), "--out",
                     str(base / recipe), "--minutes", str(args.minutes), "--seed", str(seed)]
            for recipe, c in fastai_runs.items()
        }
        commands["plain"] = [py, str(REPO / "benchmarks/plain_loop.py"), "--data-dir", str(data), "--out",
                             str(folders["plain"]), "--minutes", str(args.minutes), "--seed", str(seed),
                             "--pixel-size", f"{cfg.pixel_size:g}", "--tile", str(cfg.tile_size)]
        for recipe, config in mmseg_runs.items():
            commands[recipe] = [py, "-m", "train.mmseg_train", "--config", str(config), "--fold", "-1",
                                "--tiles", str(tiles), "--out", str(base / "mmseg"), "--minutes",
                                str(args.minutes), "--cfg-options", f"randomness.seed={seed}"]
        procs = {
            recipe: (run(command, base / f"{recipe}.log", threads=1), base / f"{recipe}.log")
            for recipe, command in commands.items()
            if not (folders[recipe] / ("config.json" if recipe == "plain" else "metrics.json")).is_file()
        }
        start = time.perf_counter()
        if procs:
            print(f"seed {seed}: training {', '.join(procs)} side by side for {args.minutes} min each", flush=True)
            wait_all(procs)
            print(f"seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        for recipe, folder in folders.items():
            result = predict_and_score([folder], data, base / f"{recipe}_submission.csv")
            rows.append({"recipe": recipe, "seed": seed, "steps": optimizer_steps(recipe, folder), **columns(result)})
            print(f"seed {seed} {recipe}: Dice {result['dice']:.4f}", flush=True)
    report = table(rows)
    (args.work / "results.json").write_text(json.dumps({"config": name, "minutes": args.minutes, "rows": rows}, indent=2))
    print(f"\n{name} vs the plain loop, {args.minutes:g} min each, {args.seeds} seed(s), test set of {data}:\n{report}")


if __name__ == "__main__":
    main()
