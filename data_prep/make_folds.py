"""Write a seeded, organ-stratified folds file (id, organ, fold).

    python -m data_prep.make_folds --train-csv DATA/train.csv --out folds.csv [--n-folds 5] [--seed 42]
    python -m data_prep.make_folds --ids-json ../shared/fixtures/hubmap2022/train_ids_by_organ.json --out folds.csv

Per organ, ids are shuffled with the seed and dealt round-robin, so fold sizes within an organ differ
by at most one; each organ starts dealing where the previous one stopped, so totals balance as well.
The committed top-level folds.csv is the second command's output and is never edited by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from inference.cli import HelpFormatter
from inference.organs import ORGANS
from inference.tables import load_train


def make_folds(ids_by_organ: dict[str, list[int]], n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign a fold to every id, stratified by organ, deterministically for a seed."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    unknown = sorted(set(ids_by_organ) - set(ORGANS))
    if unknown:
        raise ValueError(f"unknown organ(s) {unknown}; expected {list(ORGANS)}")
    rng = np.random.default_rng(seed)
    rows, offset = [], 0
    for organ in ORGANS:  # fixed order, so the seed alone decides the split
        ids = np.array(sorted(int(i) for i in ids_by_organ.get(organ, [])), dtype=np.int64)
        ids = ids[rng.permutation(len(ids))]
        for k, image_id in enumerate(ids):
            rows.append((int(image_id), organ, (offset + k) % n_folds))
        offset = (offset + len(ids)) % n_folds
    df = pd.DataFrame(rows, columns=["id", "organ", "fold"])
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def ids_from_train_csv(path: Path) -> dict[str, list[int]]:
    df = load_train(path)
    return {organ: g["id"].tolist() for organ, g in df.groupby("organ")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.make_folds", description=__doc__, formatter_class=HelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-csv", type=Path, help="competition-format train.csv")
    src.add_argument("--ids-json", type=Path, help='JSON {"organ": [id, ...]} (train_ids_by_organ.json)')
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    ids = ids_from_train_csv(args.train_csv) if args.train_csv else json.loads(args.ids_json.read_text())
    folds = make_folds(ids, args.n_folds, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(args.out, index=False, lineterminator="\n")
    counts = folds.groupby(["organ", "fold"]).size().unstack(fill_value=0)
    print(f"wrote {len(folds)} ids in {args.n_folds} folds to {args.out}\n{counts.to_string()}")


if __name__ == "__main__":
    main()
