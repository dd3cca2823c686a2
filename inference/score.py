"""Score a submission against ground truth: mean Dice overall, per organ and per data source.

    python -m inference.score --submission submission.csv --solution test_solution.csv [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from inference.cli import HelpFormatter
from inference.metric import dice
from inference.rle import decode
from inference.tables import TableError, load_solution, load_submission


def score(submission: pd.DataFrame, solution: pd.DataFrame) -> dict:
    """Per-image Dice for every solution id; missing ids count as empty predictions."""
    unknown = sorted(set(submission["id"]) - set(solution["id"]))
    if unknown:
        raise TableError(f"submission has id(s) not in the solution: {unknown[:10]}")
    predicted = dict(zip(submission["id"], submission["rle"], strict=True))
    missing = sorted(set(solution["id"]) - set(predicted))
    rows = []
    for r in solution.itertuples(index=False):
        h, w = int(r.img_height), int(r.img_width)
        d = dice(decode(predicted.get(r.id, ""), h, w), decode(r.rle, h, w))
        rows.append({"id": r.id, "organ": r.organ, "data_source": getattr(r, "data_source", None), "dice": d})
    result = summarise(pd.DataFrame(rows, columns=["id", "organ", "data_source", "dice"]))
    result["missing"] = [int(i) for i in missing]
    return result


def summarise(per_image: pd.DataFrame) -> dict:
    """Mean Dice overall, per organ, per data source and per (organ, data source) of per-image rows.

    per_image has columns id, organ, data_source (may be empty / NaN) and dice.
    """
    result = {
        "dice": float(per_image["dice"].mean()) if len(per_image) else float("nan"),
        "per_organ": {k: float(v) for k, v in per_image.groupby("organ")["dice"].mean().items()},
        "n": len(per_image),
        "per_image": {int(r.id): float(r.dice) for r in per_image.itertuples()},
    }
    if per_image["data_source"].notna().any():
        result["per_data_source"] = {
            k: float(v) for k, v in per_image.groupby("data_source")["dice"].mean().items()
        }
        result["per_organ_source"] = {
            f"{organ}/{source}": float(v)
            for (organ, source), v in per_image.groupby(["organ", "data_source"])["dice"].mean().items()
        }
    return result


def format_report(result: dict) -> str:
    """Human-readable summary of a score() / summarise() result: a Dice table of organs by data source."""
    lines = [f"mean Dice {result['dice']:.4f} over {result['n']} images"]
    sources = sorted(result.get("per_data_source", {}))
    cells = result.get("per_organ_source", {})
    lines.append(f"  {'organ':<15s} {'all':>7s}" + "".join(f" {s:>7s}" for s in sources))
    for organ, d in sorted(result["per_organ"].items()):
        row = "".join(f" {cells[f'{organ}/{s}']:7.4f}" if f"{organ}/{s}" in cells else f" {'-':>7s}" for s in sources)
        lines.append(f"  {organ:<15s} {d:7.4f}{row}")
    if sources:
        by_source = result["per_data_source"]
        lines.append(f"  {'all':<15s} {result['dice']:7.4f}" + "".join(f" {by_source[s]:7.4f}" for s in sources))
        if by_source.get("HPA") and "Hubmap" in by_source:  # the private leaderboard is Hubmap, training is HPA
            lines.append(f"  Hubmap / HPA {by_source['Hubmap'] / by_source['HPA']:.2f}")
    if result.get("missing"):
        lines.append(f"  {len(result['missing'])} id(s) missing from the submission, scored as empty: "
                     f"{result['missing'][:10]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.score", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--submission", type=Path, required=True, help="CSV with id,rle")
    ap.add_argument("--solution", type=Path, required=True,
                    help="CSV with id,organ,img_height,img_width,rle (data_source optional)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    args = ap.parse_args(argv)
    try:
        result = score(load_submission(args.submission), load_solution(args.solution))
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        result = {k: v for k, v in result.items() if k != "per_image"}
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
