"""Predict FTU masks for every image of a competition-layout folder and write submission.csv.

    python -m inference.predict --data-dir DIR --models RUN_DIR [RUN_DIR ...] --out submission.csv [options]

The command's entry point; `--help` (inference.submission.options) lists the options. The code lives in
inference.submission, one module per job: options (Options, the parser), images (the one read-and-normalise path),
members (loading --models), row (one row into a RowResult), plan (the time budget's windows), loop (the table,
journal, budget and AdaBN), supervisor (the child process and submission.csv from the journal) and cli (main).
This module re-exports the names other modules and tests use.
"""

from __future__ import annotations

import sys

from inference.submission.cli import command_fingerprint, main
from inference.submission.images import (
    ImageSlot,
    TableImage,
    normalise,
    plain_file_name,
    read_table_image,
    table_images,
)
from inference.submission.loop import Run, predict_table, run_fingerprint
from inference.submission.members import load_members, member_folders, oof_members, row_members
from inference.submission.options import Options, build_parser, options_from_args
from inference.submission.plan import BudgetPlan
from inference.submission.row import STATUSES, RowResult, predict_one, predict_row, save_probability
from inference.submission.supervisor import run_supervised, write_from_journal, write_submission

__all__ = [
    "STATUSES", "BudgetPlan", "ImageSlot", "Options", "RowResult", "Run", "TableImage", "build_parser",
    "command_fingerprint",
    "load_members", "main", "member_folders", "normalise", "oof_members", "options_from_args", "plain_file_name", "predict_one",
    "predict_row", "predict_table", "read_table_image", "row_members", "run_fingerprint", "run_supervised",
    "save_probability", "table_images", "write_from_journal", "write_submission",
]

if __name__ == "__main__":
    sys.exit(main())
