"""Cohorts: predict every slide of a slides CSV, here one after another or as one Ray task per slide.

    python -m inference.wsi --slides slides.csv --models RUN ... --out DIR [--engine local|ray]
        [--ray-address ADDR] [--max-retries 3] [the prediction flags of a single slide]

slides.csv: `slide` (path, relative to the CSV), `organ` (one of inference.organs.ORGANS, or empty), optional
`mpp` (um per level-0 pixel when the file lacks it). `python -m data_prep.make_demo --n-slides N` writes one.

Every slide goes through inference.wsi.predict.predict_slide into DIR (outputs are prefixed by the slide's
stem, so stems must be unique). A slide whose outputs were finished by this same run (its run_digest: the
slide file's path, size and mtime, each checkpoint folder's config.json and weights file, --weights, --blend,
the options, --reader, the CSV's mpp) is skipped, and said so; one finished or started by another run is
predicted again from scratch, and said so; an unfinished one of this run resumes at its next block through
DIR/S_work (the block-level work store), so a cohort can be stopped and started again at any time. One failing slide (an undecodable tile, a missing pixel size) is recorded
and the others go on.

--engine ray: each slide is one Ray task (one GPU per task where the cluster has GPUs, else one CPU), on the
cluster at --ray-address or on a local one started on the spot. A task whose worker process dies (out of
memory, a killed node, a pre-empted VM) is re-run up to --max-retries times and resumes where the dead
worker's last finished block left off. Ray is imported only here, only for this engine. Remote cluster
nodes need this repository and its environment at the same path (the driver puts its own package root on
the workers' PYTHONPATH).

Writes DIR/cohort.csv: slide, organ, stem, status (done / skipped / failed), ftus, ftu_area_um2, seconds,
error; exit status 1 when a slide failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from inference.atomic import atomic_write
from inference.engine.ensemble import Member
from inference.engine.postprocess import load_min_area
from inference.io import ImageReadError
from inference.organs import ORGANS
from inference.wsi.predict import WsiOptions, is_finished, predict_slide, run_digest, slide_stem, work_state

log = logging.getLogger("inference.wsi.cohort")
COHORT_COLUMNS = ("slide", "organ", "stem", "status", "ftus", "ftu_area_um2", "seconds", "error")
ENGINES = ("local", "ray")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding inference/


class CohortError(ValueError):
    """The slides CSV cannot be used as a cohort."""


@dataclass(frozen=True)
class Job:
    """One slide of the cohort."""

    slide: Path
    organ: str
    mpp: float | None
    stem: str


@dataclass
class CohortSettings:
    """Everything a worker needs to predict any slide (plain data: it travels to Ray workers by pickle)."""

    models: list[str]
    out: str
    weights: list[float] | None = None
    device: str = "auto"
    batch_size: int = 4
    blend: str = "gaussian"
    reader: str = "auto"
    overwrite: bool = False
    options: dict = field(default_factory=dict)  # WsiOptions fields except organ


def load_cohort(path: Path) -> list[Job]:
    """Read and check a slides CSV: slide, organ (optional mpp); paths relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"slides CSV not found: {path}")
    table = pd.read_csv(path, dtype={"slide": str, "organ": str}, keep_default_na=False, na_values={"mpp": [""]})
    if "slide" not in table.columns:
        raise CohortError(f"{path}: needs a 'slide' column (and 'organ', optional 'mpp'); has {list(table.columns)}")
    organs = table["organ"] if "organ" in table.columns else pd.Series([""] * len(table))
    unknown = sorted(set(organs) - set(ORGANS) - {""})
    if unknown:
        raise CohortError(f"{path}: unknown organ(s) {unknown}; expected one of {list(ORGANS)} or empty")
    mpps = pd.to_numeric(table["mpp"], errors="coerce") if "mpp" in table.columns else [None] * len(table)
    jobs = []
    for slide, organ, mpp in zip(table["slide"], organs, mpps, strict=True):
        file = Path(slide) if Path(slide).is_absolute() else path.parent / slide
        jobs.append(Job(file, organ, None if mpp is None or pd.isna(mpp) else float(mpp), slide_stem(file)))
    stems = pd.Series([j.stem for j in jobs])
    if stems.duplicated().any():
        raise CohortError(f"{path}: slides share output names {sorted(set(stems[stems.duplicated()]))}; "
                          "rename them (outputs are DIR/<stem>_*)")
    if not jobs:
        raise CohortError(f"{path}: no slides")
    return jobs


_MEMBERS: dict[tuple, list[Member]] = {}  # per process: a worker loads the models once for all its slides


def _members(settings: CohortSettings) -> list[Member]:
    from inference.predict import load_members

    key = (tuple(settings.models), tuple(settings.weights or ()), settings.device, settings.batch_size,
           settings.blend)
    if key not in _MEMBERS:
        _MEMBERS[key] = load_members([Path(m) for m in settings.models], settings.weights, settings.device,
                                     settings.batch_size, settings.blend)
    return _MEMBERS[key]


def job_digest(job: Job, settings: CohortSettings) -> str:
    """run_digest of one slide of the cohort (what is_finished compares)."""
    return run_digest(job.slide, settings.models, settings.weights, settings.blend,
                      WsiOptions(organ=job.organ, **settings.options), settings.reader, job.mpp)


def run_slide(job: Job, settings: CohortSettings) -> dict:
    """Predict one slide (in this process or a Ray worker) and return its cohort.csv row."""
    start = time.perf_counter()
    row = {"slide": str(job.slide), "organ": job.organ, "stem": job.stem}
    try:
        options = WsiOptions(organ=job.organ, **settings.options)
        summary = predict_slide(job.slide, _members(settings), Path(settings.out), options, settings.reader,
                                job.mpp, settings.overwrite, run=job_digest(job, settings))
    except (ImageReadError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line in the CSV
        log.error("%s failed: %s", job.slide, message)
        return {**row, "status": "failed", "ftus": None, "ftu_area_um2": None,
                "seconds": round(time.perf_counter() - start, 1), "error": message}
    return {**row, "status": "done", "ftus": summary["ftus"], "ftu_area_um2": summary["ftu_area_um2"],
            "seconds": round(time.perf_counter() - start, 1), "error": ""}


def _skipped(job: Job, out: Path) -> dict:
    import json

    summary = json.loads((out / f"{job.stem}_summary.json").read_text())
    return {"slide": str(job.slide), "organ": job.organ, "stem": job.stem, "status": "skipped",
            "ftus": summary["ftus"], "ftu_area_um2": summary["ftu_area_um2"], "seconds": 0.0, "error": ""}


def _run_local(jobs: list[Job], settings: CohortSettings) -> list[dict]:
    return [run_slide(job, settings) for job in tqdm(jobs, desc="cohort", unit="slide")]


def _run_ray(jobs: list[Job], settings: CohortSettings, address: str | None, max_retries: int) -> list[dict]:
    """One Ray task per slide; re-run a task whose worker died (it resumes from the slide's work store)."""
    import ray  # only this engine needs Ray: importing inference.wsi never does

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                                                                "1")}})
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=max_retries,
                          retry_exceptions=False)(run_slide)
        pending = {task.remote(job, settings): job for job in jobs}
        rows: dict[str, dict] = {}
        with tqdm(total=len(jobs), desc="cohort (ray)", unit="slide") as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        rows[job.stem] = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died more than max_retries times
                        message = " ".join(str(exc).split())[:500]
                        log.error("%s failed on Ray: %s", job.slide, message)
                        rows[job.stem] = {"slide": str(job.slide), "organ": job.organ, "stem": job.stem,
                                          "status": "failed", "ftus": None, "ftu_area_um2": None,
                                          "seconds": None, "error": message}
                    bar.update()
    finally:
        if started:
            ray.shutdown()
    return [rows[job.stem] for job in jobs]


def run_cohort(
    jobs: list[Job], settings: CohortSettings, engine: str = "local", ray_address: str | None = None,
    max_retries: int = 3,
) -> pd.DataFrame:
    """Predict every unfinished slide, skip finished ones (saying so), and write DIR/cohort.csv; return it."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} not in {ENGINES}")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    mask_format = settings.options.get("mask_format", "tiff")
    rows: dict[str, dict] = {}
    todo, stale = [], []
    for job in jobs:
        digest = job_digest(job, settings)
        state = work_state(out, job.stem)
        if not settings.overwrite and is_finished(out, job.stem, mask_format, digest):
            print(f"{job.slide}: already predicted into {out}, skipped (pass --overwrite to redo it)")
            rows[job.stem] = _skipped(job, out)
            continue
        todo.append(job)
        if not settings.overwrite and state is not None and state.get("run") != digest:
            print(f"{job.slide}: {out / (job.stem + '_work')} holds a run with other models, settings or an older "
                  "slide file: predicted again")
            stale.append(job)
    print(f"cohort: {len(jobs)} slides, {len(jobs) - len(todo)} already done, {len(todo)} to predict "
          f"({engine} engine)")
    # wiped here once, before any task starts: a retried task must resume, not wipe again
    for job in todo if settings.overwrite else stale:
        shutil.rmtree(out / f"{job.stem}_work", ignore_errors=True)
    settings = replace(settings, overwrite=False)
    if todo:
        done = _run_local(todo, settings) if engine == "local" else _run_ray(todo, settings, ray_address,
                                                                             max_retries)
        rows.update((r["stem"], r) for r in done)
    table = pd.DataFrame([rows[j.stem] for j in jobs], columns=list(COHORT_COLUMNS))
    with atomic_write(out / "cohort.csv") as fh:
        table.to_csv(fh, index=False)
    return table


def settings_from_args(args: argparse.Namespace) -> CohortSettings:
    """CohortSettings of a parsed `python -m inference.wsi --slides ...` command line."""
    options = WsiOptions.from_args(args, min_area_um2=load_min_area(args.min_area))
    fields = {k: v for k, v in asdict(options).items() if k != "organ"}
    return CohortSettings(
        models=[str(Path(m).resolve()) for m in args.models], out=str(Path(args.out).resolve()),
        weights=args.weights, device=args.device, batch_size=args.batch_size, blend=args.blend,
        reader=args.reader, overwrite=args.overwrite, options=fields,
    )


def run_cohort_cli(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """`python -m inference.wsi --slides ...` (called by inference.wsi.predict.main)."""
    try:
        jobs = load_cohort(args.slides)
        settings = settings_from_args(args)
    except (CohortError, FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    if args.engine == "local" and args.ray_address:
        ap.error("--ray-address needs --engine ray")
    table = run_cohort(jobs, settings, args.engine, args.ray_address, args.max_retries)
    counts = table["status"].value_counts()
    print(table[["stem", "organ", "status", "ftus", "seconds"]].to_string(index=False))
    print(f"cohort: {counts.get('done', 0)} predicted, {counts.get('skipped', 0)} skipped, "
          f"{counts.get('failed', 0)} failed -> {Path(args.out) / 'cohort.csv'}")
    return 1 if counts.get("failed", 0) else 0
