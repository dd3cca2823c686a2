"""Tile sets from whole slides: FTU-centred and background tiles at one or several um/px, in data_prep.tiles' format.

    python -m data_prep.wsi_tiles --slides slides.csv --out TILES [--size 256] [--tile-mpp 1.0 --tile-mpp 2.0]
        [--tiles-per-slide 60] [--ratio 2:1] [--centre 32] [--annotation mask|geojson] [--n-folds 5]
        [--context K] [--classes NAME ...] [--seed 0] [--overwrite]

slides.csv (what `python -m data_prep.make_demo --n-slides N` writes): slide_id, slide (path, relative to the
CSV), organ, data_source, and an annotation: `mask` (a 0/255 or class-index mask pyramid of the same level-0
size) and/or `geojson` (FTU polygons in level-0 pixels, holes as inner rings, in any form QuPath writes:
FeatureCollection, plain array of Features, one Feature, bare geometries; --classes keeps only features of
those classification names); optional `mpp` (um per level-0 pixel when the file lacks it) and `fold`.
Without a fold column slides get organ-stratified folds from data_prep.make_folds (folds by slide, so no
slide is in training and validation at once).

Sampling, per slide and per --tile-mpp (Camelyon-style): tissue is Otsu's on a thumbnail (inference.tissue);
positive tiles are centred on a random FTU pixel and kept when the centre square of --centre tile pixels
holds FTU (the tile's label is its centre); negative tiles are centred on random tissue pixels whose centre
square holds none. --ratio P:N sets positives to negatives among --tiles-per-slide. Each tile is read from the
pyramid level nearest its um/px and resized to --size; its mask is the class index of the slide's organ.

--context K (MRN, train/mrn.py) also writes TILES/context/<tile_id>.png: the K x wider square around the same
centre, resized to --size.

Writes TILES/images, TILES/masks and TILES/index.csv in data_prep.tiles' INDEX_COLUMNS (split 0, reduce =
round(tile um/px / slide um/px), boxes in level-0 pixels, image_id = slide_id), so both trainers read it
unchanged; full-image validation reassembles each validation slide from its tiles. Each finished slide
leaves TILES/parts/<slide_id>.csv, so a re-run skips it; other settings need --overwrite or another --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.make_folds import make_folds
from data_prep.tileset import INDEX_COLUMNS, TileSetError, load_index, write_index, write_png, write_rows
from inference.cli import HelpFormatter, hidden_alias
from inference.organs import ORGANS, class_index
from inference.tiling import context_window
from inference.tissue import tissue_cutoff, tissue_fraction, tissue_mask
from inference.wsi.reader import Slide, open_slide, thumbnail


@dataclass(frozen=True)
class WsiTileSettings:
    size: int
    mpps: tuple[float, ...]
    tiles_per_slide: int
    ratio: tuple[int, int]
    centre: int
    annotation: str
    seed: int
    context: int = 1
    classes: tuple[str, ...] = ()  # GeoJSON classification names to keep; () = every class


def _class_name(properties: dict) -> str | None:
    """A QuPath feature's class: classification.name (0.2+), a bare classification string, or pre-0.2 'class'."""
    value = properties.get("classification", properties.get("class"))
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) else None


def geojson_geometries(data: object, classes: tuple[str, ...] = (), name: str = "GeoJSON") -> list[dict]:
    """Polygon / MultiPolygon geometries of any GeoJSON form QuPath writes, optionally of some classes only.

    Forms: a FeatureCollection, a plain array of Features (QuPath's export without "FeatureCollection"), a
    single Feature, a bare geometry (or an array of them), and GeometryCollections inside any of these.
    With `classes`, features of other classes (and unclassified ones) are dropped; bare geometries carry no
    class, so they are refused then.
    """
    items = data if isinstance(data, list) else [data]
    out: list[dict] = []
    for item in items:
        if not isinstance(item, dict):
            raise TileSetError(f"{name}: expected GeoJSON objects, got {type(item).__name__}")
        kind = item.get("type")
        if kind == "FeatureCollection":
            out += geojson_geometries(item.get("features", []), classes, name)
        elif kind == "Feature":
            if classes and _class_name(item.get("properties") or {}) not in classes:
                continue
            out += geojson_geometries(item.get("geometry") or [], (), name)
        elif kind == "GeometryCollection":
            out += geojson_geometries(item.get("geometries", []), classes, name)
        elif kind in ("Polygon", "MultiPolygon"):
            if classes:
                raise TileSetError(f"{name}: --classes needs Features with a classification; found a bare {kind}")
            out.append(item)
        elif kind not in ("Point", "MultiPoint", "LineString", "MultiLineString"):
            raise TileSetError(f"{name}: unknown GeoJSON type {kind!r}")
    return out


class Annotation:
    """FTU truth of one slide: a mask pyramid or GeoJSON polygons, rasterised per region."""

    def __init__(
        self, row: pd.Series, base: Path, kind: str, level0: tuple[int, int], classes: tuple[str, ...] = ()
    ) -> None:
        self.level0 = level0
        self.kind = kind
        if kind == "mask":
            self.mask = open_slide(base / row["mask"])
            if self.mask.dimensions[0] != level0:
                raise TileSetError(f"{row['mask']}: mask is {self.mask.dimensions[0]} px, slide is {level0} (w, h)")
        else:
            path = base / row["geojson"]
            self.polygons: list[list[np.ndarray]] = []
            for geometry in geojson_geometries(json.loads(path.read_text()), classes, str(path)):
                parts = [geometry["coordinates"]] if geometry.get("type") == "Polygon" else (
                    geometry.get("coordinates", []) if geometry.get("type") == "MultiPolygon" else [])
                self.polygons += [[np.asarray(r, np.float64) for r in rings] for rings in parts if rings]
            self.boxes = np.array([[p[0][:, 0].min(), p[0][:, 1].min(), p[0][:, 0].max(), p[0][:, 1].max()]
                                   for p in self.polygons]).reshape(-1, 4)

    def region(self, x0: float, y0: float, side: float, size: int) -> np.ndarray:
        """Bool FTU map of the level-0 square (x0, y0, side) at size x size."""
        if self.kind == "mask":
            level = max((i for i, d in enumerate(self.mask.downsamples) if d <= side / size), default=0)
            ds = self.mask.downsamples[level]
            n = max(1, round(side / ds))
            lx, ly = round(x0 / ds), round(y0 / ds)
            patch = self.mask.read(level, lx, ly, n, n)[..., 0]
            lw, lh = self.mask.dimensions[level]
            rows, cols = ly + np.arange(n), lx + np.arange(n)  # reads pad white (255) outside the slide
            inside = ((rows >= 0) & (rows < lh))[:, None] & ((cols >= 0) & (cols < lw))[None, :]
            return cv2.resize(((patch > 0) & inside).view(np.uint8), (size, size),
                              interpolation=cv2.INTER_NEAREST).astype(bool)
        out = np.zeros((size, size), np.uint8)
        f = size / side
        hit = (self.boxes[:, 0] < x0 + side) & (self.boxes[:, 2] > x0) & (self.boxes[:, 1] < y0 + side) & (
            self.boxes[:, 3] > y0)
        for k in np.flatnonzero(hit):
            # rings run along pixel edges; fillPoly takes pixel-centre coordinates
            rings = [np.round(((r - (x0, y0)) * f - 0.5) * 16).astype(np.int32) for r in self.polygons[k]]
            cv2.fillPoly(out, rings[:1], 1, cv2.LINE_8, 4)
            if len(rings) > 1:
                cv2.fillPoly(out, rings[1:], 0, cv2.LINE_8, 4)
        return out.astype(bool)

    def thumbnail(self, size: tuple[int, int]) -> np.ndarray:
        """Bool FTU map of the whole slide at size=(h, w)."""
        h, w = size
        if self.kind == "mask":
            thumb, _ = thumbnail(self.mask, max(h, w))
            return cv2.resize(thumb[..., 0], (w, h), interpolation=cv2.INTER_AREA) > 0
        out = np.zeros((h, w), np.uint8)
        f = w / self.level0[0]
        for rings in self.polygons:
            pts = [np.round((r * f - 0.5) * 16).astype(np.int32) for r in rings]
            cv2.fillPoly(out, pts[:1], 1, cv2.LINE_8, 4)
        return out.astype(bool)

    def close(self) -> None:
        if self.kind == "mask":
            self.mask.close()


def read_tile(slide: Slide, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """RGB size x size image of the level-0 square (x0, y0, side), from the level nearest its scale."""
    level = max((i for i, d in enumerate(slide.downsamples) if d <= side / size * 1.01), default=0)
    ds = slide.downsamples[level]
    n = max(1, round(side / ds))
    patch = slide.read(level, round(x0 / ds), round(y0 / ds), n, n)
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA) if n != size else patch


def _centre_has(ftu: np.ndarray, centre: int) -> bool:
    size = ftu.shape[0]
    c0 = (size - centre) // 2
    return bool(ftu[c0 : c0 + centre, c0 : c0 + centre].any())


def tile_slide(row: pd.Series, base: Path, out: Path, settings: WsiTileSettings) -> pd.DataFrame:
    """Sample, write and index one slide's tiles; the part CSV written last marks the slide done."""
    rng = np.random.default_rng([settings.seed, int(row["_index"])])
    slide = open_slide(base / row["slide"], mpp=float(row["mpp"]) if "mpp" in row and pd.notna(row["mpp"]) else None)
    if slide.mpp is None:
        raise TileSetError(f"{row['slide']}: no pixel size in the file; add an mpp column to the slides CSV")
    annotation = Annotation(row, base, settings.annotation, slide.dimensions[0], settings.classes)
    try:
        thumb, factor = thumbnail(slide, 1024)
        tissue = tissue_mask(thumb, slide.mpp * factor)
        cutoff = tissue_cutoff(thumb)
        ftu_thumb = annotation.thumbnail(tissue.shape)
        pos_pixels, neg_pixels = np.argwhere(ftu_thumb), np.argwhere(tissue & ~ftu_thumb)
        n_pos = round(settings.tiles_per_slide * settings.ratio[0] / sum(settings.ratio))
        wanted = {True: n_pos if len(pos_pixels) else 0, False: settings.tiles_per_slide - n_pos}
        organ_class = np.uint8(class_index(row["organ"]))
        rows = []
        w0, h0 = slide.dimensions[0]
        for mpp in settings.mpps:
            side = settings.size * mpp / slide.mpp
            reduce = max(1, round(mpp / slide.mpp))
            got = {True: 0, False: 0}
            for positive in (True, False):
                pixels = pos_pixels if positive else neg_pixels
                tries = 0
                while got[positive] < wanted[positive] and len(pixels) and tries < 20 * max(1, wanted[positive]):
                    tries += 1
                    ty, tx = pixels[rng.integers(len(pixels))] + rng.random(2)
                    cx, cy = tx * factor, ty * factor
                    x0, y0 = cx - side / 2, cy - side / 2
                    ftu = annotation.region(x0, y0, side, settings.size)
                    if _centre_has(ftu, settings.centre) != positive:
                        continue  # labelled by its centre: a positive centre must hold FTU, a negative none
                    image = read_tile(slide, x0, y0, side, settings.size)
                    tile_id = f"{row['slide_id']}_m{mpp:g}_{'p' if positive else 'n'}{got[positive]}"
                    write_png(out / "images" / f"{tile_id}.png", image)
                    write_png(out / "masks" / f"{tile_id}.png", ftu.astype(np.uint8) * organ_class)
                    if settings.context > 1:
                        wy, wx, wide_side = context_window(y0, x0, side, settings.context)
                        wide = read_tile(slide, wx, wy, wide_side, settings.size)
                        write_png(out / "context" / f"{tile_id}.png", wide)
                    got[positive] += 1
                    bx0, by0 = round(x0), round(y0)
                    rows.append({
                        "tile_id": tile_id, "image_id": row["slide_id"], "organ": row["organ"],
                        "data_source": row["data_source"], "fold": int(row["fold"]), "split": 0, "reduce": reduce,
                        "x0": bx0, "y0": by0, "x1": bx0 + round(side), "y1": by0 + round(side),
                        "fg_fraction": round(float(ftu.mean()), 6), "image_path": f"images/{tile_id}.png",
                        "mask_path": f"masks/{tile_id}.png", "source": "original", "img_height": h0,
                        "img_width": w0, "tile_pixel_size": round(mpp, 6),
                        "tissue_fraction": round(tissue_fraction(image, cutoff), 6), "parents": "",
                    })
    finally:
        annotation.close()
        slide.close()
    part = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    write_rows(out / "parts" / f"{row['slide_id']}.csv", part)  # written last: every tile of the slide is on disk
    return part


def load_slides(path: Path, n_folds: int, seed: int) -> pd.DataFrame:
    """Read the slides CSV, check it, and give every slide a fold (its own column, else organ-stratified)."""
    table = pd.read_csv(path)
    missing = [c for c in ("slide_id", "slide", "organ", "data_source") if c not in table.columns]
    if missing:
        raise TileSetError(f"{path}: missing column(s) {missing}; see python -m data_prep.wsi_tiles --help")
    unknown = sorted(set(table["organ"]) - set(ORGANS))
    if unknown:
        raise TileSetError(f"{path}: unknown organ(s) {unknown}; expected {list(ORGANS)}")
    table["_index"] = np.arange(len(table))
    if "fold" not in table.columns:
        ids = {o: g["_index"].tolist() for o, g in table.groupby("organ")}
        folds = make_folds(ids, max(2, min(n_folds, len(table))), seed)
        table["fold"] = table["_index"].map(dict(zip(folds["id"], folds["fold"], strict=True)))
    return table


def build_wsi_tiles(
    slides_csv: Path, out: Path, size: int = 256, mpps: tuple[float, ...] = (1.0,), tiles_per_slide: int = 60,
    ratio: tuple[int, int] = (2, 1), centre: int = 32, annotation: str = "mask", n_folds: int = 5, seed: int = 0,
    overwrite: bool = False, context: int = 1, classes: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Tile every slide of a slides CSV (skipping finished ones) and write TILES/index.csv; return it."""
    slides_csv, out = Path(slides_csv), Path(out)
    if not 0 < centre <= size:
        raise ValueError(f"--centre must be in (0, --size]; got {centre} for size {size}")
    if context < 1:
        raise ValueError(f"--context must be >= 1, got {context}")
    if classes and annotation != "geojson":
        raise ValueError("--classes filters GeoJSON classifications; it needs --annotation geojson")
    settings = WsiTileSettings(size, tuple(float(m) for m in mpps), tiles_per_slide, tuple(ratio), centre,
                               annotation, seed, context, tuple(classes))
    table = load_slides(slides_csv, n_folds, seed)
    if annotation not in table.columns:
        raise TileSetError(f"{slides_csv}: --annotation {annotation} needs a {annotation!r} column")
    record = out / "wsi_tiles.json"
    if overwrite:
        for sub in ("images", "masks", "parts", "context"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("index.csv", "wsi_tiles.json"):
            (out / name).unlink(missing_ok=True)
    elif record.is_file() and json.loads(record.read_text()) != json.loads(json.dumps(asdict(settings))):
        raise TileSetError(f"{out} was built with other settings; pass --overwrite or choose another --out")
    for sub in ("images", "masks", "parts", *(("context",) if context > 1 else ())):
        (out / sub).mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    todo = [r for _, r in table.iterrows() if not (out / "parts" / f"{r['slide_id']}.csv").is_file()]
    print(f"wsi_tiles: {len(table)} slides, {len(table) - len(todo)} already done, {len(todo)} to tile into {out}")
    for row in tqdm(todo, desc="wsi tiles", unit="slide"):
        tile_slide(row, slides_csv.parent, out, settings)
    parts = [pd.read_csv(out / "parts" / f"{s}.csv", keep_default_na=False, dtype={"tile_id": str, "parents": str})
             for s in table["slide_id"]]
    frames = [p for p in parts if len(p)]
    index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(INDEX_COLUMNS))
    write_index(out, index)
    return load_index(out)


def _ratio(text: str) -> tuple[int, int]:
    pos, _, neg = text.partition(":")
    if not pos.isdigit() or not neg.isdigit() or int(pos) + int(neg) == 0:
        raise argparse.ArgumentTypeError(f"--ratio takes P:N positive to negative tiles, e.g. 2:1; got {text!r}")
    return int(pos), int(neg)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.wsi_tiles", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("--slides", type=Path, required=True, help="slides CSV (data_prep.make_demo --n-slides writes one)")
    ap.add_argument("--out", type=Path, required=True, help="tile set folder")
    ap.add_argument("--size", type=int, default=256, help="tile side in pixels")
    ap.add_argument("--tile-mpp", type=float, action="append", help="tile um/px (repeatable; unset: 1.0)")
    ap.add_argument("--tiles-per-slide", type=int, default=60, help="tiles per slide and um/px")
    ap.add_argument("--ratio", type=_ratio, default=(2, 1), help="positive:negative tiles")
    ap.add_argument("--centre", type=int, default=32, help="side of the centre square that labels a tile (px)")
    ap.add_argument("--annotation", choices=("mask", "geojson"), default="mask", help="which truth column to use")
    ap.add_argument("--n-folds", type=int, default=5, help="folds by slide when the CSV has no fold column")
    ap.add_argument("--context", type=int, default=1, help="also write a K x wider context view per tile (MRN)")
    ap.add_argument("--classes", action="append",
                    help="with --annotation geojson: keep only features of this QuPath class (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="delete the tile set and redo every slide")
    hidden_alias(ap, "--mpp", "--tile-mpp")  # the old spelling (inference.wsi --mpp is the slide's own um/px)
    args = ap.parse_args(argv)
    try:
        index = build_wsi_tiles(args.slides, args.out, args.size, tuple(args.tile_mpp or (1.0,)), args.tiles_per_slide,
                                args.ratio, args.centre, args.annotation, args.n_folds, args.seed, args.overwrite,
                                args.context, tuple(args.classes or ()))
    except (TileSetError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    counts = index.assign(positive=index["tile_id"].str.contains(r"_p\d+$")).groupby(
        ["organ", "tile_pixel_size", "positive"]).size().rename("tiles")
    print(f"wrote {args.out / 'index.csv'}: {len(index)} tiles of {index['image_id'].nunique()} slides, "
          f"folds {sorted(int(f) for f in index['fold'].unique())}\n{counts.to_string()}")


if __name__ == "__main__":
    main()
