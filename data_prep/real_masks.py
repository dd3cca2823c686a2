"""Semi-real benchmark data: real competition FTU masks, rendered tissue and stain, at physical pixel sizes.

    python -m data_prep.real_masks --out DIR [--rows ../shared/fixtures/hubmap2022/train_rows_sample.csv]
        [--folds folds.csv] [--test-folds 0] [--pixel-size 1.6] [--seed 0] [--swap-stain] [--with-targets]

Every row of --rows (real train rows: organ, size, 0.4 um/px, column-major RLE) is decoded at its true geometry
(inference.rle), so the FTU sizes, counts and spacing are the real ones, then resampled and drawn around with the
tissue and stain model of data_prep.make_demo (Canvas primitives, tissue_layout, stain, and the colour_<organ>
functions its drawers use): each organ's texture is painted inside and outside the real mask (glomerular tuft,
capsule and tubules; gland epithelium and lumen; crypt epithelium, slit lumen and lamina propria; white-pulp
lymphocytes and red pulp; alveolar air and walls).

Split by the committed folds.csv: rows of --test-folds are test images, the rest train images.
- train.csv / train_images: HPA style (hematoxylin + DAB) at --pixel-size um/px.
- test.csv / test_images / test_solution.csv: each test mask twice, HPA style at --pixel-size (id kept) and
  Hubmap style (H&E, PAS for kidney; id + HUBMAP_ID_OFFSET) at the organ's HuBMAP pixel size
  (inference.organs) or --pixel-size where that is coarser: below --pixel-size a finer rendering only adds pixels
  a model at >= --pixel-size throws away, so the information a model sees is the real one at a fraction of the cost
  (prostate is drawn at its real 6.263 um/px: a 1.2 mm section in 190 px).
The CSVs' pixel_size is the um/px each image is rendered at, and the RLE is the real mask re-encoded at that size.
--swap-stain also writes DIR/swap/ (test.csv, test_solution.csv, test_images of the same test masks) with each
test image drawn with the other data source's stain over the same tissue layers: Hubmap rows HPA-stained at the
Hubmap pixel size, HPA rows H&E-stained at --pixel-size. Scoring both folders separates stain from scale.
--with-targets also writes DIR/targets/ (<id>.tiff and targets.csv: id, organ, data_source, img_height, img_width,
pixel_size; no masks): every train mask drawn again Hubmap-style on new tissue at the Hubmap pixel size, the
unlabeled H&E / PAS images that stain transfer, histogram matching and pseudo-labelling take as their target domain.
They come from train folds only, so nothing of the test set leaks through them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.make_demo import (
    SAMPLE_RLE,
    Canvas,
    colour_kidney,
    colour_largeintestine,
    colour_prostate,
    colour_spleen,
    kidney_tubules,
    spleen_trabeculae,
    stain,
    tissue_layout,
)
from inference.cli import HelpFormatter, hidden_alias
from inference.io import write_image
from inference.organs import ORGANS, organ
from inference.rle import decode, encode
from inference.tables import load_train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = REPO.parent / "shared" / "fixtures" / "hubmap2022" / "train_rows_sample.csv"
MASK_PIXEL_SIZE = 0.4  # um/px of every real train mask (HPA)
HUBMAP_ID_OFFSET = 100_000  # Hubmap-style copies of a test mask get id + offset; real ids are below 33000


def resample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 0/1 mask at (height, width) by area coverage >= 0.5; FTUs that would vanish keep their best pixel."""
    if mask.shape == (height, width):
        return mask.astype(np.uint8)
    cover = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    out = (cover >= 0.5).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count > 1:  # a real FTU smaller than a rendered pixel is still a (one-pixel) FTU
        ys, xs = np.nonzero(labels)
        ry = np.minimum((ys * height) // mask.shape[0], height - 1)
        rx = np.minimum((xs * width) // mask.shape[1], width - 1)
        present = np.zeros(count, bool)
        present[labels[ys, xs][out[ry, rx] > 0]] = True
        for k in np.flatnonzero(~present[1:]) + 1:
            sel = labels[ys, xs] == k
            best = np.argmax(cover[ry[sel], rx[sel]])
            out[ry[sel][best], rx[sel][best]] = 1
    return out


def paint_kidney(c: Canvas, ftu: np.ndarray) -> None:
    """Glomeruli on the mask (capsule wall, Bowman's space, lobulated tuft); packed tubules around them."""
    glom = ftu > 0
    tubules = kidney_tubules(c)
    tuft = c.morph(glom, c.rng.uniform(8, 16), cv2.MORPH_ERODE) & (c.noise(12) > -1.2)
    colour_kidney(c, glom, tuft, tubules)


def paint_prostate(c: Canvas, ftu: np.ndarray) -> None:
    """Glands on the mask (basal nuclei, epithelium around a pale lumen) in fibromuscular stroma."""
    gland = ftu > 0
    # An uneven epithelium: the lumen is the gland eroded by 14-22 um, pushed in further where the noise is high.
    lum = c.morph(gland, c.rng.uniform(14, 22), cv2.MORPH_ERODE) & (c.noise(25) < 0.9)
    colour_prostate(c, gland, lum, lum & (c.noise(10) > 2.3))


def paint_largeintestine(c: Canvas, ftu: np.ndarray) -> None:
    """Crypts on the mask (basal nuclei, goblet cells, a slit lumen on the ridge) in a dense lamina propria."""
    cr = ftu > 0
    dist = cv2.distanceTransform(cr.astype(np.uint8), cv2.DIST_L2, 3)
    ridge = (dist >= cv2.dilate(dist, np.ones((3, 3), np.uint8))) & (dist * c.px > 8)
    slit = c.morph(ridge, 2, cv2.MORPH_DILATE) & cr
    colour_largeintestine(c, cr, slit, c.morph(cr, 60, cv2.MORPH_DILATE))


def paint_spleen(c: Canvas, ftu: np.ndarray) -> None:
    """White pulp on the mask (packed lymphocytes, a central arteriole) in red pulp with trabeculae."""
    rng = c.rng
    nod = ftu > 0
    trabeculae = spleen_trabeculae(c)
    arterioles = c.mask()
    count, _, stats, centroids = cv2.connectedComponentsWithStats(nod.astype(np.uint8))
    for k in range(1, count):
        r_um = np.sqrt(stats[k, cv2.CC_STAT_AREA] / np.pi) * c.px
        c.disc(arterioles, *(centroids[k] * c.px + rng.normal(0, 0.2 * r_um, 2)), rng.uniform(8, 16))
    colour_spleen(c, nod, trabeculae, arterioles)


def paint_lung(c: Canvas, ftu: np.ndarray) -> None:
    """Alveolar air on the mask, thin nucleated walls around it; the rest collapsed parenchyma and vessels."""
    air = ftu > 0
    walls = c.morph(air, c.rng.uniform(2, 4), cv2.MORPH_DILATE) & ~air
    dense = ~air & ~walls
    macrophages = c.nuclei(air, 0.25, 6)
    c.cyto[:] = walls * (0.7 + 0.1 * c.noise(8)) + air * 0.02 + 0.4 * macrophages + dense * (0.6 + 0.15 * c.fibres(20, 3))
    c.hema[:] = c.nuclei(walls, 8, 2.6) + c.nuclei(dense, 7, 2.6) + 0.6 * macrophages
    c.target[:] = 0.9 * macrophages + (walls | dense) * 0.15


PAINTERS: dict[str, Callable[[Canvas, np.ndarray], None]] = {
    "kidney": paint_kidney,
    "prostate": paint_prostate,
    "largeintestine": paint_largeintestine,
    "spleen": paint_spleen,
    "lung": paint_lung,
}


def render(
    organ_name: str, mask: np.ndarray, px: float, stains: tuple[str, ...], seed: tuple[int, ...]
) -> list[np.ndarray]:
    """(h, w, 3) uint8 images of one mask (already at px um/px), one per stain, all over the same tissue layers."""
    c = Canvas.blank(np.random.default_rng(seed), px, *mask.shape)
    tissue_layout(c)
    c.ftu[:] = mask
    PAINTERS[organ_name](c, mask)
    c.tissue |= c.morph(mask, 10, cv2.MORPH_DILATE)  # every FTU whole on tissue, with a rim
    images = []
    for k, source in enumerate(stains):
        c.rng = np.random.default_rng((*seed, 1000 + k))  # the stain's own draws; the layers are shared
        images.append(stain(c, source, organ_name))
    return images


def rendered_pixel_size(organ_name: str, data_source: str, pixel_size: float) -> float:
    """um/px an image is drawn at: the source's real pixel size, or pixel_size where that is coarser."""
    return max(organ(organ_name).pixel_size[data_source], pixel_size)


def _row(r: pd.Series, image_id: int, source: str, px: float, mask: np.ndarray) -> dict:
    thickness = organ(r["organ"]).thickness[source]
    return {
        "id": image_id, "organ": r["organ"], "data_source": source, "img_height": mask.shape[0],
        "img_width": mask.shape[1], "pixel_size": round(px, 4),
        "tissue_thickness": int(thickness) if thickness == int(thickness) else thickness,
        "rle": encode(mask), "age": r["age"], "sex": r["sex"],
    }


def make_real_masks(
    out: Path,
    rows_csv: Path = DEFAULT_ROWS,
    folds_csv: Path = REPO / "folds.csv",
    test_folds: tuple[int, ...] = (0,),
    pixel_size: float = 1.6,
    seed: int = 0,
    swap_stain: bool = False,
    targets: bool = False,
) -> Path:
    """Write the benchmark dataset under out (see the module docstring) and return out."""
    if not MASK_PIXEL_SIZE <= pixel_size <= 10:
        raise ValueError(f"pixel_size must be in [{MASK_PIXEL_SIZE}, 10] um/px (the masks are 0.4); got {pixel_size}")
    rows = load_train(rows_csv).drop(columns=["fold"], errors="ignore")
    folds = pd.read_csv(folds_csv, usecols=["id", "fold"])
    rows = rows.merge(folds, on="id", how="left")
    if rows["fold"].isna().any():
        missing = rows.loc[rows["fold"].isna(), "id"].tolist()
        raise ValueError(f"{len(missing)} row(s) of {rows_csv} have no fold in {folds_csv}: ids {missing[:5]}")
    test = rows["fold"].isin(test_folds)
    if not test.any() or test.all():
        raise ValueError(f"test folds {test_folds} leave no test or no train rows (folds {sorted(rows['fold'].unique())})")
    out = Path(out)
    folders = ["train_images", "test_images"] + (["swap/test_images"] if swap_stain else [])
    folders += ["targets"] if targets else []
    for name in folders:
        (out / name).mkdir(parents=True, exist_ok=True)
        for stale in (out / name).glob("*.tiff"):  # left over from a run with other arguments
            stale.unlink()
    train_rows, test_rows, swap_rows, target_rows = [], [], [], []
    for i, r in tqdm(list(rows.iterrows()), desc="real-mask images", unit="mask"):
        full = decode(r["rle"], int(r["img_height"]), int(r["img_width"]))
        image_id, is_test = int(r["id"]), bool(test[i])
        for k, source in enumerate(("HPA", "Hubmap") if is_test else ("HPA",)):
            px = rendered_pixel_size(r["organ"], source, pixel_size) if is_test else pixel_size
            h, w = (max(1, round(n * MASK_PIXEL_SIZE / px)) for n in full.shape)
            mask = resample_mask(full, h, w)
            other = "Hubmap" if source == "HPA" else "HPA"
            stains = (source, other) if swap_stain and is_test else (source,)
            images = render(r["organ"], mask, px, stains, (seed, image_id, k))
            row_id = image_id + (HUBMAP_ID_OFFSET if source == "Hubmap" else 0)
            split = "test" if is_test else "train"
            write_image(out / f"{split}_images" / f"{row_id}.tiff", images[0])
            (test_rows if is_test else train_rows).append(_row(r, row_id, source, px, mask))
            if len(images) > 1:
                write_image(out / "swap" / "test_images" / f"{row_id}.tiff", images[1])
                swap_rows.append(_row(r, row_id, source, px, mask))
        if targets and not is_test:
            px = rendered_pixel_size(r["organ"], "Hubmap", pixel_size)
            h, w = (max(1, round(n * MASK_PIXEL_SIZE / px)) for n in full.shape)
            mask = resample_mask(full, h, w)
            (image,) = render(r["organ"], mask, px, ("Hubmap",), (seed, image_id, 2))  # new tissue, new stain draw
            write_image(out / "targets" / f"{image_id + HUBMAP_ID_OFFSET}.tiff", image)
            target_rows.append(_row(r, image_id + HUBMAP_ID_OFFSET, "Hubmap", px, mask))
    write_tables(out, pd.DataFrame(train_rows), pd.DataFrame(test_rows))
    if swap_stain:
        write_tables(out / "swap", None, pd.DataFrame(swap_rows))
    if targets:
        columns = ["id", "organ", "data_source", "img_height", "img_width", "pixel_size"]
        pd.DataFrame(target_rows)[columns].sort_values("id").to_csv(out / "targets" / "targets.csv", index=False,
                                                                     lineterminator="\n")
    return out


def write_tables(out: Path, train: pd.DataFrame | None, test: pd.DataFrame) -> None:
    """train.csv, test.csv, sample_submission.csv and test_solution.csv in the competition's columns."""
    base = ["id", "organ", "data_source", "img_height", "img_width"]
    test = test.sort_values("id", kind="stable")
    tables = {
        "test.csv": test[[*base, "pixel_size", "tissue_thickness"]],
        "sample_submission.csv": test[["id"]].assign(rle=SAMPLE_RLE),
        "test_solution.csv": test[[*base, "rle"]],
    }
    if train is not None:
        tables["train.csv"] = train.sort_values("id", kind="stable")[
            [*base, "pixel_size", "tissue_thickness", "rle", "age", "sex"]
        ]
    for name, table in tables.items():
        table.to_csv(out / name, index=False, lineterminator="\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m data_prep.real_masks", description=__doc__, formatter_class=HelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="dataset folder to write (created if missing)")
    ap.add_argument("--rows", type=Path, default=DEFAULT_ROWS, help="real train rows with RLE (train.csv columns)")
    ap.add_argument("--folds", type=Path, default=REPO / "folds.csv", help="the committed id -> fold table")
    ap.add_argument("--test-folds", default="0", help="comma-separated folds whose masks become the test set")
    ap.add_argument("--pixel-size", type=float, default=1.6, help="um/px of the HPA images (the finest rendered)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--swap-stain", action="store_true", help="also write DIR/swap: test masks in the other stain")
    ap.add_argument("--with-targets", dest="targets", action="store_true",
                    help="also write DIR/targets: unlabeled H&E / PAS images")
    hidden_alias(ap, "--targets", "--with-targets")  # the old spelling; --targets names images elsewhere
    args = ap.parse_args(argv)
    if not args.rows.is_file():
        ap.error(f"--rows {args.rows} not found (the real rows live in ../shared/fixtures/hubmap2022)")
    if not args.folds.is_file():
        ap.error(f"--folds {args.folds} not found")
    try:
        test_folds = tuple(int(f) for f in args.test_folds.split(","))
    except ValueError:
        ap.error(f"--test-folds must be comma-separated integers, got {args.test_folds!r}")
    start = time.perf_counter()
    try:
        out = make_real_masks(args.out, args.rows, args.folds, test_folds, args.pixel_size, args.seed, args.swap_stain,
                               args.targets)
    except ValueError as err:
        ap.error(str(err))
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    counts = pd.concat([train.assign(split="train"), test.assign(split="test")])
    table = counts.groupby(["organ", "split", "data_source"]).size().unstack(["split", "data_source"], fill_value=0)
    px = test.groupby(["organ", "data_source"])["pixel_size"].first().unstack()
    print(f"wrote {len(train)} train + {len(test)} test images to {out} in {time.perf_counter() - start:.1f} s")
    print(table.reindex(ORGANS).fillna(0).astype(int).sort_index(axis=1).to_string())
    print(f"rendered um/px of the test images:\n{px.reindex(ORGANS).to_string()}")


if __name__ == "__main__":
    main()
