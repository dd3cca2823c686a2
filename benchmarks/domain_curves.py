"""HPA and Hubmap Dice against optimizer steps, per organ, for several recipes over seeds: when does augmentation pay?

    python benchmarks/domain_curves.py [--work benchmarks_out/curves] [--data real-masks | --data demo | --data-dir D]
        [--entry flips=unet_mnv3_steps --entry stain=unet_mnv3_steps_stain --entry plain=plain ...]
        [--predict stainref="--stain-reference {stain_reference}" ...] [--train-flags LABEL="FLAGS" ...]
        [--tiles-hook "COMMAND {tiles} {data}"] [--seeds 3] [--save-at 250,500,1000,1500] [--parallel 2]

An entry is LABEL=CONFIG[@SEEDS]: a fastai experiment (train/configs/fastai, trained by benchmarks/step_snapshots.py with
--fold -1, checkpoint folders kept after each --save-at step) or `plain` (benchmarks/plain_loop.py for the last
--save-at step count, at the first fastai entry's um/px, crop size and encoder); @SEEDS trains that entry on
fewer seeds than --seeds, after every full entry's jobs. A --predict LABEL=FLAGS adds
inference.predict flags as one more row per entry, scored at the last step ({stain_reference} is a reference fitted
with python -m inference.stain on the train images; {data} the data folder). --train-flags LABEL=FLAGS appends
trainer flags to one fastai entry (e.g. extra pseudo-labelled data); --tiles-hook runs a command on the built tile
set before training, after every rebuild (e.g. adding offline stain-transferred copies; {tiles}, {data} are
filled in). So a new
training technique is one more --entry (its config), and an inference technique one more --predict (its flag).

Jobs (entry x seed, seed-major so that an interrupted benchmark has every entry at seed 0 first) run --parallel at
a time, one thread each; each job trains, then predicts every snapshot on the test set with inference.predict's
defaults (and, for real-mask data, the last one also on DATA/swap: the same test masks with the other source's
stain, which separates the stain shift from the scale shift). Finished trainings and predictions are reused.
Prints the last-step table (mean +- std over seeds, HPA and Hubmap per organ, steps stated), writes
WORK/results.json and WORK/domain_curves.png (HPA and Hubmap Dice per organ against steps, one line per entry).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import recipe  # noqa: E402

from inference.organs import DATA_SOURCES, ORGANS  # noqa: E402
from inference.rle import decode  # noqa: E402
from inference.score import score  # noqa: E402
from inference.tables import load_solution, load_submission  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402

DEFAULT_ENTRIES = ("flips=unet_mnv3_steps", "stain=unet_mnv3_steps_stain", "plain=plain")
COLUMNS = ("all", *DATA_SOURCES, *(f"{o}/{s}" for o in ORGANS for s in DATA_SOURCES))


@dataclass
class Job:
    """One entry at one seed: the commands to train it, and the checkpoint folders it leaves by step."""

    entry: str
    seed: int
    folder: Path  # the run folder (config.json + model.pth when finished)
    train: list[str]
    log: Path
    snapshots: dict[int, Path] = field(default_factory=dict)


def parse_pairs(values: list[str], what: str, ap: argparse.ArgumentParser) -> dict[str, str]:
    """LABEL=VALUE strings as an ordered dict; a malformed or repeated label is a usage error."""
    pairs: dict[str, str] = {}
    for value in values:
        label, sep, rest = value.partition("=")
        if not sep or not label or not rest:
            ap.error(f"{what} must be LABEL=VALUE, got {value!r}")
        if label in pairs:
            ap.error(f"{what} label {label!r} given twice")
        pairs[label] = rest
    return pairs


def split_seeds(entries: dict[str, str], seeds: int, ap: argparse.ArgumentParser) -> dict[str, tuple[str, int]]:
    """CONFIG[@SEEDS] values as (config, seeds), at most --seeds."""
    out = {}
    for label, value in entries.items():
        config, _, n = value.partition("@")
        try:
            out[label] = (config, min(seeds, int(n)) if n else seeds)
        except ValueError:
            ap.error(f"--entry {label}: @SEEDS must be an integer, got {value!r}")
    return out


def make_jobs(
    args: argparse.Namespace, entries: dict[str, tuple[str, int]], tiles: Path, data: Path, flags: dict[str, list[str]]
) -> list[Job]:
    """Every (entry, seed) job, seed-major; entries on fewer seeds than --seeds after all the others."""
    py, last = sys.executable, max(args.save_at)
    fastai = {label: load_config(c) for label, (c, _) in entries.items() if c != "plain"}
    first = next(iter(fastai.values()))[1] if fastai else load_config("unet_mnv3_steps")[1]
    order = sorted(((seed + (args.seeds if n < args.seeds else 0), i, seed, label)
                    for i, (label, (_, n)) in enumerate(entries.items()) for seed in range(n)))
    jobs = []
    for *_, seed, label in order:
        config = entries[label][0]
        base = args.work / f"seed{seed}" / label
        if config == "plain":
            folder = base / "fold-1"
            train = [py, str(REPO / "benchmarks/plain_loop.py"), "--data-dir", str(data), "--out", str(folder),
                     "--steps", str(last), "--save-at", ",".join(map(str, args.save_at)), "--seed", str(seed),
                     "--pixel-size", f"{first.pixel_size:g}", "--tile", str(first.tile_size), "--encoder",
                     first.encoder, "--batch-size", str(first.bs)]
        else:
            name, cfg = fastai[label]
            if cfg.epochs * (cfg.batches_per_epoch or 0) != last or cfg.minutes is not None:
                raise SystemExit(f"entry {label}: config {name} must train exactly {last} steps by count "
                                 f"(epochs x batches_per_epoch, minutes None) to match --save-at")
            folder = base / name / "fold-1"
            train = [py, str(REPO / "benchmarks/step_snapshots.py"), "--save-at",
                     ",".join(map(str, args.save_at)), "--", "--config", config, "--fold", "-1", "--tiles",
                     str(tiles), "--out", str(base), "--seed", str(seed), *flags.get(label, [])]
        job = Job(label, seed, folder, train, base.with_suffix(".log"))
        job.snapshots = {s: folder / "snapshots" / f"step{s}" for s in args.save_at}
        jobs.append(job)
    return jobs


def predict(models: Path, data: Path, out: Path, flags: list[str], log: Path) -> None:
    """inference.predict of one checkpoint folder on data's test set (skipped when out exists)."""
    if out.is_file():
        return
    command = [sys.executable, "-m", "inference.predict", "--data-dir", str(data), "--models", str(models),
               "--out", str(out), *flags]
    with log.open("a") as handle:
        proc = recipe.run(command, log.with_suffix(".predict.log"), threads=1)
        if proc.wait() != 0:
            raise SystemExit(f"{' '.join(command)} failed; see {log.with_suffix('.predict.log')}")
        handle.write(f"predicted {out}\n")


def run_job(job: Job, data: Path, variants: dict[str, list[str]]) -> None:
    """Train (unless finished), then predict every snapshot, the predict variants and the stain-swapped test set."""
    if not (job.folder / "config.json").is_file() or not all((p / "model.pth").is_file() for p in job.snapshots.values()):
        proc = recipe.run(job.train, job.log, threads=1)
        if proc.wait() != 0:
            raise SystemExit(f"{job.entry} seed {job.seed} failed; last lines of {job.log}:\n"
                             f"{job.log.read_text()[-3000:]}")
    out = job.folder.parent / "predictions"
    out.mkdir(exist_ok=True)
    last = max(job.snapshots)
    for step, folder in job.snapshots.items():
        predict(folder, data, out / f"step{step}.csv", [], job.log)
    for label, flags in variants.items():
        predict(job.snapshots[last], data, out / f"step{last}_{label}.csv", flags, job.log)
    if (data / "swap" / "test_solution.csv").is_file():
        predict(job.snapshots[last], data / "swap", out / f"step{last}_swap.csv", [], job.log)
    print(f"done: {job.entry} seed {job.seed}", flush=True)


def row(result: dict) -> dict[str, float]:
    """all, per source and per organ x source of one score() result."""
    cells = {"all": result["dice"], **{s: result.get("per_data_source", {}).get(s, np.nan) for s in DATA_SOURCES}}
    cells.update({k: result.get("per_organ_source", {}).get(k, np.nan) for k in COLUMNS[3:]})
    return cells


def area_ratios(submission: Path, solution: Path) -> dict[str, float]:
    """Predicted / true FTU pixels per organ x source (0: nothing found, > 1: over-segmentation)."""
    predicted = dict(zip(*load_submission(submission)[["id", "rle"]].T.values, strict=True))
    areas: dict[str, list[float]] = {}
    for r in load_solution(solution).itertuples(index=False):
        h, w = int(r.img_height), int(r.img_width)
        truth, pred = decode(r.rle, h, w).sum(), decode(predicted.get(r.id, ""), h, w).sum()
        sums = areas.setdefault(f"{r.organ}/{r.data_source}", [0.0, 0.0])
        sums[0] += pred
        sums[1] += truth
    return {k: p / t for k, (p, t) in areas.items() if t}


def collect(jobs: list[Job], data: Path, variants: dict[str, list[str]]) -> pd.DataFrame:
    """One row per (entry, seed, step, test set): the scores of every prediction on disk."""
    rows = []
    for job in jobs:
        out = job.folder.parent / "predictions"
        done = [s for s in job.snapshots if (out / f"step{s}.csv").is_file()]
        last = max(done, default=max(job.snapshots))  # the variants were predicted at the last step scored
        named = [(job.entry, "test", s, out / f"step{s}.csv", data) for s in job.snapshots]
        named += [(f"{job.entry}+{v}", "test", last, out / f"step{last}_{v}.csv", data) for v in variants]
        named.append((job.entry, "swap", last, out / f"step{last}_swap.csv", data / "swap"))
        for entry, testset, step, path, folder in named:
            if path.is_file():
                result = score(load_submission(path), load_solution(folder / "test_solution.csv"))
                rows.append({"entry": entry, "seed": job.seed, "step": step, "testset": testset, **row(result)})
                if step == last:
                    ratios = area_ratios(path, folder / "test_solution.csv")
                    rows[-1].update({f"area {k}": v for k, v in ratios.items()})
    return pd.DataFrame(rows)


def final_table(df: pd.DataFrame, testset: str = "test", step: int | None = None) -> str:
    """Markdown: rows entry (seeds, steps), columns all / HPA / Hubmap / organ x source, mean +- std over seeds.

    Each entry's last scored step, or `step` for every entry that has it (equal steps).
    """
    last = df[(df["testset"] == testset)]
    if step is None:
        last = last[last["step"] == last.groupby("entry")["step"].transform("max")]
    else:
        last = last[last["step"] == step]
    heads = ["all", "HPA", "Hubmap", "Hubmap / HPA", *(c.replace("/", " ") for c in COLUMNS[3:])]
    lines = ["| entry (seeds, steps) | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for entry, group in last.groupby("entry", sort=False):
        group = group.assign(ratio=group["Hubmap"] / group["HPA"])
        cols = ["all", "HPA", "Hubmap", "ratio", *COLUMNS[3:]]
        cells = [f"{group[c].mean():.3f} ± {group[c].std(ddof=0):.3f}" for c in cols]
        lines.append(f"| {entry} ({len(group)}, {int(group['step'].max())}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def area_table(df: pd.DataFrame) -> str:
    """Markdown: predicted / true FTU area per entry and organ x source at the last step, mean over seeds."""
    keys = [c for c in COLUMNS[3:] if f"area {c}" in df]
    last = df[df["step"] == df.groupby("entry")["step"].transform("max")]
    lines = ["| entry, test set | " + " | ".join(k.replace("/", " ") for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for (entry, testset), group in last.groupby(["entry", "testset"], sort=False):
        lines.append(f"| {entry}, {testset} | " + " | ".join(f"{group[f'area {k}'].mean():.2f}" for k in keys) + " |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    """HPA and Hubmap Dice per organ (and overall) against optimizer steps, mean +- std over seeds per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = df[(df["testset"] == "test") & ~df["entry"].str.contains("+", regex=False)]
    panels = ["all", *ORGANS]
    fig, axes = plt.subplots(len(DATA_SOURCES), len(panels), figsize=(3.2 * len(panels), 6), sharex=True, sharey=True)
    for i, source in enumerate(DATA_SOURCES):
        for j, panel in enumerate(panels):
            ax, column = axes[i, j], source if panel == "all" else f"{panel}/{source}"
            for entry, group in curves.groupby("entry", sort=False):
                stats = group.groupby("step")[column].agg(["mean", "std", "count"]).reset_index()
                line = ax.plot(stats["step"], stats["mean"], marker="o", label=f"{entry} ({stats['count'].max()})")
                ax.fill_between(stats["step"], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=line[0].get_color(), alpha=0.15)
            ax.set_title(f"{panel} / {source}", fontsize=9)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if i == len(DATA_SOURCES) - 1:
                ax.set_xlabel("optimizer steps")
            if j == 0:
                ax.set_ylabel("Dice")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Dice against optimizer steps (mean ± std over seeds; CPU benchmark)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/domain_curves.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("benchmarks_out/curves"))
    ap.add_argument("--entry", action="append", help=f"LABEL=CONFIG or LABEL=plain (default: {' '.join(DEFAULT_ENTRIES)})")
    ap.add_argument("--predict", action="append", default=[], help="LABEL=FLAGS: inference.predict flags, one more row")
    ap.add_argument("--train-flags", action="append", default=[], help="LABEL=FLAGS: more train.fastai_unet flags")
    ap.add_argument("--tiles-hook", help="command run once on the tile set before training ({tiles}, {data})")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--save-at", default="250,500,1000,1500", help="optimizer steps to score (the last = run length)")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time, one thread each")
    ap.add_argument("--table-steps", default="", help="comma-separated steps to also tabulate every entry at")
    ap.add_argument("--collect-only", action="store_true", help="train nothing: score, tabulate and plot what is done")
    recipe.add_data_arguments(ap)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    entries = split_seeds(parse_pairs(args.entry or list(DEFAULT_ENTRIES), "--entry", ap), args.seeds, ap)
    variants_text = parse_pairs(args.predict, "--predict", ap)
    train_flags = parse_pairs(args.train_flags, "--train-flags", ap)
    for label in train_flags:
        if label not in entries or entries[label][0] == "plain":
            ap.error(f"--train-flags {label}: not a fastai --entry label")
    try:
        args.save_at = sorted({int(s) for s in args.save_at.split(",")})
    except ValueError:
        ap.error(f"--save-at must be comma-separated integers, got {args.save_at!r}")
    for label, (config, _) in entries.items():
        if config != "plain":
            try:
                load_config(config)
            except FileNotFoundError as err:
                ap.error(f"--entry {label}: {err}")
    if args.seeds < 1 or args.parallel < 1:
        ap.error("--seeds and --parallel must be >= 1")
    pixel_sizes = [float(load_config(c)[1].pixel_size) for c, _ in entries.values() if c != "plain"] or [2.4]
    data, tiles = recipe.prepare(args, pixel_sizes)
    if args.tiles_hook:  # after every (re)build of the tile set, which rewrites its index
        subprocess.run(shlex.split(args.tiles_hook.format(tiles=tiles, data=data)), cwd=REPO, check=True)
    reference = args.work / "stain_reference.json"
    if any("{stain_reference}" in v for v in variants_text.values()) and not reference.is_file():
        subprocess.run([sys.executable, "-m", "inference.stain", "--images", str(data / "train_images"), "--out",
                        str(reference)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    variants = {k: shlex.split(v.format(stain_reference=reference, data=data)) for k, v in variants_text.items()}
    flags = {k: shlex.split(v.format(data=data, tiles=tiles)) for k, v in train_flags.items()}
    jobs = make_jobs(args, entries, tiles, data, flags)
    print(f"{len(jobs)} jobs ({len(entries)} entries, up to {args.seeds} seeds), {args.parallel} at a time, "
          f"scored after steps {args.save_at}; logs in {args.work}/seed*/", flush=True)
    if not args.collect_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            for future in [pool.submit(run_job, job, data, variants) for job in jobs]:
                future.result()
    df = collect(jobs, data, variants)
    (args.work / "results.json").write_text(json.dumps({"entries": {k: list(v) for k, v in entries.items()}, "predict": variants_text,
                                                        "save_at": args.save_at, "rows": df.to_dict("records")},
                                                       indent=1))
    plot(df, args.work / "domain_curves.png")
    print(f"\nlast step, test set of {data} (CPU figures):\n{final_table(df)}")
    for step in (int(s) for s in args.table_steps.split(",") if s):
        print(f"\nat step {step}, test set (CPU figures):\n{final_table(df, step=step)}")
    if (df["testset"] == "swap").any():
        print(f"\nsame masks with the other source's stain ({data / 'swap'}; Hubmap rows HPA-stained at the Hubmap "
              f"pixel size, HPA rows H&E-stained):\n{final_table(df, 'swap')}")
    print(f"\npredicted / true FTU area at the last step (0 = nothing found):\n{area_table(df)}")
    print(f"\nwrote {args.work / 'results.json'} and {args.work / 'domain_curves.png'}")


if __name__ == "__main__":
    main()
