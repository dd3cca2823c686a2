"""Real tissue decides: stain-robust techniques on real DAB -> PAS kidney and real H&E colon, beside the plain loop.

    python benchmarks/real_tissue.py [--track kidney|glas] [--work benchmarks_out/real_tissue] [--seeds 3]
        [--minutes 14] [--entry LABEL=CONFIG[@ceiling|@pseudo:TEACHER] ...] [--predict LABEL[@mixed][:ENTRY,...]="FLAGS" ...]
        [--realdata DIR]

Data (../shared/realdata, imported with data_prep.import_annotations; the benchmark stops with a reason where it is
absent):
  kidney  train: the 5 real DAB + hematoxylin kidney images (kidney_ihc_dab, ImageJ ROIs, 35 glomeruli, HPA stain,
          0.662 um/px). The 58 real HuBMAP PAS kidney tiles (kidney_pas_hubmap, LabelMe, 0.5 um/px) are split by
          tile-number block: tiles <= 66 (slide rows 0-4) are the target block (their images, unlabeled, are the
          reference images of stain copies, histogram matching and FDA; labelled, they train the in-domain
          ceiling), tiles >= 75 the test block (scored, never seen in training). The "mixed" test set adds the
          20 GlaS testB H&E colon images as Hubmap large intestine to the test block, for AdaBN grouped per
          (source, organ) against pooled per source; only its kidney cell is read.
  glas    train: the 85 GlaS train H&E colon images, test: the 20 testB images (0.62 um/px, large intestine): no
          stain shift, a real-texture check that stain robustness costs nothing where there is none (no target
          images: entries that need them belong to the kidney track).
Entries (all of one seed train side by side, one thread each, for --minutes of wall time, so each gets the same
share of the machine): LABEL=CONFIG is a fastai experiment (train/configs/fastai) trained on the track's train set
(configs whose augmentation needs reference images get the target block), LABEL=CONFIG@ceiling the same on the
labelled target block (in-domain), LABEL=CONFIG@pseudo:TEACHER the same on the train set plus the target block
pseudo-labelled by the TEACHER entry's model of the same seed (train.pseudo_label with AdaBN; trained beside the others
once the teacher is finished: its compute is the teacher's plus its own), LABEL=plain the plain loop
(benchmarks/plain_loop.py, at the first fastai entry's um/px, crop and encoder). Every model predicts the test set as
trained (inference.predict --adapt-bn off), and with each --predict variant (the kernel's own code and settings;
`:ENTRY,...` limits a variant to those entries, `@mixed` predicts the mixed test set); Dice per organ and source,
mean +- std over seeds, the optimizer steps each made, the ratio to the ceiling and to the plain loop, and
predicted / true FTU area. Writes
WORK/<track>/results.json, results.md and overlays of seed 0 (inference.overlay: predicted cyan, true yellow).
Finished trainings and predictions are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import recipe  # noqa: E402
from domain_curves import area_ratios, parse_pairs, predict  # noqa: E402

from inference.score import score  # noqa: E402
from inference.tables import load_solution, load_submission  # noqa: E402
from train.configs.fastai.base import load_config  # noqa: E402

REALDATA = REPO.parent / "shared" / "realdata"
TARGET_BLOCK_MAX = 66  # PAS tiles numbered <= 66 are the target block, >= 75 the test block (no tile in between)
KIDNEY_ENTRIES = (
    "plain=plain", "ceiling=unet_mnv3_steps@ceiling", "flips=unet_mnv3_steps", "colour=unet_mnv3_steps_colour",
    "hema=unet_mnv3_steps_hema", "hema+colour=unet_mnv3_steps_hema_colour", "histmatch=unet_mnv3_steps_histmatch",
    "fda=unet_mnv3_steps_fda", "copies=unet_mnv3_steps_copies", "grey=unet_mnv3_steps_grey",
    "stain=unet_mnv3_steps_stain", "pseudo=unet_mnv3_steps@pseudo:flips",
)
GLAS_ENTRIES = (
    "plain=plain", "flips=unet_mnv3_steps", "colour=unet_mnv3_steps_colour", "hema=unet_mnv3_steps_hema",
    "hema+colour=unet_mnv3_steps_hema_colour",
)
# stain TTA (a Macenko pass per view and image) and the mixed test set cost minutes per model on a loaded 2-core
# machine: the recipe's own entry only
KIDNEY_PREDICT = (
    "adabn=--adapt-bn", "staintta:flips=--stain-reference {stain_reference} --stain-tta",
    "adabn@mixed:flips=--adapt-bn", "adabn-pooled@mixed:flips=--adapt-bn --adapt-bn-groups source",
)
GLAS_PREDICT = ("adabn=--adapt-bn",)
# the "entry" rows: each model as trained. inference.predict's default (--adapt-bn unseen) is the "+ adabn" row on the
# kidney track (DAB-trained models meet Hubmap PAS) and the as-trained row on GlaS (trained on its own source)
AS_TRAINED = ("--adapt-bn", "off")
REFERENCE_AUGMENTS = ("+histmatch", "+fda")


@dataclass
class Entry:
    """One benchmark entry: a fastai config or the plain loop, on the track's train set or the ceiling's."""

    label: str
    config: str  # fastai experiment name, or "plain"
    ceiling: bool = False
    teacher: str | None = None  # @pseudo:TEACHER: also trains on the target block pseudo-labelled by that entry


def kidney_items(realdata: Path) -> tuple[list, list, list]:
    """(DAB train items, PAS target-block items, PAS test-block items) for data_prep.import_annotations."""
    from data_prep.import_annotations import Item

    dab = sorted((realdata / "kidney_ihc_dab").glob("*.jpg"))
    pas = sorted((realdata / "kidney_pas_hubmap").glob("*.jpg"), key=lambda p: int(p.stem))
    pairs = lambda paths, suffix: [Item(p, p.with_name(p.stem + suffix)) for p in paths]  # noqa: E731
    target = [p for p in pas if int(p.stem) <= TARGET_BLOCK_MAX]
    test = [p for p in pas if int(p.stem) > TARGET_BLOCK_MAX]
    return pairs(dab, ".roi.zip"), pairs(target, ".json"), pairs(test, ".json")


def glas_items(realdata: Path, prefix: str) -> list:
    """GlaS (image, mask) items whose names start with prefix ("train_" or "testB_")."""
    from data_prep.import_annotations import Item

    images = sorted(p for p in (realdata / "glas").glob(f"{prefix}*.png") if not p.stem.endswith("_anno"))
    return [Item(p, p.with_name(p.stem + "_anno.png"), format="mask") for p in images]


def build_data(track: str, realdata: Path, work: Path) -> dict[str, Path]:
    """The track's competition-layout data folders (imported once): train, ceiling, test sets, targets."""
    from data_prep.import_annotations import Item
    from data_prep.import_annotations import import_items as importer

    import_items = partial(importer, progress=False)
    done = work / "data.json"
    if done.is_file():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    kidney_pas = dict(organ="kidney", data_source="Hubmap", pixel_size=0.5, stain="PAS")
    if track == "kidney":
        dab, target, test = kidney_items(realdata)
        dab_meta = dict(organ="kidney", data_source="HPA", pixel_size=0.662, stain="DAB")
        folders = {"train": work / "data", "ceiling": work / "ceiling", "mixed": work / "mixed"}
        import_items(dab, folders["train"], split="train", meta=dab_meta)
        import_items(test, folders["train"], split="test", meta=kidney_pas)
        import_items([Item(i.image) for i in target], folders["train"], split="targets", meta=kidney_pas)
        import_items(target, folders["ceiling"], split="train", meta=kidney_pas)
        import_items(test, folders["ceiling"], split="test", meta=kidney_pas)
        import_items(test, folders["mixed"], split="test", meta=kidney_pas)
        import_items(glas_items(realdata, "testB_"), folders["mixed"], split="test",
                     meta=dict(organ="largeintestine", data_source="Hubmap", pixel_size=0.62, stain="H&E"))
    else:
        glas = dict(organ="largeintestine", data_source="Hubmap", pixel_size=0.62, stain="H&E")
        folders = {"train": work / "data"}
        import_items(glas_items(realdata, "train_"), folders["train"], split="train", meta=glas)
        import_items(glas_items(realdata, "testB_"), folders["train"], split="test", meta=glas)
    done.write_text(json.dumps({k: str(v) for k, v in folders.items()}))
    return folders


def tile_set(folder: Path, work: Path, pixel_sizes: list[float], copies: bool) -> Path:
    """recipe.prepare's folds and whole-image tile set for one train folder (and stain copies towards targets)."""
    args = argparse.Namespace(data_dir=folder, work=work, extra_data=[])
    _, tiles = recipe.prepare(args, pixel_sizes)
    if copies:
        subprocess.run([sys.executable, "-m", "data_prep.stain_copies", "--tiles", str(tiles), "--targets",
                        str(folder / "targets"), "--copies", "2"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return tiles


def pseudo_tiles(entry: Entry, teacher: Path, seed: int, args: argparse.Namespace, data: dict[str, Path],
                 sizes: list[float]) -> Path:
    """The track's tile set plus the target block pseudo-labelled by the teacher's model (train.pseudo_label with
    inference.predict's defaults and AdaBN), built once per entry and seed.

    --adapt-bn all: every target is Hubmap PAS, which a DAB (HPA) teacher never saw, so it is the default `unseen`
    here, and it also adapts teachers trained before config.json recorded data_sources."""
    work = args.work / f"seed{seed}" / entry.label
    labels = work / "pseudo_labels"
    if not (labels / "train.csv").is_file():
        targets = data["train"] / "targets"
        subprocess.run([sys.executable, "-m", "train.pseudo_label", "--images", str(targets), "--table",
                        str(targets / "targets.csv"), "--models", str(teacher), "--out", str(labels),
                        "--adapt-bn", "all", "--device", "cpu"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    args = argparse.Namespace(data_dir=data["train"], work=work, extra_data=[labels])
    return recipe.prepare(args, sizes)[1]


def train_commands(entries: list[Entry], seed: int, args: argparse.Namespace, tiles: dict[str, Path],
                   data: dict[str, Path]) -> dict[str, tuple[list[str], Path]]:
    """label -> (command, checkpoint folder) of every entry at one seed (a pseudo entry's tiles: pseudo_tiles)."""
    py, base = sys.executable, args.work / f"seed{seed}"
    first = next(load_config(e.config)[1] for e in entries if e.config != "plain")
    out = {}
    for e in entries:
        where = "ceiling" if e.ceiling else "train"
        if e.config == "plain":
            folder = base / e.label / "fold-1"
            command = [py, str(REPO / "benchmarks/plain_loop.py"), "--data-dir", str(data[where]), "--out",
                       str(folder), "--minutes", f"{args.minutes:g}", "--seed", str(seed), "--pixel-size",
                       f"{first.pixel_size:g}", "--tile", str(first.tile_size), "--encoder", first.encoder,
                       "--batch-size", str(first.bs)]
        else:
            name, cfg = load_config(e.config)
            folder = base / e.label / name / "fold-1"
            entry_tiles = base / e.label / "tiles" if e.teacher else tiles[where]
            command = [py, "-m", "train.fastai_unet", "--config", e.config, "--fold", "-1", "--tiles",
                       str(entry_tiles), "--out", str(base / e.label), "--minutes", f"{args.minutes:g}", "--seed",
                       str(seed)]
            if cfg.augment.endswith(REFERENCE_AUGMENTS):
                command += ["--histmatch-targets", str(data["train"] / "targets")]
        out[e.label] = (command, folder)
    return out


def test_folder(data: dict[str, Path], testset: str) -> Path:
    """The data folder whose test.csv / test_solution.csv a test set names ("test": the track's own)."""
    return data["train"] if testset == "test" else data[testset]


def steps_of(entry: Entry, folder: Path) -> int | None:
    """Optimizer steps a finished run made."""
    return recipe.optimizer_steps("plain" if entry.config == "plain" else "ours", folder)


@dataclass
class Variant:
    """An inference.predict variant: its flags, the test set it predicts, the entries it applies to (None: all)."""

    flags: list[str]
    testset: str = "test"
    entries: tuple[str, ...] | None = None


def variants_of(entry: Entry, variants: dict[str, Variant]) -> dict[str, Variant]:
    """The as-trained prediction ("", saved as default.csv: AdaBN off, whatever inference.predict's default is) and
    every variant that applies to this entry."""
    return {"": Variant(list(AS_TRAINED)), **{k: v for k, v in variants.items() if v.entries is None or entry.label in v.entries}}


def scored_rows(entry: Entry, seed: int, folder: Path, variants: dict[str, Variant],
                data: dict[str, Path]) -> list[dict]:
    """Scores of every prediction of one trained model: the default and each variant, on its test set."""
    rows = []
    predictions = folder.parent / "predictions"
    for variant, spec in variants_of(entry, variants).items():
        testset = spec.testset
        path = predictions / f"{variant or 'default'}.csv"
        if not path.is_file():  # --collect-only before every prediction is made
            continue
        solution = test_folder(data, testset) / "test_solution.csv"
        result = score(load_submission(path), load_solution(solution))
        cells = {k: v for k, v in result.get("per_organ_source", {}).items()}
        areas = area_ratios(path, solution)
        rows.append({"entry": entry.label + (f" + {variant.partition('@')[0]}" if variant else ""), "seed": seed,
                     "steps": steps_of(entry, folder), "testset": testset, "dice": result["dice"],
                     **cells, **{f"area {k}": v for k, v in areas.items()}})
    return rows


def run_seed(seed: int, entries: list[Entry], args: argparse.Namespace, tiles: dict[str, Path],
             data: dict[str, Path], variants: dict[str, Variant]) -> list[dict]:
    """Train every entry of one seed side by side, then predict each with every variant (--parallel at a time).

    A pseudo entry trains beside the others when its teacher is finished, else in a second round after it."""
    commands = train_commands(entries, seed, args, tiles, data)
    base = args.work / f"seed{seed}"
    todo = [e for e in entries if not finished(e, commands[e.label][1])]
    while todo:
        ready = [e for e in todo if e.teacher is None or finished(by_label(entries, e.teacher),
                                                                   commands[e.teacher][1])]
        if not ready:
            raise SystemExit(f"seed {seed}: the teachers of {[e.label for e in todo]} cannot be trained")
        for e in ready:
            if e.teacher is not None:
                pseudo_tiles(e, commands[e.teacher][1], seed, args, data, pixel_sizes(entries))
        procs = {e.label: (recipe.run(commands[e.label][0], base / f"{e.label}.log", threads=1),
                           base / f"{e.label}.log") for e in ready}
        began = time.perf_counter()
        print(f"seed {seed}: training {', '.join(procs)} side by side, {args.minutes:g} min each", flush=True)
        recipe.wait_all(procs)
        print(f"seed {seed}: trained in {time.perf_counter() - began:.0f} s", flush=True)
        todo = [e for e in todo if e not in ready]
    jobs = []
    for e in entries:
        folder = commands[e.label][1]
        predictions = folder.parent / "predictions"
        predictions.mkdir(parents=True, exist_ok=True)
        for variant, spec in variants_of(e, variants).items():
            out = predictions / f"{variant or 'default'}.csv"
            jobs.append((folder, test_folder(data, spec.testset), out, spec.flags,
                         predictions / f"{variant or 'default'}.log"))
    with ThreadPoolExecutor(args.parallel) as pool:
        for future in [pool.submit(predict, *job) for job in jobs]:
            future.result()
    rows = []
    for e in entries:
        rows += scored_rows(e, seed, commands[e.label][1], variants, data)
    print(f"seed {seed}: predicted and scored {len(jobs)} submissions", flush=True)
    return rows


def by_label(entries: list[Entry], label: str) -> Entry:
    return next(e for e in entries if e.label == label)


def pixel_sizes(entries: list[Entry]) -> list[float]:
    """The um/px every fastai entry trains at (the tile sets hold whole images scaled to each)."""
    return sorted({float(load_config(e.config)[1].pixel_size) for e in entries if e.config != "plain"})


def finished(entry: Entry, folder: Path) -> bool:
    """A run folder holds a finished model: the plain loop's config.json, a fastai run's metrics.json."""
    return (folder / ("config.json" if entry.config == "plain" else "metrics.json")).is_file()


def table(df: pd.DataFrame, cell: str, ceiling: str | None, plain: str = "plain") -> str:
    """Markdown: one row per entry (+ variant): seeds, steps, Dice of `cell` mean +- std, ratios, area."""
    lines = [f"| entry | seeds | steps | {cell} Dice | / ceiling | / plain | predicted / true area |",
             "|---|---|---|---|---|---|---|"]
    means = df.groupby("entry", sort=False)[cell].mean()
    for entry, group in df.groupby("entry", sort=False):
        steps = group["steps"].dropna()
        step_cell = f"{steps.min():.0f}-{steps.max():.0f}" if len(steps) else "?"
        ratio_ceiling = f"{means[entry] / means[ceiling]:.2f}" if ceiling in means and means[ceiling] else ""
        ratio_plain = f"{means[entry] / means[plain]:.2f}" if plain in means and means[plain] else ""
        area = group.get(f"area {cell}", pd.Series(dtype=float)).mean()
        lines.append(f"| {entry} | {len(group)} | {step_cell} | {group[cell].mean():.3f} ± "
                     f"{group[cell].std(ddof=0):.3f} | {ratio_ceiling} | {ratio_plain} | {area:.2f} |")
    return "\n".join(lines)


def overlays(entries: list[Entry], args: argparse.Namespace, tiles: dict[str, Path], data: dict[str, Path],
             labels: list[str]) -> None:
    """inference.overlay PNGs of seed 0's default predictions for some entries (predicted cyan, true yellow)."""
    commands = train_commands(entries, 0, args, tiles, data)
    for label in labels:
        submission = commands[label][1].parent / "predictions" / "default.csv"
        if not submission.is_file():
            continue
        subprocess.run([sys.executable, "-m", "inference.overlay", "--data-dir", str(data["train"]), "--submission",
                        str(submission), "--solution", str(data["train"] / "test_solution.csv"), "--out",
                        str(args.work / "overlays" / label), "--png-max-side", "800"], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/real_tissue.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", choices=("kidney", "glas"), default="kidney")
    ap.add_argument("--work", type=Path, default=Path("benchmarks_out/real_tissue"))
    ap.add_argument("--realdata", type=Path, default=REALDATA, help="the real tissue folder (../shared/realdata)")
    ap.add_argument("--entry", action="append", help="LABEL=CONFIG, LABEL=CONFIG@ceiling, "
                    "LABEL=CONFIG@pseudo:TEACHER or LABEL=plain "
                    "(default: the track's list in this file)")
    ap.add_argument("--predict", action="append", help="LABEL[@mixed][:ENTRY,...]=FLAGS: inference.predict variants "
                    "({stain_reference}: the train images' stain, python -m inference.stain)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=14.0, help="training wall minutes per model (side by side)")
    ap.add_argument("--parallel", type=int, default=2, help="predictions at a time, one thread each")
    ap.add_argument("--collect-only", action="store_true", help="train and predict nothing: tabulate what is done")
    ap.add_argument("--first-seed", type=int, default=0, help="start at this seed (run seeds in parallel processes)")
    ap.add_argument("--reuse-tiles", action="store_true", help="use the tile sets an earlier run built, as they are "
                    "(processes running side by side must not rebuild them)")
    args = ap.parse_args(argv)
    if not args.realdata.is_dir():
        print(f"skipped: the real tissue folder {args.realdata} is absent (../shared/realdata)")
        return
    args.work = (args.work / args.track).resolve()
    entries = []
    for label, value in parse_pairs(args.entry or list(KIDNEY_ENTRIES if args.track == "kidney" else GLAS_ENTRIES),
                                    "--entry", ap).items():
        config, _, where = value.partition("@")
        kind, _, teacher = where.partition(":")
        if kind not in ("", "ceiling", "pseudo") or bool(teacher) != (kind == "pseudo"):
            ap.error(f"--entry {label}={value}: only @ceiling or @pseudo:TEACHER may follow the config")
        entries.append(Entry(label, config, kind == "ceiling", teacher or None))
    labels = {e.label for e in entries}
    for e in entries:
        if e.ceiling and args.track != "kidney":
            ap.error("@ceiling entries belong to the kidney track (GlaS trains in its own domain)")
        if e.teacher is not None and (args.track != "kidney" or e.teacher not in labels or e.config == "plain"
                                      or by_label(entries, e.teacher).teacher is not None):
            ap.error(f"--entry {e.label}: @pseudo:TEACHER needs the kidney track's target block, a fastai config "
                     f"and a TEACHER among the other entries that is not itself a pseudo entry, got {e.teacher!r}")
        if e.config != "plain":
            load_config(e.config)
    data = build_data(args.track, args.realdata, args.work)
    reference = args.work / "stain_reference.json"
    if not reference.is_file():
        subprocess.run([sys.executable, "-m", "inference.stain", "--images", str(data["train"] / "train_images"),
                        "--out", str(reference)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    variants = {}
    for label, flags in parse_pairs(args.predict or list(KIDNEY_PREDICT if args.track == "kidney"
                                                         else GLAS_PREDICT), "--predict", ap).items():
        label, _, only = label.partition(":")
        testset = label.partition("@")[2] or "test"
        if testset != "test" and testset not in data:
            ap.error(f"--predict {label}: no test set {testset!r} on track {args.track}")
        entries_only = tuple(only.split(",")) if only else None
        unknown = sorted(set(entries_only or ()) - {e.label for e in entries})
        if unknown:
            ap.error(f"--predict {label}: no entry {unknown}")
        variants[label] = Variant(shlex.split(flags.format(stain_reference=reference)), testset, entries_only)
    sizes = pixel_sizes(entries)
    copies = any(load_config(e.config)[1].stain_copy_share > 0 for e in entries if e.config != "plain")
    if args.collect_only or args.reuse_tiles:  # the tile sets' paths only
        tiles = {"train": args.work / "train" / "tiles", "ceiling": args.work / "ceiling" / "tiles"}
    else:
        tiles = {"train": tile_set(data["train"], args.work / "train", sizes, copies)}
        if "ceiling" in data and any(e.ceiling for e in entries):
            tiles["ceiling"] = tile_set(data["ceiling"], args.work / "ceiling", sizes, False)
    rows = []
    for seed in range(args.first_seed, args.seeds):
        if args.collect_only:
            commands = train_commands(entries, seed, args, tiles, data)
            for e in entries:
                rows += scored_rows(e, seed, commands[e.label][1], variants, data)
        else:
            rows += run_seed(seed, entries, args, tiles, data, variants)
    df = pd.DataFrame(rows)
    cell = "kidney/Hubmap" if args.track == "kidney" else "largeintestine/Hubmap"
    ceiling = next((e.label for e in entries if e.ceiling), None)
    report = [f"# Real tissue, {args.track} track: {args.seeds} seed(s), {args.minutes:g} min of training per model "
              f"(all entries of a seed side by side, one thread each, on this machine)", "",
              table(df[df["testset"] == "test"], cell, ceiling)]
    mixed = df[df["testset"] == "mixed"]
    if len(mixed):
        report += ["", "Mixed test set (PAS kidney test block + GlaS testB as Hubmap large intestine), kidney rows:",
                   "", table(mixed, "kidney/Hubmap", None)]
    text = "\n".join(report)
    (args.work / "results.md").write_text(text + "\n")
    (args.work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "rows": df.replace({np.nan: None}).to_dict("records")},
                                                       indent=1))
    overlays(entries, args, tiles, data, [e.label for e in entries])
    print(f"\n{text}\n\nwrote {args.work / 'results.md'}, results.json and overlays/")


if __name__ == "__main__":
    main()
