"""Predict FTU masks for every image of a competition-layout folder and write submission.csv.

    python -m inference.predict --data-dir DIR --models RUN_DIR [RUN_DIR ...] --out submission.csv
        [--ensemble mean|union] [--weights W ...] [--thresholds organs.json] [--threshold T]
        [--tta 0|2|4|8] [--tta-scales 0.8,1,1.2] [--stain-tta [macenko,reinhard]] [--adapt-bn [unseen|all|off] [--adapt-bn-windows N]]
        [--scale-mode pixel-size|reduce|none] [--max-side 4608] [--organ-from csv|model] [--fill-holes]
        [--min-area UM2|organs.json] [--save-probs DIR] [--split test|train] [--folds folds.csv]
        [--time-budget SECONDS] [--journal PATH] [--max-image-side 30000] [--device auto|cpu|cuda]

RUN_DIR is a checkpoint folder (config.json + weights) or a run folder holding fold*/ checkpoint
folders (all folds are used; a --weights value is shared equally by the folds of its RUN_DIR).

The submission loop never exits early: every id of test.csv (or train.csv with --split train) gets a row,
in the CSV's order. The loop is predict_table over predict_row, one RowResult per row. Bad CSV values
(unknown organ or data_source, missing pixel_size or size, short or long lines, bytes that are not UTF-8)
are warnings with the fallbacks of inference.tables.load_test_lenient; an id that is not a plain file name,
an image that cannot be read, is larger than --max-image-side or fails to predict gets an empty mask; a model
whose output is not finite is left out of that image; an image whose size differs from the CSV is predicted
and its mask resized to the CSV size; a failing post-processing or --save-probs keeps the raw mask; a CUDA
out-of-memory is retried with batch size 1, then without TTA. Every such event is a `WARNING ... id N: ...`
line, counted in the summary.

Every finished row goes to the journal (--journal, default OUT.journal; see inference.journal) as it is done:
re-running the same command after a crash resumes there, and the row the crashed process was predicting
becomes an empty row. run_supervised is how the Kaggle notebook uses it: the prediction runs in a child
process, restarted after a crash, and write_from_journal writes submission.csv in test.csv order whatever
happened.

Multiclass models predict the test.csv organ's class (--organ-from csv, the default; 1st place's USE_ORGAN); a
missing or unknown organ falls back to the majority class, which --organ-from model uses for every image.
--thresholds takes per-organ or per-data-source-and-organ cut-offs (inference.thresholds). --tta-scales and
--stain-tta add multi-scale and stain-normalised views (inference.engine.tta); AdaBN re-estimates encoder
BatchNorm statistics per (data_source, organ) group first, by default for the sources a model never trained on
(--adapt-bn unseen|all|off; inference.engine.adapt_bn).

--scale-mode pixel-size (default) resamples each image to the checkpoint's um/px (see inference.engine.predictor).
--time-budget stops the run from overrunning (see inference.engine.budget). --folds makes each checkpoint predict
only the images of its own validation fold (config.json fold; fold -1 checkpoints are left out), so
--split train --save-probs DIR gives out-of-fold maps for inference.tune_thresholds. --save-probs writes
each image's ensemble FTU probability as DIR/<id>.npy (float16, longer side at most --save-probs-max-side).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from inference.cli import HelpFormatter
from inference.engine.adapt_bn import DEFAULT_IMAGES, DEFAULT_MIN_IMAGES, DEFAULT_WINDOWS, GROUPINGS, MODES
from inference.engine.budget import Level
from inference.engine.ensemble import EnsembleOptions, add_ensemble_arguments, bounded, positive_float, positive_int
from inference.engine.postprocess import load_min_area
from inference.engine.tta import STAIN_METHODS, parse_stain_methods
from inference.io import MAX_IMAGE_SIDE


@dataclass
class Options(EnsembleOptions):
    """EnsembleOptions plus what the submission loop adds (defaults = inference.predict without flags)."""

    fill_holes: bool = False
    min_area_um2: dict[str, float] = field(default_factory=dict)
    save_probs: Path | None = None
    save_probs_max_side: int = 1024
    stain_reference: str | None = None  # Macenko-normalise images to this reference JSON, or "macenko"
    max_image_side: int | None = MAX_IMAGE_SIDE  # refuse larger images (declared or decoded) as bad rows
    stain_tta: tuple[str, ...] = ()  # views normalised to stain_reference by these methods, beside the image as is
    source_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)  # {data_source: {organ: t}}
    # AdaBN (inference.engine.adapt_bn): "unseen" adapts each member's encoder BatchNorm statistics on the groups of
    # data sources it never trained on (chosen on real DAB -> PAS kidney: 0.12 -> 0.52 Dice, while in-domain rows,
    # where AdaBN costs 0.02-0.10, keep their statistics; README), "all" on every group, "off" nowhere
    adapt_bn: str = "unseen"
    adapt_bn_windows: int = DEFAULT_WINDOWS  # windows per member and group
    adapt_bn_images: int = DEFAULT_IMAGES  # images drawn per group
    adapt_bn_min_images: int = DEFAULT_MIN_IMAGES  # a group with fewer test images keeps the trained statistics
    adapt_bn_groups: str = GROUPINGS[0]  # "source-organ" (one group per data_source and organ) or "source"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stain_tta = tuple(self.stain_tta)
        bad = sorted(set(self.stain_tta) - set(STAIN_METHODS))
        if bad:
            raise ValueError(f"stain_tta methods must be among {list(STAIN_METHODS)}, got {bad}")
        if self.stain_tta and self.stain_reference is None:
            raise ValueError("--stain-tta needs --stain-reference (the training stain: python -m inference.stain)")
        if self.adapt_bn_windows < 1 or self.adapt_bn_images < 1:
            raise ValueError("--adapt-bn-windows and --adapt-bn-images must be >= 1")
        if self.adapt_bn not in MODES:
            raise ValueError(f"--adapt-bn must be one of {MODES}, got {self.adapt_bn!r}")
        if self.adapt_bn_groups not in GROUPINGS:
            raise ValueError(f"--adapt-bn-groups must be one of {GROUPINGS}, got {self.adapt_bn_groups!r}")

    def with_level(self, level: Level) -> Options:
        """A copy at a time-budget level: EnsembleOptions' knobs plus the stain views kept."""
        return dataclasses.replace(super().with_level(level), stain_tta=level.stain)

    def adapt_bn_arguments(self) -> dict:
        """adapt_batchnorm's keyword arguments under these options (the loop and train.pseudo_label's teacher)."""
        return dict(windows=self.adapt_bn_windows, max_images=self.adapt_bn_images, scale_mode=self.scale_mode,
                    max_side=self.max_side, grouping=self.adapt_bn_groups, mode=self.adapt_bn,
                    min_images=self.adapt_bn_min_images)

    @property
    def image_reference(self) -> str | None:
        """The reference the image itself is normalised to: none under stain TTA, which keeps it as it is too."""
        return None if self.stain_tta else self.stain_reference


def _min_area(text: str) -> dict[str, float]:
    """argparse type of --min-area (a number of um^2 or an organ JSON), checked at parse time."""
    try:
        return load_min_area(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_domain_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The stain and AdaBN flags of Options (inference.predict; train.pseudo_label's teacher predicts the same way)."""
    ap.add_argument("--stain-reference",
                    help="Macenko-normalise every image to this reference JSON (python -m inference.stain) or "
                         "'macenko' (needs torchstain)")
    ap.add_argument("--stain-tta", type=parse_stain_methods, nargs="?", const=STAIN_METHODS, default=(),
                    metavar="METHODS",
                    help=f"also predict each image normalised to --stain-reference by these methods (comma list of "
                         f"{','.join(STAIN_METHODS)}; bare flag: both) and average the probabilities")
    ap.add_argument("--adapt-bn", nargs="?", choices=MODES, const="all", default="unseen", metavar="MODE",
                    help="AdaBN: re-estimate each member's encoder BatchNorm statistics on random windows of each "
                         "group's images before predicting them (smp and scripted models; traced ones warn). "
                         "unseen (default): only on groups whose data_source the member never trained on "
                         "(config.json data_sources); all (the bare flag): every group; off: never")
    ap.add_argument("--adapt-bn-windows", type=positive_int, default=DEFAULT_WINDOWS,
                    help="--adapt-bn windows per member and group")
    ap.add_argument("--adapt-bn-images", type=positive_int, default=DEFAULT_IMAGES,
                    help="--adapt-bn images drawn per group")
    ap.add_argument("--adapt-bn-min-images", type=positive_int, default=DEFAULT_MIN_IMAGES,
                    help="--adapt-bn leaves a group with fewer test images as trained (one image's statistics fit "
                         "that image)")
    ap.add_argument("--adapt-bn-groups", choices=GROUPINGS, default=GROUPINGS[0],
                    help="--adapt-bn groups: one per data_source and organ (default), or one per data_source")
    return ap


def build_parser(allow_abbrev: bool = True) -> argparse.ArgumentParser:
    """The CLI; kernels.build parses --predict-args with allow_abbrev=False so every option is spelled out."""
    ap = argparse.ArgumentParser(
        prog="python -m inference.predict", description=__doc__, formatter_class=HelpFormatter,
        allow_abbrev=allow_abbrev,
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="folder with test.csv + test_images/ (or train)")
    ap.add_argument("--out", type=Path, default=Path("submission.csv"), help="submission CSV to write")
    ap.add_argument("--split", choices=("test", "train"), default="test", help="predict test.csv or train.csv")
    add_ensemble_arguments(ap, by_source=True)
    add_domain_arguments(ap)
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in predicted masks")
    ap.add_argument("--min-area", dest="min_area_um2", type=_min_area, default={}, metavar="UM2|JSON",
                    help="drop components under this area in um^2 (number or organ JSON)")
    ap.add_argument("--save-probs", type=Path, help="write DIR/<id>.npy float16 FTU probabilities")
    ap.add_argument("--save-probs-max-side", type=positive_int, default=1024,
                    help="longer side of saved probability maps")
    ap.add_argument("--max-image-side", type=bounded(int, 1, zero_is_none=True), default=MAX_IMAGE_SIDE,
                    help="refuse images (declared in the CSV or in the TIFF header) with a longer side, as bad "
                         "rows, before decoding (0: no cap)")
    ap.add_argument("--folds", type=Path,
                    help="folds.csv (id,fold): each checkpoint predicts only its own validation fold's images")
    ap.add_argument("--time-budget", type=positive_float,
                    help="seconds (> 0) for the whole run (from start-up): drop stain TTA, then TTA ratios, then flip "
                         "views, then the lowest-weight members, then working scale to finish inside it")
    ap.add_argument("--journal", type=Path,
                    help="journal of finished rows, resumed by a re-run of the same command; None: OUT.journal")
    ap.add_argument("--limit", type=bounded(int, 1), help="predict only the first N rows (smoke runs)")
    return ap


def options_from_args(args: argparse.Namespace) -> Options:
    """Options of a parsed command line (no flags gives exactly Options())."""
    options = Options.from_args(args)
    if "reinhard" in options.stain_tta:
        from inference.stain import load_reference

        if not load_reference(options.stain_reference).has_reinhard:
            raise ValueError(f"--stain-tta reinhard: --stain-reference {options.stain_reference} has no Reinhard "
                             "statistics; refit it with python -m inference.stain, or pass --stain-tta macenko")
    return options
