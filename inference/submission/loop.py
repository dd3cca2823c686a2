"""The table loop: every row predicted in order, journaled, under the time budget and AdaBN."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from inference.engine.adapt_bn import BatchNormAdaptation, adapt_batchnorm
from inference.engine.budget import TimeBudget, degradation_levels
from inference.engine.ensemble import Member
from inference.fingerprint import file_identity, model_identity
from inference.journal import Journal
from inference.submission.images import plain_file_name, read_table_image, table_images
from inference.submission.options import Options
from inference.submission.plan import BudgetPlan
from inference.submission.row import RowResult, predict_row

log = logging.getLogger("inference.predict")


@dataclass
class Run:
    """What predict_table did: the submission and every id that needs a person's attention."""

    submission: pd.DataFrame
    results: list[RowResult] = field(default_factory=list)
    budget: TimeBudget | None = None
    resumed: int = 0  # rows taken from the journal of an earlier run

    def _ids(self, *statuses: str) -> list[str]:
        return [r.id for r in self.results if r.status in statuses]

    @property
    def bad(self) -> list[str]:
        """Empty rows: unreadable or refused image, failed prediction, or the row a crashed run died on."""
        return self._ids("bad", "crashed")

    @property
    def crashed(self) -> list[str]:
        return self._ids("crashed")

    @property
    def no_fold_model(self) -> list[str]:
        return self._ids("no_fold_model")

    @property
    def not_in_folds(self) -> list[str]:
        return self._ids("not_in_folds")

    @property
    def warned(self) -> list[str]:
        """Rows with a prediction that took a fallback (see the log)."""
        return [r.id for r in self.results if r.status == "ok" and r.notes]

    @property
    def dropped(self) -> list[str]:
        """Rows where at least one model was left out for non-finite output."""
        return [r.id for r in self.results if r.dropped]


def _image_identity(image_dir: Path, image_id: str) -> list[int] | None:
    """[size, mtime_ns] of a row's image (None: no such file, or an id that is not a plain file name)."""
    return file_identity(image_dir / f"{image_id}.tiff") if plain_file_name(image_id) else None


def run_fingerprint(table: pd.DataFrame, image_dir: Path, models: Sequence[Member | tuple[str, float]],
                    options: Options, folds: dict[str, int] | None) -> str:
    """A digest of everything that decides the rows: the table, each image's size and mtime, each model's
    config.json contents and weights file (size, mtime), the members' weights, the options and the folds.

    models: the loaded members, or (checkpoint folder, weight) pairs (cli.command_fingerprint, before loading).
    """
    pairs = [(m.predictor.name, m.weight) if isinstance(m, Member) else (str(m[0]), float(m[1])) for m in models]
    image_dir = Path(image_dir)
    images = [_image_identity(image_dir, i) for i in table["id"].astype(str)]
    blob = json.dumps({"table": table.to_csv(index=False), "images": str(image_dir.resolve()), "files": images,
                       "models": [[name, weight, model_identity(name)] for name, weight in pairs],
                       "options": dataclasses.asdict(options), "folds": folds}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def predict_table(
    table: pd.DataFrame,
    image_dir: Path,
    members: list[Member],
    options: Options,
    time_budget: float | None = None,
    folds: dict[str, int] | None = None,
    start: float | None = None,
    journal: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Run:
    """RLE of the predicted mask of every row of a test/train table, with what went wrong where.

    time_budget (seconds, counted from `start` on `clock`) degrades settings as inference.engine.budget
    describes; folds (id -> fold) restricts each image to the checkpoints of its own validation fold; journal
    records each finished row and resumes from an earlier run of the same settings (inference.journal).
    """
    if options.save_probs is not None:
        options.save_probs.mkdir(parents=True, exist_ok=True)
    rows = list(table.itertuples(index=False))
    book = Journal(journal, run_fingerprint(table, image_dir, members, options, folds)) if journal else None
    results = _resume(book, rows)
    resumed, todo = len(results), [n for n in range(len(rows)) if n not in results]
    budget = plan = None
    adaptation = None
    try:
        if options.adapt_bn != "off" and todo:  # before the budget's plan: its time counts as elapsed like any other
            adaptation = _adapt(table, image_dir, members, options, book)
        if time_budget is not None:
            levels = degradation_levels(options.tta, [m.weight for m in members], tta_scales=options.tta_scales,
                                        stain=options.stain_tta)
            prior = [results[n].seconds / results[n].windows for n in sorted(results)
                     if results[n].status == "ok" and results[n].windows > 0 and results[n].seconds > 0]
            budget = TimeBudget(time_budget, levels, start=start, clock=clock, prior=prior)
            plan = BudgetPlan(budget, rows, todo, members, options, folds)
        slots = table_images([rows[n] for n in todo], image_dir, options.image_reference, options.max_image_side)
        with logging_redirect_tqdm():
            for n, slot in tqdm(zip(todo, slots, strict=True), total=len(todo), desc="predict", unit="img"):
                results[n] = _journaled(book, n, rows[n], partial(predict_row, rows[n], image_dir, members, options,
                                                                  folds, plan, n, adaptation, slot), clock)
                if budget is not None and results[n].status == "ok":
                    budget.record(results[n].seconds, results[n].windows)
    finally:
        if adaptation is not None:
            adaptation.restore()
        if book is not None:
            book.close()
    ordered = [results[n] for n in range(len(rows))]
    submission = pd.DataFrame({"id": table["id"].astype(str).to_numpy(), "rle": [r.rle for r in ordered]})
    return Run(submission, ordered, budget, resumed)


def _adapt(table: pd.DataFrame, image_dir: Path, members: list[Member], options: Options,
           book: Journal | None) -> BatchNormAdaptation | None:
    """adapt_batchnorm over the whole table, its images read as predict_row reads them, each under a journal claim.

    The whole table, not only the rows left, so a resumed run adapts exactly as the first one did; an image that
    killed an earlier run while AdaBN read it is that run's crashed row, left out here and empty in the loop.
    AdaBN failing as a whole (None) leaves every member as trained, with a warning: it never costs the rows.
    """
    def read(row: object) -> np.ndarray:
        n, image_id = int(row.Index), str(row.id)
        if book is not None and n in book.crashed:
            raise RuntimeError("an earlier run died on this row")
        if book is not None:
            book.claim(n, image_id)  # a decoder that kills the process blames this row, as in the loop
        try:
            loaded = read_table_image(row, image_dir, options.image_reference, options.max_image_side)
        finally:
            if book is not None:
                book.release(n)
        if loaded.error is not None:
            raise loaded.error
        return loaded.seen

    try:
        return adapt_batchnorm(table, image_dir, members, read=read, **options.adapt_bn_arguments())
    except Exception as exc:  # per member and group it fails soft itself; this is the last resort
        log.warning("--adapt-bn failed (%s: %s): every member predicts as trained", type(exc).__name__, exc)
        return None


def _resume(book: Journal | None, rows: list) -> dict[int, RowResult]:
    """The rows an earlier run of the same settings finished (row number -> result)."""
    if book is None:
        return {}
    results = {n: RowResult(**{k: record[k] for k in RowResult.__dataclass_fields__ if k in record})
               for n, record in book.done.items() if n < len(rows) and record.get("id") == str(rows[n].id)}
    if results:
        log.info("journal %s: %d of %d row(s) already done, resuming", book.path, len(results), len(rows))
    return results


def _journaled(book: Journal | None, n: int, row: object, predict: Callable[[], RowResult],
               clock: Callable[[], float] = time.perf_counter) -> RowResult:
    """predict() between a claim and a done record, its seconds measured on `clock` (journaled: a restarted child
    plans with them); a row an earlier run died on is not tried again."""
    if book is not None and n in book.crashed:
        note = "the previous run died while predicting this row (out of memory, a crashing decoder?): empty row"
        log.warning("id %s: %s", row.id, note)
        result = RowResult(str(row.id), status="crashed", notes=[note])
    else:
        if book is not None:
            book.claim(n, str(row.id))
        began = clock()
        try:
            result = predict()
            result.seconds = clock() - began
        except KeyboardInterrupt:  # the user stopped the run: this row is not to blame
            if book is not None:
                book.release(n)
            raise
    if book is not None:
        book.finish(n, dataclasses.asdict(result))
    return result
