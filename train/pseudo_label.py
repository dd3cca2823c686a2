"""Pseudo-labels on unlabeled target-domain images: an ensemble's confident masks as an extra train set.

    python -m train.pseudo_label --images DIR --models RUN [RUN ...] --out DATA [--low 0.2] [--high 0.6]
        [--table CSV] [--organ ORGAN] [--data-source Hubmap] [--tta 0|2|4|8] [--scale-mode pixel-size]
        [--stain-reference REF [--stain-tta [macenko,reinhard]]] [--adapt-bn [unseen|all|off]] [--device auto]
        [--overwrite]

DIR holds <id>.tiff images (e.g. HuBMAP H&E / PAS slides cut to images, or make_demo's DEMO/targets/). Their
organ comes from a CSV (--table, default DIR/images.csv: columns id, organ and, optionally, data_source,
pixel_size, tissue_thickness, img_height, img_width) or from --organ for every image. Each image is predicted
through the submission path (inference.predict.predict_one with inference.predict's Options: the same
predictors, scale rule, sliding window, TTA and ensemble mean; multiclass members take the given organ), and
its ensemble FTU probability p becomes a label: FTU where p >= high, background where p <= low, and an ignore
band in between that no loss counts. The ensemble and domain flags are inference.predict's own
(add_ensemble_arguments, add_domain_arguments), so the teacher predicts as the kernel would, AdaBN included: by
default (--adapt-bn unseen) a member adapts its encoder BatchNorm statistics on each (data_source, organ) group of
DIR's table that its training never saw, which is what makes a DAB-trained teacher label PAS tissue at all
(benchmarks/real_tissue.py). --stain-reference / --stain-tta are inference.predict's: the teacher predicts
the image normalised to the training stain (or, with --stain-tta, averages it as is and normalised); the image
written to DATA is always the one read, so the student trains on the target domain's own stain.

Writes DATA in the competition train layout, which `python -m data_prep.tiles ... --extra-data DATA` tiles into
training-only rows (fold -1, never validation) that both trainers read: DATA/train.csv (train.csv's columns,
rle = the confident FTU mask, plus ignore_rle = the band, pseudo = 1, fg_fraction, ignore_fraction) and
DATA/train_images/<id>.tiff. DATA/pseudo_label.json records the settings; finished images (DATA/parts/<id>.json)
are skipped on a re-run, other settings need --overwrite.

The labels of a fold-k model's pseudo-labelled images may carry what other folds' models learnt from fold k's
images; that leaks nothing into validation (pseudo rows never validate), but CV then scores a model that saw
teachers trained on its validation images. Teachers trained with --fold -1 make that explicit.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from inference.atomic import atomic_write, write_json, write_text
from inference.cli import HelpFormatter
from inference.engine.adapt_bn import adapt_batchnorm
from inference.engine.ensemble import add_ensemble_arguments
from inference.io import write_image
from inference.organs import DATA_SOURCES, ORGANS
from inference.organs import organ as organ_info
from inference.predict import Options, load_members, options_from_args, predict_one, table_images
from inference.rle import encode
from inference.submission.options import add_domain_arguments
from inference.tables import TRAIN_COLUMNS

log = logging.getLogger("train.pseudo_label")

TABLE_NAME = "images.csv"
EXTRA_COLUMNS = ("ignore_rle", "pseudo", "fg_fraction", "ignore_fraction")


class PseudoLabelError(ValueError):
    """Inputs that cannot be pseudo-labelled as given (no organ, unknown ids, other settings)."""


@dataclass(frozen=True)
class PseudoSettings:
    models: tuple[str, ...]
    low: float
    high: float
    tta: int
    scale_mode: str
    ensemble: str
    stain_reference: str | None = None
    stain_tta: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None
    blend: str = "gaussian"
    adapt_bn: str = "off"  # the AdaBN the teacher predicted with (mode, groups, windows, images, min images)
    adapt_bn_groups: str = ""
    adapt_bn_windows: int = 0
    adapt_bn_images: int = 0
    adapt_bn_min_images: int = 0


def _adapt_bn_record(options: Options) -> dict:
    """PseudoSettings' adapt_bn* fields as the teacher used them (Options has the same names); none when AdaBN is
    off, so the record of a run without it keeps the fields' defaults."""
    if options.adapt_bn == "off":
        return {}
    return {f.name: getattr(options, f.name) for f in fields(PseudoSettings) if f.name.startswith("adapt_bn")}


def pseudo_label(probability: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """(confident FTU mask p >= high, ignore band low < p < high) of an FTU probability map."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= low <= high <= 1, got low={low}, high={high}")
    confident = probability >= high
    return confident, (probability > low) & ~confident


def image_table(images: Path, table: Path | None, organ: str | None, data_source: str) -> pd.DataFrame:
    """One row per image to label: id, organ, data_source, pixel_size, tissue_thickness, img_height, img_width.

    Missing pixel sizes and thicknesses take the organ's value for the data source (inference.organs);
    img_height / img_width of 0 mean "as the image is".
    """
    table = table if table is not None else (images / TABLE_NAME if (images / TABLE_NAME).is_file() else None)
    if table is not None:
        if not table.is_file():
            raise PseudoLabelError(f"--table {table} not found")
        df = pd.read_csv(table, dtype={"id": str})
        if "id" not in df or ("organ" not in df and organ is None):
            raise PseudoLabelError(f"{table}: needs an id column and an organ column (or pass --organ)")
        if organ is not None:
            df["organ"] = organ
    else:
        ids = sorted(p.stem for p in images.glob("*.tiff"))
        if not ids:
            raise PseudoLabelError(f"no <id>.tiff images in {images}")
        if organ is None:
            raise PseudoLabelError(f"{images} has no {TABLE_NAME}: pass --organ (or --table CSV with an organ column)")
        df = pd.DataFrame({"id": ids, "organ": organ})
    bad_ids = [i for i in df["id"] if not str(i).isdigit()]
    if bad_ids:
        raise PseudoLabelError(f"image ids must be integers like the competition's, got {bad_ids[:5]}")
    unknown = sorted(set(df["organ"]) - set(ORGANS))
    if unknown:
        raise PseudoLabelError(f"unknown organ(s) {unknown}; expected one of {list(ORGANS)}")
    if "data_source" not in df:
        df["data_source"] = data_source
    df["data_source"] = df["data_source"].fillna(data_source)
    if sorted(set(df["data_source"]) - set(DATA_SOURCES)):
        raise PseudoLabelError(f"data_source must be one of {list(DATA_SOURCES)}, got {sorted(set(df['data_source']))}")
    for column, attribute in (("pixel_size", "pixel_size"), ("tissue_thickness", "thickness")):
        default = [getattr(organ_info(o), attribute)[s] for o, s in zip(df["organ"], df["data_source"], strict=True)]
        df[column] = df[column].fillna(pd.Series(default, index=df.index)) if column in df else default
    for column in ("img_height", "img_width"):
        df[column] = df[column].fillna(0).astype(int) if column in df else 0
    missing = [i for i in df["id"] if not (images / f"{i}.tiff").is_file()]
    if missing:
        raise PseudoLabelError(f"{len(missing)} image(s) of the table are not in {images} (e.g. {missing[:5]}.tiff)")
    return df.reset_index(drop=True)


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    record = out / "pseudo_label.json"
    if overwrite:
        for sub in ("train_images", "parts"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("train.csv", "pseudo_label.json"):
            (out / name).unlink(missing_ok=True)
    elif record.is_file() and json.loads(record.read_text()) != settings:
        raise PseudoLabelError(
            f"{out} holds pseudo-labels made with {json.loads(record.read_text())}, not {settings}; "
            "pass --overwrite or choose another --out"
        )
    for sub in ("train_images", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps(settings, indent=2) + "\n")


def run_pseudo_labels(
    images: Path,
    models: list[Path],
    out: Path,
    low: float = 0.2,
    high: float = 0.6,
    table: Path | None = None,
    organ: str | None = None,
    data_source: str = "Hubmap",
    options: Options | None = None,
    device: str = "auto",
    batch_size: int = 4,
    overwrite: bool = False,
    weights: list[float] | None = None,
    blend: str = "gaussian",
) -> pd.DataFrame:
    """Pseudo-label every image of DIR with the ensemble of `models` into the train set `out`; return train.csv.

    The teacher predicts as inference.predict does with `options`, AdaBN included (by default on the groups of data
    sources a member never trained on: the unlabeled target domain is exactly such a group), over every image of the
    table, so a resumed run adapts as the first did.
    """
    images, out = Path(images), Path(out)
    options = options or Options()
    options.use_organ = True  # the organ is known: multiclass members take its class, not the majority's
    pseudo_label(np.zeros((1, 1), np.float32), low, high)  # validates the thresholds before any work
    rows = image_table(images, table, organ, data_source)
    settings = asdict(PseudoSettings(
        models=tuple(str(Path(m).resolve()) for m in models), low=float(low), high=float(high), tta=options.tta,
        scale_mode=options.scale_mode, ensemble=options.ensemble, stain_reference=options.stain_reference,
        stain_tta=options.stain_tta, weights=tuple(float(w) for w in weights) if weights else None, blend=blend,
        **_adapt_bn_record(options),
    ))
    _check_settings(out, json.loads(json.dumps(settings)), overwrite)
    todo = rows[[not (out / "parts" / f"{i}.json").is_file() for i in rows["id"]]]
    print(f"pseudo_label: {len(rows)} images, {len(rows) - len(todo)} already done, {len(todo)} to label into {out}")
    if len(todo):
        members = load_members([Path(m) for m in models], weights, device, batch_size, blend)
        adaptation = None
        if options.adapt_bn != "off":
            adaptation = adapt_batchnorm(rows, images, members, stain_reference=options.image_reference,
                                         **options.adapt_bn_arguments())
        try:
            _label_images(todo, images, out, members, options, adaptation, low, high)
        finally:
            if adaptation is not None:
                adaptation.restore()
    parts = [json.loads((out / "parts" / f"{i}.json").read_text()) for i in rows["id"]]
    train = pd.DataFrame(parts, columns=[*TRAIN_COLUMNS, *EXTRA_COLUMNS])
    with atomic_write(out / "train.csv") as handle:
        train.to_csv(handle, index=False, lineterminator="\n")
    return train


def _label_images(todo: pd.DataFrame, images: Path, out: Path, members: list, options: Options,
                  adaptation: object | None, low: float, high: float) -> None:
    """Predict and write each image of `todo` with its part record (DATA/parts/<id>.json)."""
    slots = table_images(todo, images, options.image_reference, options.max_image_side, prefetch=True)
    for slot in tqdm(slots, total=len(todo), desc="pseudo-label", unit="img"):
        row, loaded = slot.row, slot.load()
        if loaded.error is not None:
            raise loaded.error  # an unreadable image is the user's to fix, not an empty label
        image, seen = loaded.image, loaded.seen
        if adaptation is not None:
            adaptation.use(adaptation.key(row), members)
        _, decision = predict_one(seen, row.organ, float(row.pixel_size), members, options,
                                  data_source=row.data_source, image_id=row.id)  # fmt: skip
        confident, band = pseudo_label(decision.probability, low, high)
        write_image(out / "train_images" / f"{row.id}.tiff", image)
        h, w = image.shape[:2]
        write_json(out / "parts" / f"{row.id}.json", indent=None, data={
            "id": int(row.id), "organ": row.organ, "data_source": row.data_source, "img_height": h,
            "img_width": w, "pixel_size": float(row.pixel_size), "tissue_thickness": float(row.tissue_thickness),
            "rle": encode(confident), "age": None, "sex": None, "ignore_rle": encode(band), "pseudo": 1,
            "fg_fraction": round(float(confident.mean()), 6), "ignore_fraction": round(float(band.mean()), 6),
        })  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m train.pseudo_label",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--images", type=Path, required=True, help="folder of unlabeled <id>.tiff images")
    ap.add_argument("--out", type=Path, required=True, help="train set to write (train.csv, train_images/)")
    ap.add_argument("--low", type=float, default=0.2, help="probability at or below which a pixel is background")
    ap.add_argument("--high", type=float, default=0.6, help="probability at or above which a pixel is FTU")
    ap.add_argument("--table", type=Path, help=f"CSV of id, organ[, data_source, pixel_size] (default DIR/{TABLE_NAME})")
    ap.add_argument("--organ", choices=ORGANS, help="organ of every image (overrides the table's)")
    ap.add_argument("--data-source", choices=DATA_SOURCES, default="Hubmap", help="where the table has none")
    add_ensemble_arguments(ap, thresholds=False)  # the teacher predicts as inference.predict does, same flags
    add_domain_arguments(ap)
    ap.add_argument("--overwrite", action="store_true", help="delete DATA's pseudo-labels and redo every image")
    args = ap.parse_args(argv)
    if not 0.0 <= args.low <= args.high <= 1.0:
        ap.error(f"need 0 <= --low <= --high <= 1, got {args.low}, {args.high}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:  # inference.predict's own parse: the same Options fields and its stain-reference checks
        options = options_from_args(args)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        train = run_pseudo_labels(args.images, args.models, args.out, args.low, args.high, args.table, args.organ,
                                  args.data_source, options, args.device, args.batch_size, args.overwrite,
                                  args.weights, args.blend)
    except (PseudoLabelError, FileNotFoundError) as exc:
        ap.error(str(exc))
    summary = train.groupby(["organ", "data_source"])[["fg_fraction", "ignore_fraction"]].agg(["count", "mean"])
    print(f"wrote {args.out / 'train.csv'}: {len(train)} pseudo-labelled images (FTU and ignore-band shares of "
          f"pixels, per organ and data source)\n{summary.round(4).to_string()}\n"
          f"tile them with: python -m data_prep.tiles ... --extra-data {args.out}")


if __name__ == "__main__":
    main()
