"""`python -m inference.predict`: parse, load the table and the models, run the loop, write and summarise."""

from __future__ import annotations

import logging
import os
import sys
import time

from inference.checkpoint import CheckpointConfig
from inference.journal import JournalLocked
from inference.submission.loop import predict_table, run_fingerprint
from inference.submission.members import load_members, member_folders, oof_members
from inference.submission.options import build_parser, options_from_args
from inference.submission.supervisor import SPAWNED_AT_ENV, write_submission
from inference.tables import TableError, load_folds, load_test_lenient

log = logging.getLogger("inference.predict")


def _start() -> float:
    """perf_counter() at which this process's --time-budget began: when the supervisor spawned it (SPAWNED_AT_ENV),
    so the interpreter's start and the imports count as spent, else now."""
    now = time.perf_counter()
    try:
        spawned = float(os.environ.get(SPAWNED_AT_ENV, ""))
    except ValueError:
        return now
    return now - min(max(time.time() - spawned, 0.0), now)


def command_fingerprint(argv: list[str]) -> str:
    """The journal fingerprint `python -m inference.predict ARGV` writes, computed without loading a model."""
    args = build_parser().parse_args(argv)
    table = load_test_lenient(args.data_dir / f"{args.split}.csv")[0]
    if args.limit is not None:
        table = table.head(args.limit)
    options = options_from_args(args)
    folds = load_folds(args.folds) if args.folds else None
    models = member_folders(args.models, args.weights)
    if folds is not None:
        models = [(folder, share) for folder, share in models if CheckpointConfig.load(folder).fold >= 0]
    return run_fingerprint(table, args.data_dir / f"{args.split}_images", [(str(f), w) for f, w in models],
                           options, folds)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 on bad input or a journal another run holds, 1 when every row is bad."""
    start = _start()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table, notes = load_test_lenient(args.data_dir / f"{args.split}.csv")
        options = options_from_args(args)
        folds = load_folds(args.folds) if args.folds else None
        members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
        if folds is not None:
            members = oof_members(members)
            if not members:
                raise ValueError("--folds: every checkpoint has fold -1; out-of-fold prediction needs fold >= 0")
    except (TableError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        table = table.head(args.limit)
    ids = set(table["id"])
    for where, note in notes:
        if where in ids or not where.isdigit():
            log.warning("id %s: %s" if where in ids else "%s: %s", where, note)
    begin = time.perf_counter()
    journal = args.journal or args.out.with_name(args.out.name + ".journal")
    try:
        run = predict_table(table, args.data_dir / f"{args.split}_images", members, options,
                            time_budget=args.time_budget, folds=folds, start=start, journal=journal)
    except JournalLocked as exc:  # another run writes this journal: a restart would be refused the same way
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_submission(run.submission, args.out)
    seconds = time.perf_counter() - begin
    submission, bad = run.submission, run.bad
    warned = sorted({i for i, _ in notes if i in ids} | set(run.warned), key=list(table["id"]).index)
    filled = int((submission["rle"] != "").sum())
    predicted = max(len(submission) - run.resumed, 1)
    print(
        f"wrote {args.out}: {len(submission)} rows, {filled} non-empty, {len(bad)} bad image(s)"
        f"{' ' + str(bad[:10]) if bad else ''}, {len(warned)} with warnings{' ' + str(warned[:10]) if warned else ''}"
        f"; {len(members)} model(s) on {members[0].predictor.device}, {seconds / predicted:.2f} s/image"
        f"{f'; {run.resumed} row(s) resumed from {journal}' if run.resumed else ''}"
    )
    if run.dropped:
        print(f"{len(run.dropped)} image(s) had a model left out for non-finite output {run.dropped[:10]}")
    if run.crashed:
        print(f"{len(run.crashed)} row(s) empty because an earlier run died on them {run.crashed[:10]}")
    if run.budget is not None:
        print(run.budget.summary())
    if folds is not None:
        predicted = len(submission) - len(run.no_fold_model) - len(run.not_in_folds)
        print(f"--folds: {predicted} image(s) predicted out of fold by {len(members)} checkpoint(s); "
              f"{len(run.no_fold_model)} whose fold has no checkpoint {run.no_fold_model[:10]}; "
              f"{len(run.not_in_folds)} not in {args.folds} {run.not_in_folds[:10]}")
    if len(submission) and not filled:
        log.error("EVERY ROW OF %s IS EMPTY: this submission scores 0; check the warnings above (models, "
                  "thresholds, images)", args.out)
    return 1 if bad and len(bad) == len(submission) else 0
