"""Rehearse every GPU recipe on CPU, end to end, so no recipe reaches its first GPU user untried.

    python -m benchmarks.rehearse [--work rehearsal] [--configs NAME ...] [--steps 1] [--batch-size 1]
        [--sizes 160 3000 4500] [--demo-scale 1] [--whole-image-tiles] [--grad-checkpointing]
        [--mmseg-options KEY=VALUE ...] [--timeout-minutes 60] [--max-memory-gib G]
        [--markdown rehearsal/rehearsal.md] [--fresh] [--ci]
    make rehearse

On demo data at the competition's scale (data_prep.make_demo --scale 1: 3000 px images at their nominal pixel size,
so each tile set's pixel size, and the windows of the 3000 and 4500 px predictions, are a real run's), folds, tile
sets at each recipe's size with --scaled 0.8 whole images and one stain copy per image, all through their command
lines), each GPU config of both trainers runs through its own command line for --steps optimizer steps at its real
tile size and with its real data pipeline (augmentation preset, crop sampler, stain-copy share, low-res blur,
channels-last, gradient accumulation), encoders with random weights
(--encoder-weights none: nothing is downloaded) and the batch size shrunk to --batch-size; then:
    validate   the trainer's own validation pass through the submission path (metrics.json's Dice, smoke-marked)
    export     mmseg: python -m train.export --run-dir; fastai: the model.pth / model.ts the trainer wrote
    predict    python -m inference.predict on one image of each size class (160, 3000 and 4500 px)
    kernel     python -m kernels.build --allow-smoke of the run; for the first fastai and the first mmseg config,
               a two-family ensemble run through the offline notebook (as tests/kernels/test_kernel.py does)
It prints a table (config, steps, seconds and CPU seconds of the trainer's command, peak RSS, validated, exported,
predicted, kernel) and the wall and CPU seconds of every command together, and writes it as markdown. A stage that
fails, runs past --timeout-minutes or uses more than --max-memory-gib (its processes' proportional set size
together) is written in the table as such, with the memory it reached, never skipped.
Data, runs and logs go to WORK/scale<S> (WORK/ci for --ci); each config's row is kept in its rows/<config>.json:
a re-run with the same settings reuses it (--fresh redoes it), so a long rehearsal can be run in parts (e.g.
--configs of one family, then all). --grad-checkpointing passes the trainers' own flag (activations recomputed in
the backward pass), for the 1024 px configs whose step at batch 1 needs more memory than a CPU box has. The
ensemble's members are the CI configs when they passed, else the first config of each family that did.
--ci: the smallest GPU config of each family (unet_resnext50_512, segformer_mit-b3_1024), in WORK/ci, reduced to fit
about 4 minutes of one CPU core inside the suite (tests/train/test_rehearse.py runs it); each family still trains
through its own command line, real tile size and data pipeline, validates through the submission path, exports,
predicts and goes through kernels.build and the notebook. The reductions, and why:
    1 step at batch 1     as in the full rehearsal (both configs accumulate no gradients: one step is one batch)
    demo scale 1/6        make_demo's default 500 px images (the 160 px size class alone needs no real scale)
    one validation image  folds.csv with 10 folds of the 10 demo images (the full rehearsal: 5 folds, 2 images)
    whole-image tiles     --whole-image-tiles: the mmseg tile set is built with --splits 1 (default 1,2); with split
                          2 the demo's 500 px images are quarters blown up 4x, so SegFormer validated a 2048 px image
                          in 9 windows of 11 CPU s each; whole images are one window
    the trainer's export  mmseg's model.ts as the trainer wrote it (train.export.export_segmentor, traced and checked);
                          the full rehearsal re-exports it with python -m train.export --run-dir (90 CPU s for
                          SegFormer-b3), which tests/train/test_mmseg_train.py::test_reexport_from_run_folder covers
    the 160 px image      the one size class (AdaBN runs as in any predict: a one-image group keeps its statistics)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from inference.cli import parser as cli_parser

REPO = Path(__file__).resolve().parents[1]
MMSEG_DIR = REPO / "train" / "configs" / "mmseg"
# mmseg's CPU and demo configs: every other file in its config folder is a GPU recipe (the fastai GPU recipes are
# the `recipes` group of train/configs/fastai)
CPU_MARKERS = ("_cpu", "-cpu", "_demo", "-demo")
CI_CONFIGS = ("unet_resnext50_512", "segformer_mit-b3_1024")
CI_FOLDS = 10  # one validation image per fold of the 10 demo images
# size classes of the hidden test set (160 to 4500 px): id, organ, data source, side, um/px
SIZE_CLASSES = ((9001, "spleen", "Hubmap", 160, 0.4945), (9002, "kidney", "HPA", 3000, 0.4),
                (9003, "lung", "Hubmap", 4500, 0.4945))
CI_SIZES = (160,)
KERNEL_USER = "rehearsal"


def gpu_configs() -> list[tuple[str, str]]:
    """(family, config stem) of every GPU config: the fastai recipes group, then mmseg's configs less CPU / demo ones."""
    from train.configs.fastai.base import experiment_names

    fastai = [("fastai", s) for s in experiment_names("recipes")]
    mmseg = [("mmseg", p.stem) for p in sorted(MMSEG_DIR.glob("*.py")) if not any(m in p.stem for m in CPU_MARKERS)]
    return fastai + mmseg


@dataclass
class Stage:
    """One command's outcome: exit status (None: timed out), wall seconds, peak RSS of its largest process (MiB), and
    CPU seconds (user + system of the command and its reaped children: on a loaded machine the wall time is not its
    cost)."""

    status: int | None
    seconds: float
    rss_mib: float
    log: Path
    cpu_s: float = 0.0
    stopped: str = ""  # why the rehearsal killed it (status None): the time limit or the memory limit

    @property
    def ok(self) -> bool:
        return self.status == 0

    def failure(self) -> str:
        """'timeout after M min', 'memory: ...' or 'exit N: last line of the log'."""
        if self.status is None:
            return self.stopped or f"timeout after {self.seconds / 60:.0f} min"
        tail = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        return f"exit {self.status}: {tail[0][:120] if tail else ''}"


MEMORY_LIMIT_GIB: float | None = None  # --max-memory-gib: a command whose processes use more is stopped


def session_memory_gib(session: int) -> float:
    """Proportional set size (GiB) of every process in a session: forked data workers' shared pages counted once."""
    total_kib = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command name (which may hold spaces) start with state, ppid, pgrp, session
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            rollup = (stat.parent / "smaps_rollup").read_text()
        except (OSError, IndexError, ValueError):
            continue  # the process ended between the listing and the read
        total_kib += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total_kib / 2**20


def run(command: list[str], log: Path, timeout_s: float) -> Stage:
    """Run one command line (its output to log); its wall time and the peak RSS of its largest process. It is
    stopped past timeout_s or when its processes together use more than MEMORY_LIMIT_GIB."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            stopped = ""
            if time.perf_counter() - start > timeout_s:
                stopped = f"timeout after {timeout_s / 60:.0f} min"
            elif MEMORY_LIMIT_GIB is not None:
                used = session_memory_gib(proc.pid)  # its own session: the command and its data workers
                if used > MEMORY_LIMIT_GIB:
                    stopped = f"memory: stopped at {used:.1f} GiB (over the {MEMORY_LIMIT_GIB:g} GiB limit)"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the trainer and its data workers
                pid, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                print(f"  {stopped}", flush=True)
                return Stage(None, time.perf_counter() - start, usage.ru_maxrss / 1024, log,
                             usage.ru_utime + usage.ru_stime, stopped)
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stage = Stage(proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, log,
                  usage.ru_utime + usage.ru_stime)
    print(f"  {stage.seconds:.0f} s wall, {stage.cpu_s:.0f} s CPU, {stage.rss_mib / 1024:.1f} GiB", flush=True)
    return stage


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def checked(stage: Stage, what: str) -> None:
    """Stop the rehearsal when a data-preparation step fails: nothing after it could run."""
    if not stage.ok:
        raise RuntimeError(f"{what} failed ({stage.failure()}); see {stage.log}")


TILE_SETS = {  # data_prep.tiles options of each tile set a recipe trains on
    "tiles768": ["--size", 768, "--splits", "1,2", "--scaled", 0.8],
    "tiles960": ["--size", 960, "--splits", "1,2"],
    "tiles1024": ["--size", 1024, "--splits", "1,2"],
    "tiles256r4": ["--size", 256, "--splits", "", "--reduce", 4],
    # --whole-image-tiles: mmseg configs train on whole images at their size (see the module docstring)
    **{f"tiles{size}w": ["--size", size, "--splits", 1] for size in (768, 960, 1024)},
}


class DemoData:
    """Demo data, folds, the size-class images and (built when a config first needs one) the tile sets, each through
    its command line; anything already in the work folder is re-used."""

    def __init__(self, work: Path, timeout_s: float, n_folds: int = 5, scale: float | None = None) -> None:
        self.work, self.timeout_s = work, timeout_s
        self.data, self.logs = work / "data", work / "logs" / "data"
        if not (self.data / "train.csv").is_file():
            scaled = [] if scale is None else ["--scale", scale]
            checked(run(python("data_prep.make_demo", "--out", self.data, "--seed", 0, "--n-train", 10, "--n-test", 5,
                               *scaled), self.logs / "make_demo.log", timeout_s), "make_demo")
        self.folds = work / "folds.csv"
        if not self.folds.is_file():
            checked(run(python("data_prep.make_folds", "--train-csv", self.data / "train.csv", "--out", self.folds,
                               "--n-folds", n_folds, "--seed", 42), self.logs / "folds.log", timeout_s), "make_folds")
        self.sizes = work / "sizes"
        if not (self.sizes / "test.csv").is_file():
            write_size_classes(self.data, self.sizes)

    def tiles(self, name: str) -> Path:
        """The tile set `name` of TILE_SETS; tiles768 also gets one stain copy per whole image (data_prep.stain_copies)."""
        out = self.work / name
        if not (out / "index.csv").is_file():
            checked(run(python("data_prep.tiles", "--data-dir", self.data, "--folds", self.folds, "--out", out,
                               "--workers", 1, *TILE_SETS[name]), self.logs / f"{name}.log", self.timeout_s),
                    f"tiles {name}")
            if "--scaled" in TILE_SETS[name]:
                checked(run(python("data_prep.stain_copies", "--tiles", out, "--targets", self.data / "targets",
                                   "--copies", 1), self.logs / "stain_copies.log", self.timeout_s), "stain_copies")
        return out


def write_size_classes(data: Path, out: Path) -> Path:
    """A competition-layout test folder with one image of each size class, cut from a demo train image."""
    import cv2
    import tifffile

    from inference.io import read_image

    source = read_image(sorted((data / "train_images").glob("*.tiff"))[0])
    (out / "test_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, organ, data_source, side, pixel_size in SIZE_CLASSES:
        image = cv2.resize(source, (side, side), interpolation=cv2.INTER_AREA if side < len(source) else
                           cv2.INTER_LINEAR)
        tifffile.imwrite(out / "test_images" / f"{image_id}.tiff", np.ascontiguousarray(image))
        rows.append(dict(id=image_id, organ=organ, data_source=data_source, img_height=side, img_width=side,
                         pixel_size=pixel_size, tissue_thickness=4))
    table = pd.DataFrame(rows)
    table.to_csv(out / "test.csv", index=False)
    table[["id"]].assign(rle="1 1").to_csv(out / "sample_submission.csv", index=False)
    return out


def tile_set(family: str, stem: str, data: DemoData, whole_images: bool = False) -> Path:
    """The tile set a config trains on: fastai configs the 768 px one with --scaled whole images (crops, split tiles)
    or the reduce-4 one (reduce tiles), mmseg configs the one at their size (whole_images: of whole images)."""
    if family == "fastai":
        from train.configs.fastai.base import load_config

        cfg = load_config(stem)[1]
        # the crop sampler and split-tile configs (unet_resnest269_768) the 768 px split / scaled set; the configs
        # that train on reduce tiles (unet_resnest101_256x4) the reduce-4 set
        return data.tiles("tiles256r4" if cfg.sampler == "tiles" and cfg.train_reduces else "tiles768")
    from mmengine.config import Config

    size = int(Config.fromfile(str(MMSEG_DIR / f"{stem}.py")).tile_size)
    return data.tiles(f"tiles{size}{'w' if whole_images else ''}")


def rehearsal_batch(family: str, stem: str, batch_size: int) -> int:
    """The batch a config is rehearsed at: batch_size, but at least 2 for a fastai ResNeSt encoder whose BatchNorm
    trains (its split attention normalises pooled 1x1 features: BatchNorm cannot train on one value per channel,
    found by the rehearsal of unet_resnest101_256x4; the recipe's own batch is 32)."""
    if family != "fastai":
        return batch_size
    from train.configs.fastai.base import load_config

    cfg = load_config(stem)[1]
    return max(batch_size, 2) if "resnest" in cfg.encoder and not cfg.freeze_encoder_bn else batch_size


def train_command(family: str, stem: str, tiles: Path, out: Path, steps: int, batch_size: int,
                  mmseg_options: tuple[str, ...] = (), grad_checkpointing: bool = False) -> list[str]:
    """The trainer's own command line: fold 0, --max-steps, random encoder weights, a smaller batch (and, for mmseg,
    any further --cfg-options)."""
    common = ["--fold", 0, "--tiles", tiles, "--out", out, "--max-steps", steps, "--encoder-weights", "none",
              "--overwrite", *(["--grad-checkpointing"] if grad_checkpointing else [])]
    if family == "fastai":
        return python("train.fastai_unet", "--config", stem, *common, "--batch-size", batch_size)
    options = [f"train_dataloader.batch_size={batch_size}", *mmseg_options]
    return python("train.mmseg_train", "--config", MMSEG_DIR / f"{stem}.py", *common, "--cfg-options", *options)


@dataclass
class Row:
    """One config's line of the table."""

    config: str
    family: str
    steps: int = 0
    batch: int | None = None  # when it differs from --batch-size (rehearsal_batch)
    seconds: float | None = None
    cpu_s: float | None = None
    rss_mib: float | None = None
    validated: str = "-"
    exported: str = "-"
    predicted: str = "-"
    kernel: str = "-"
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path, settings: dict) -> None:
        """Keep the row (and the settings it was rehearsed with) for a later run to reuse."""
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings, "row": record}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, settings: dict) -> Row | None:
        """A kept row rehearsed with the same settings whose run folder is still there, else None."""
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        row = record["row"]
        if record["settings"] != settings or not (row["run_dir"] and Path(row["run_dir"]).is_dir()):
            return None
        return cls(**{**row, "run_dir": Path(row["run_dir"])})

    def cells(self) -> list[str]:
        seconds = "-" if self.seconds is None else f"{self.seconds:.0f}"
        cpu = "-" if self.cpu_s is None else f"{self.cpu_s:.0f}"
        rss = "-" if self.rss_mib is None else f"{self.rss_mib / 1024:.1f} GiB"
        steps = f"{self.steps} at batch {self.batch}" if self.batch else str(self.steps)
        return [f"{self.family}/{self.config}", steps, seconds, cpu, rss, self.validated, self.exported,
                self.predicted, self.kernel]


HEADER = ["config", "steps", "seconds", "CPU s", "peak RSS", "validated", "exported", "predicted", "kernel"]


def rehearse_config(family: str, stem: str, data: DemoData, work: Path, steps: int, batch_size: int,
                    sizes: tuple[int, ...], timeout_s: float, reexport: bool = True, whole_images: bool = False,
                    mmseg_options: tuple[str, ...] = (), grad_checkpointing: bool = False) -> Row:
    """Train -> validate -> export -> predict -> kernels.build for one config; every stage recorded in its Row.
    reexport: mmseg runs are exported again by python -m train.export --run-dir (else the trainer's model.ts);
    whole_images: mmseg configs train on whole-image tiles."""
    from train.run_folder import is_smoke, run_dir

    row = Row(stem, family)
    batch = rehearsal_batch(family, stem, batch_size)
    if batch != batch_size:
        row.batch = batch
    logs, out = work / "logs" / stem, work / "outputs"
    trained = run(train_command(family, stem, tile_set(family, stem, data, whole_images), out, steps, batch,
                                mmseg_options, grad_checkpointing),
                  logs / "train.log", timeout_s)
    row.seconds, row.cpu_s, row.rss_mib = trained.seconds, trained.cpu_s, trained.rss_mib
    folder = run_dir(out, stem, 0)
    if not trained.ok:
        row.validated = f"train failed: {trained.failure()}"
        return row
    row.run_dir = folder
    metrics = json.loads((folder / "metrics.json").read_text())
    row.steps = int(metrics.get("max_steps") or 0)
    if not is_smoke(folder):
        row.notes.append("not marked smoke")
    row.validated = f"Dice {metrics['dice']:.3f} on {metrics['n']}" if metrics.get("dice") is not None else "no Dice"

    config = json.loads((folder / "config.json").read_text())
    if family == "mmseg" and reexport:
        exported = run(python("train.export", "--run-dir", folder), logs / "export.log", timeout_s)
        row.exported = "model.ts" if exported.ok else f"failed: {exported.failure()}"
    else:
        row.exported = config["weights"] if (folder / config["weights"]).is_file() else "missing"

    sized = work / f"sizes_{'_'.join(map(str, sizes))}"
    if not (sized / "test.csv").is_file():
        keep = pd.read_csv(data.sizes / "test.csv")
        keep = keep[keep["img_height"].isin(sizes)]
        (sized / "test_images").mkdir(parents=True, exist_ok=True)
        for image_id in keep["id"]:
            shutil.copy(data.sizes / "test_images" / f"{image_id}.tiff", sized / "test_images")
        keep.to_csv(sized / "test.csv", index=False)
        keep[["id"]].assign(rle="1 1").to_csv(sized / "sample_submission.csv", index=False)
    submission = work / "predictions" / f"{stem}.csv"
    predicted = run(python("inference.predict", "--data-dir", sized, "--models", folder, "--out", submission,
                           "--device", "cpu"), logs / "predict.log", timeout_s)
    if predicted.ok:
        rows = pd.read_csv(submission, dtype=str, keep_default_na=False)
        row.predicted = f"{len(rows)}/{len(sizes)} ({'/'.join(map(str, sizes))} px), {predicted.seconds:.0f} s"
    else:
        row.predicted = f"failed: {predicted.failure()}"

    built = run(python("kernels.build", "--models", folder, "--out", work / "dist" / stem, "--user", KERNEL_USER,
                       "--wheels", "none", "--allow-smoke"), logs / "kernel.log", timeout_s)
    row.kernel = "built" if built.ok else f"failed: {built.failure()}"
    # a finished row keeps only what the ensemble and a re-run read (the run folder's model, config and metrics):
    # the per-config kernel build and mmseg's resume checkpoints (work/: 1-9 GB per UperNet) filled a 100 GB disk
    # at ten configs
    shutil.rmtree(work / "dist" / stem, ignore_errors=True)
    shutil.rmtree(folder / "work", ignore_errors=True)
    return row


def notebook_ensemble(members: list[Path], sizes_dir: Path, work: Path, timeout_s: float) -> str:
    """kernels.build of a two-family ensemble, its notebook run offline over a fake /kaggle tree; returns the verdict."""
    dist = work / "dist" / "ensemble"
    built = run(python("kernels.build", "--models", *members, "--out", dist, "--user", KERNEL_USER, "--wheels", "none",
                       "--allow-smoke"), work / "logs" / "ensemble_build.log", timeout_s)
    if not built.ok:
        return f"build failed: {built.failure()}"
    from kernels.build import code_cells

    kaggle = work / "kaggle"
    shutil.rmtree(kaggle, ignore_errors=True)
    inputs, working = kaggle / "input", kaggle / "working"
    working.mkdir(parents=True)
    for name in ("code", "weights"):
        shutil.copytree(dist / name, inputs / f"hubmap-ftu-{name}")
    competition = inputs / "hubmap-organ-segmentation"
    shutil.copytree(sizes_dir, competition)
    script = kaggle / "notebook.py"
    script.write_text(code_cells(dist / "kernel" / "submission.ipynb"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
    env.update(KAGGLE_INPUT=str(inputs), KAGGLE_WORKING=str(working), PIP_TARGET=str(kaggle / "site"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    log = work / "logs" / "ensemble_notebook.log"
    start = time.perf_counter()
    with log.open("w") as out:  # cwd outside the repo: `inference` comes from the code dataset, as on Kaggle
        done = subprocess.run([sys.executable, str(script)], cwd=kaggle, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s, check=False)
    seconds = time.perf_counter() - start
    submission = working / "submission.csv"
    if done.returncode != 0 or not submission.is_file():
        return f"notebook failed (exit {done.returncode}); see {log}"
    ids = pd.read_csv(competition / "test.csv", dtype=str)["id"].tolist()
    written = pd.read_csv(submission, dtype=str, keep_default_na=False)["id"].tolist()
    if written != ids:
        return f"notebook wrote ids {written}, test.csv has {ids}"
    return f"notebook: {len(ids)} rows, {seconds:.0f} s"


def markdown(rows: list[Row], ensemble: str, members: list[str], settings: str) -> str:
    """The table as markdown, with the ensemble's notebook run and any notes below it."""
    lines = [settings, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |" for row in rows]
    lines += ["", f"Two-family ensemble ({' + '.join(members) or 'none'}) through the offline notebook: {ensemble}"]
    lines += [f"- {row.config}: {note}" for row in rows for note in row.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Prepare the demo data, rehearse each config, run the ensemble's notebook, print and write the table."""
    parser = cli_parser("benchmarks.rehearse", __doc__)
    parser.add_argument("--work", type=Path, default=Path("rehearsal"), help="folder for data, runs and logs")
    parser.add_argument("--configs", nargs="+", help="config stems (default: every GPU config of both trainers)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per config (--max-steps)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per batch (the GPU recipes' is larger)")
    parser.add_argument("--sizes", type=int, nargs="+", choices=[s[3] for s in SIZE_CLASSES],
                        default=[s[3] for s in SIZE_CLASSES], help="size classes inference.predict runs on")
    parser.add_argument("--timeout-minutes", type=float, default=60.0, help="per command")
    parser.add_argument("--markdown", type=Path, help="write the table here (default WORK/scale<S>/rehearsal.md)")
    parser.add_argument("--fresh", action="store_true", help="rehearse every config again (no kept rows)")
    parser.add_argument("--demo-scale", type=float, default=1.0,
                        help="make_demo --scale of the demo data: 1 = 3000 px images at their nominal pixel size, so "
                        "tile sets and predictions run at a real run's scale (the CI form: make_demo's 1/6)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="train with the trainers' --grad-checkpointing (the 1024 px configs on a CPU box)")
    parser.add_argument("--whole-image-tiles", action="store_true",
                        help="mmseg configs train on tiles of whole images (--splits 1; default 1,2), so their scale "
                        "is one demo image per window (validation and prediction cost 4-9x less)")
    parser.add_argument("--mmseg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more --cfg-options for the mmseg trainer, e.g. train_dataloader.num_workers=1 "
                        "(gradient checkpointing: --grad-checkpointing, for both trainers)")
    parser.add_argument("--max-memory-gib", type=float,
                        help="stop a command whose processes together use more memory (PSS) than this, as a failure "
                        "that names the memory it reached")
    parser.add_argument("--ci", action="store_true",
                        help=f"the CI form in WORK/ci: {', '.join(CI_CONFIGS)}, 1 step, sizes "
                        f"{', '.join(map(str, CI_SIZES))}, one validation image, whole-image 1024 px tiles, the "
                        "trainer's mmseg export")
    args = parser.parse_args(argv)
    global MEMORY_LIMIT_GIB
    MEMORY_LIMIT_GIB = args.max_memory_gib
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    configs = gpu_configs()
    if args.ci:
        args.configs, args.steps, args.sizes, args.whole_image_tiles = list(CI_CONFIGS), 1, list(CI_SIZES), True
    if args.configs:
        known = dict((stem, family) for family, stem in configs)
        unknown = [c for c in args.configs if c not in known]
        if unknown:
            parser.error(f"not GPU configs: {unknown}; choose from {sorted(known)}")
        configs = [(known[c], c) for c in args.configs]
    scale = None if args.ci else args.demo_scale
    work = args.work.resolve() / ("ci" if args.ci else f"scale{args.demo_scale:g}")
    timeout_s = args.timeout_minutes * 60
    data = DemoData(work, timeout_s, n_folds=CI_FOLDS if args.ci else 5, scale=scale)
    rows = []
    settings = {"steps": args.steps, "batch_size": args.batch_size, "sizes": sorted(args.sizes), "ci": args.ci,
                "whole_image_tiles": args.whole_image_tiles, "demo_scale": scale,
                **({"grad_checkpointing": True} if args.grad_checkpointing else {}),
                **({"mmseg_options": args.mmseg_options} if args.mmseg_options else {})}
    for family, stem in configs:
        print(f"== {family}/{stem}", flush=True)
        kept = work / "rows" / f"{stem}.json"
        row = None if args.fresh else Row.load(kept, settings)
        if row is None:
            row = rehearse_config(family, stem, data, work, args.steps, args.batch_size, tuple(sorted(args.sizes)),
                                  timeout_s, reexport=not args.ci, whole_images=args.whole_image_tiles,
                                  mmseg_options=tuple(args.mmseg_options), grad_checkpointing=args.grad_checkpointing)
            row.save(kept, settings)
        else:
            print(f"kept from an earlier run with the same settings ({kept})")
        rows.append(row)
        print(" | ".join(row.cells()), flush=True)
    passed = [r for r in rows if r.run_dir and r.kernel == "built"]
    members = [next((r for r in passed if r.family == f and r.config in CI_CONFIGS), None)
               or next((r for r in passed if r.family == f), None) for f in ("fastai", "mmseg")]
    chosen = [m for m in members if m is not None]
    if len(chosen) == 2:
        sizes_dir = work / f"sizes_{'_'.join(map(str, sorted(args.sizes)))}"
        verdict = notebook_ensemble([m.run_dir for m in chosen], sizes_dir, work, timeout_s)
        for member in chosen:
            member.kernel = f"built; ensemble {verdict}"
    else:
        verdict = "not run: it needs one finished config of each family"
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime
    line = (f"{len(rows)} GPU configs{' (the CI form)' if args.ci else ''}, {args.steps} optimizer step(s) at batch "
            f"{args.batch_size}, encoders random, {'whole-image' if args.whole_image_tiles else 'split 1,2'} mmseg "
            f"tiles{', mmseg options ' + ' '.join(args.mmseg_options) if args.mmseg_options else ''}, "
            f"{'gradient checkpointing, ' if args.grad_checkpointing else ''}"
            f"demo scale {'1/6 (make_demo default)' if scale is None else f'{scale:g}'}, "
            f"CPU ({os.cpu_count()} cores), predict on "
            f"{', '.join(map(str, sorted(args.sizes)))} px; every command of this run together: "
            f"{time.perf_counter() - start:.0f} s wall, {cpu:.0f} s CPU")
    text = markdown(rows, verdict, [m.config for m in chosen], line)
    print("\n" + text)
    out = args.markdown or work / "rehearsal.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    failed = [r.config for r in rows if r.steps == 0 or r.notes
              or any(word in " ".join(r.cells()) for word in ("fail", "timeout", "missing"))]
    if len(chosen) == 2 and not verdict.startswith("notebook:"):
        failed.append("ensemble notebook")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
