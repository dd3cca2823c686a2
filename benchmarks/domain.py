"""The HPA -> HuBMAP gap: the CPU recipe with and without stain transfer and scale jitter, HPA vs Hubmap Dice.

    python benchmarks/domain.py [--work benchmarks_out/recipe] [--minutes 20] [--seeds 3] [--data real-masks]
        [...recipe.py options]

Runs benchmarks/recipe.py with unet_r18_cpu as "ours" and its two ablations alongside (unet_r18_cpu_stain:
30% of the crops re-stained as H&E / PAS, the `flips+stain` preset; unet_r18_cpu_fixedscale: no physical scale
jitter, no low-res blur), plus the plain loop, all side by side at equal wall time, on demo data whose test set mixes HPA images
and Hubmap-like images (H&E, PAS for kidney) at the Hubmap pixel sizes. Prints the recipe table, then HPA and
Hubmap Dice per recipe (mean +- std over seeds) and Hubmap / HPA. Shares recipe.py's work folder and runs,
so running both costs one training. --data real-masks runs it on data_prep.real_masks (the real train masks at
their physical scale; skipped with a reason where ../shared is absent). For Dice against optimizer steps (long
enough for augmentation to pay, 1500 steps per model) see benchmarks/domain_curves.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipe  # noqa: E402

ABLATIONS = ("unet_r18_cpu_stain", "unet_r18_cpu_fixedscale")


def gap_table(rows: list[dict]) -> str:
    """HPA, Hubmap and Hubmap / HPA per recipe, mean +- std over seeds."""
    df = pd.DataFrame(rows)
    df["ratio"] = df["Hubmap"] / df["HPA"]
    lines = ["| recipe (seeds) | HPA | Hubmap | Hubmap / HPA |", "|---|---|---|---|"]
    for name, group in df.groupby("recipe", sort=False):
        cells = [f"{group[c].mean():.3f} ± {group[c].std(ddof=0):.3f}" for c in ("HPA", "Hubmap", "ratio")]
        lines.append(f"| {name} ({len(group)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe.main(["--config", "unet_r18_cpu", "--also", *ABLATIONS, *argv])
    work = Path(argv[argv.index("--work") + 1]) if "--work" in argv else Path("benchmarks_out/recipe")
    rows = json.loads((work.resolve() / "results.json").read_text())["rows"]
    print(f"\nHPA -> HuBMAP gap (ours = unet_r18_cpu; ablations {', '.join(ABLATIONS)}):\n{gap_table(rows)}")


if __name__ == "__main__":
    main()
