"""Import annotated images as users have them into a competition-layout data folder.

    python -m data_prep.import_annotations --images DIR_OR_FILES [...] --out DATA --organ ORGAN --data-source SRC
        [--annotations DIR] [--format auto|labelme|imagej|mask|geojson] [--mask-suffix _anno] [--labels A,B]
        [--split train|test | --images-only] [--stain S] [--pixel-size UM] [--tissue-thickness UM] [--table CSV]
        [--id-from number|stem] [--id-start N] [--allow-empty] [--skip-unpaired] [--tolerance 2]

Images (JPEG, PNG, TIFF incl. LZW / JPEG-compressed tiles) are paired by file stem with one annotation each:
- labelme: LabelMe JSON (`X.json`): `shapes[]` of shape_type polygon, rectangle or circle; `imageHeight` /
  `imageWidth` must match the image. Points are pixel-centre coordinates (LabelMe's own convention).
- imagej: ImageJ ROI sets (`X.roi.zip`, `X.zip`) or single ROIs (`X.roi`), read with roifile: polygon, freehand,
  traced, oval and rectangle ROIs; composite (shape) ROIs fill even-odd, so their inner paths are holes.
- geojson: QuPath / GeoJSON exports (`X.geojson`, or `X.json` holding GeoJSON): a FeatureCollection, a bare list
  of features or one Feature; Polygon and MultiPolygon with holes; the label is QuPath's
  `properties.classification.name` (else `properties.name` / `label` / `class`).
- mask: mask images (`X<suffix>.png` / `.tif` beside the image with --mask-suffix, e.g. `_anno`, or `X.png` in
  another --annotations folder): binary 0/255 or 0/1 (FTUs are 8-connected components), or integer instance ids
  (one FTU per distinct non-zero value); RGB masks count one FTU per distinct colour.
`--format auto` picks the format from each annotation file's suffix and, for `.json`, its content.
Polygons are rasterised by cv2.fillPoly over their vertices rounded to whole pixels, holes cut out. LabelMe points
are pixel centres and the outline's pixels count inside (as LabelMe's own mask export). ImageJ and QuPath points
are pixel corners (pixel (x, y) spans [x, x + 1)): the fill is intersected with itself moved by one pixel, so a
traced outline gives exactly the pixels it encloses, as ImageJ's own mask. Rectangles are filled exactly: ImageJ's
as [left, right) x [top, bottom), LabelMe's including both corner points.

--labels keeps the LabelMe shapes / GeoJSON features whose label is one of the given names (case ignored); the
others are ignored (ImageJ ROIs and masks have no labels: every ROI / instance is an FTU).

Output, under --out DATA:
- --split train: train.csv (id, organ, data_source, img_height, img_width, pixel_size, tissue_thickness, rle, age,
  sex, stain, source_file) and train_images/<id>.tiff (RGB uint8, tifffile);
- --split test: test.csv (the same less rle / age / sex), test_solution.csv, sample_submission.csv and
  test_images/<id>.tiff, as data_prep.real_masks writes them;
- --images-only: targets/<id>.tiff and targets/targets.csv (id, organ, data_source, img_height, img_width,
  pixel_size, tissue_thickness, stain, source_file; no masks), the unlabeled table data_prep.stain_copies,
  histogram matching and `train.pseudo_label --images DATA/targets --table DATA/targets/targets.csv` read.
Masks are column-major RLE (inference.rle). Ids are integers, as the competition tables require: numbered from
--id-start (or after the largest id already in DATA) by sorted source_file (`<folder>/<file name>`), or the
file stems themselves with --id-from stem. Appending (another call on the same DATA) keeps the rows already there;
an image already imported into the same split keeps its id and is rewritten (a re-run is idempotent); an id or a
source file already used by another image or split is refused.

Metadata per image: --organ, --data-source (HPA or Hubmap), --stain, --pixel-size (um/px; default the organ's
value for the data source, with a note), --tissue-thickness (default the organ's), --age, --sex; a --table CSV
overrides any of them per image (a `file` column, matched by file name or stem, and any of organ, data_source,
stain, pixel_size, tissue_thickness, age, sex, id).

Errors name the file and what to fix; nothing is written unless every image passes: an annotation whose size
differs from its image, a polygon with fewer than 3 distinct points or zero area, points more than --tolerance px
outside the image (within it they are clipped), no FTU left after the label filter (unless --allow-empty), an
image without annotation or an annotation without image (skipped with a warning under --skip-unpaired), an
unknown organ or data source.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
import sys
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from inference.atomic import atomic_write
from inference.cli import HelpFormatter, hidden_alias
from inference.io import ImageReadError, read_image
from inference.organs import DATA_SOURCES, ORGANS, organ, valid_pixel_size
from inference.rle import encode
from inference.tables import SOLUTION_COLUMNS, TEST_COLUMNS, TRAIN_COLUMNS

FORMATS = ("labelme", "imagej", "mask", "geojson")
SPLITS = ("train", "test", "targets")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
EXTRA_COLUMNS = ("stain", "source_file")
TARGET_COLUMNS = ("id", "organ", "data_source", "img_height", "img_width", "pixel_size", "tissue_thickness")
META_FIELDS = ("organ", "data_source", "stain", "pixel_size", "tissue_thickness", "age", "sex")
SAMPLE_RLE = "12 34"  # the placeholder of the competition's sample_submission.csv (as data_prep.make_demo)
EDGE_TOLERANCE = 2.0  # px a point may lie outside the image before it is an error (within it: clipped)
CIRCLE_POINTS = 96  # vertices of the polygon a LabelMe circle becomes
TABLE_KEYS = ("file", "filename", "file_name", "image", "source_file", "name", "stem")


class AnnotationError(ValueError):
    """An annotation or image that cannot become a mask as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class Meta:
    """Per-image metadata of the tables; None means not given (organ defaults apply to pixel size / thickness)."""

    organ: str | None = None
    data_source: str | None = None
    stain: str | None = None
    pixel_size: float | None = None
    tissue_thickness: float | None = None
    age: float | None = None
    sex: str | None = None

    def merged(self, other: Meta | dict | None) -> Meta:
        """This metadata with the fields other gives (not None / NaN / '') replacing it."""
        if other is None:
            return self
        values = other if isinstance(other, dict) else {f: getattr(other, f) for f in META_FIELDS}
        unknown = sorted(set(values) - set(META_FIELDS))
        if unknown:
            raise AnnotationError(f"unknown metadata field(s) {unknown}; expected some of {list(META_FIELDS)}")
        given = {k: v for k, v in values.items() if v is not None and not (isinstance(v, float) and math.isnan(v))
                 and v != ""}
        return replace(self, **given)


@dataclass(frozen=True)
class Item:
    """One image to import and its annotation file (None: images-only), with optional per-image overrides."""

    image: Path
    annotation: Path | None = None
    format: str = "auto"
    meta: Meta | None = None
    id: int | None = None

    @property
    def source_file(self) -> str:
        """`<folder>/<file name>` of the image: the key that makes a re-run find its earlier rows."""
        path = Path(self.image)
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


@dataclass
class Shape:
    """One FTU outline: rings of (x, y) points; rule 'holes' (ring 0 outside, the rest holes) or 'evenodd'
    (composite ImageJ ROIs); corner: pixel-corner coordinates (ImageJ, QuPath; else pixel centres, LabelMe);
    rect (top, left, bottom, right), bottom / right exclusive, is filled exactly."""

    rings: list[np.ndarray]
    where: str
    rule: str = "holes"
    corner: bool = False
    rect: tuple[float, float, float, float] | None = None


@dataclass
class Annotation:
    """A rasterised annotation: the 0/1 mask and its FTU count."""

    mask: np.ndarray
    ftus: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- formats

def detect_format(path: Path) -> str:
    """The annotation format of a file from its suffix and, for JSON, its content."""
    name = path.name.lower()
    if name.endswith((".roi", ".roi.zip", ".zip")):
        return "imagej"
    if name.endswith(".geojson"):
        return "geojson"
    if name.endswith(".json"):
        data = _load_json(path)
        if isinstance(data, dict) and "shapes" in data:
            return "labelme"
        if isinstance(data, list) or (isinstance(data, dict) and data.get("type") in
                                      ("FeatureCollection", "Feature", "Polygon", "MultiPolygon")):
            return "geojson"
        raise AnnotationError(f"{path}: JSON that is neither LabelMe (a 'shapes' list) nor GeoJSON (a Feature, "
                              "FeatureCollection or list of features): pass --format")
    if name.endswith(MASK_SUFFIXES):
        return "mask"
    raise AnnotationError(f"{path}: cannot tell the annotation format from the suffix: pass --format "
                          f"({'|'.join(FORMATS)})")


def _load_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not readable as JSON ({exc})") from exc


def _label_ok(label: object, labels: Sequence[str] | None) -> bool:
    return labels is None or str(label).strip().lower() in {x.strip().lower() for x in labels}


def read_labelme(path: Path, labels: Sequence[str] | None = None) -> tuple[list[Shape], tuple[int, int] | None,
                                                                             list[str]]:
    """LabelMe shapes (those whose label passes the filter), the declared (height, width) and the labels seen."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise AnnotationError(f"{path}: a LabelMe file needs a 'shapes' list")
    size = None
    if data.get("imageHeight") is not None and data.get("imageWidth") is not None:
        size = (int(data["imageHeight"]), int(data["imageWidth"]))
    shapes, seen = [], []
    for k, s in enumerate(data["shapes"]):
        label = s.get("label", "")
        seen.append(str(label))
        if not _label_ok(label, labels):
            continue
        kind = s.get("shape_type") or "polygon"
        where = f"shape {k} (label {label!r}, {kind})"
        points = np.asarray(s.get("points") or [], dtype=np.float64).reshape(-1, 2)
        if kind == "polygon":
            shapes.append(Shape([points], where))
        elif kind == "rectangle":
            if len(points) != 2:
                raise AnnotationError(f"{path}: {where} needs 2 corner points, has {len(points)}")
            (x0, y0), (x1, y1) = points.min(0), points.max(0)
            ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            shapes.append(Shape([ring], where, rect=(y0, x0, y1 + 1, x1 + 1)))  # both corners inside (LabelMe)
        elif kind == "circle":
            if len(points) != 2:
                raise AnnotationError(f"{path}: {where} needs a centre and a point on the circle, has "
                                      f"{len(points)} point(s)")
            radius = float(np.hypot(*(points[1] - points[0])))
            angles = np.linspace(0, 2 * np.pi, CIRCLE_POINTS, endpoint=False)
            ring = points[0] + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
            if radius == 0:
                ring = np.repeat(points[:1], 3, 0)  # fails the distinct-points check with a clear message
            shapes.append(Shape([ring], where))
        else:
            raise AnnotationError(f"{path}: {where} is not an area (polygon, rectangle or circle): delete it, "
                                  "give it another label and filter with --labels, or redraw it as a polygon")
    return shapes, size, seen


def read_imagej(path: Path) -> list[Shape]:
    """Every ROI of an ImageJ .roi file or ROI set (.zip) as a shape; point and line ROIs are an error."""
    import roifile  # pinned in requirements.txt; imported here so the other formats work without it

    try:
        rois = roifile.roiread(path)
    except (OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
        raise AnnotationError(f"{path}: not readable as an ImageJ ROI / ROI set ({type(exc).__name__}: {exc})"
                              ) from exc
    rois = rois if isinstance(rois, list) else [rois]
    kinds = roifile.ROI_TYPE
    shapes = []
    for k, roi in enumerate(rois):
        where = f"ROI {k} ({roi.name or 'unnamed'}, {kinds(roi.roitype).name.lower()})"
        if roi.composite or roi.multi_coordinates is not None:
            rings = [np.asarray(c, np.float64) for c in roi.coordinates(multi=True)]
            shapes.append(Shape(rings, where, rule="evenodd", corner=True))
        elif roi.roitype == kinds.RECT:
            left, top, right, bottom = (float(v) for v in (roi.left, roi.top, roi.right, roi.bottom))
            if roi.subpixelrect:
                left, top, right, bottom = roi.xd, roi.yd, roi.xd + roi.widthd, roi.yd + roi.heightd
            ring = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], np.float64)
            shapes.append(Shape([ring], where, corner=True, rect=(top, left, bottom, right)))
        elif roi.roitype in (kinds.POLYGON, kinds.FREEHAND, kinds.TRACED, kinds.OVAL):
            shapes.append(Shape([np.asarray(roi.coordinates(), np.float64)], where, corner=True))
        else:
            raise AnnotationError(f"{path}: {where} is not an area (polygon, freehand, traced, oval or rectangle):"
                                  " delete it from the ROI set or redraw it as an area")
    return shapes


def _geojson_label(props: dict) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name") is not None:
        return str(cls["name"])
    if isinstance(cls, str):
        return cls
    for key in ("name", "label", "class", "classification_name"):
        if props.get(key) is not None:
            return str(props[key])
    return ""


def _geometry_polygons(geometry: dict, path: Path, where: str) -> list[list]:
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry.get("coordinates") or []]
    if kind == "MultiPolygon":
        return list(geometry.get("coordinates") or [])
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _geometry_polygons(g, path, where)]
    raise AnnotationError(f"{path}: {where} is a {kind}, not an area (Polygon or MultiPolygon): delete it, give it "
                          "another class and filter with --labels, or export areas only")


def read_geojson(path: Path, labels: Sequence[str] | None = None) -> tuple[list[Shape], list[str]]:
    """The Polygon / MultiPolygon parts (one shape each, holes kept) of the features whose label passes."""
    data = _load_json(path)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
    elif isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and data.get("type") in ("Polygon", "MultiPolygon"):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise AnnotationError(f"{path}: GeoJSON needs a FeatureCollection, a list of features or a Feature")
    shapes, seen = [], []
    for k, feature in enumerate(features):
        props = feature.get("properties") or {} if isinstance(feature, dict) else {}
        label = _geojson_label(props)
        seen.append(label)
        if not _label_ok(label, labels):
            continue
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        kind = props.get("objectType", "feature")
        where = f"{kind} {k} (label {label!r})"
        if not geometry:
            raise AnnotationError(f"{path}: {where} has no geometry")
        polygons = _geometry_polygons(geometry, path, where)
        for j, polygon in enumerate(polygons):
            rings = [np.asarray(r, np.float64).reshape(-1, 2)[:, :2] for r in polygon]
            if not rings:
                raise AnnotationError(f"{path}: {where} part {j} has no coordinates")
            shapes.append(Shape(rings, f"{where} part {j}" if len(polygons) > 1 else where, corner=True))
    return shapes, seen


def read_mask(path: Path) -> tuple[np.ndarray, int]:
    """A mask image as (mask 0/1, FTU count): binary masks by 8-connected components, instance masks by ids."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im if im.mode in ("1", "L", "P", "I", "I;16", "I;16B", "F") else im.convert("RGB"))
    except Exception as exc:  # every decoder raises its own types for corrupt files
        raise AnnotationError(f"{path}: cannot read the mask image ({type(exc).__name__}: {exc})") from exc
    arr = np.squeeze(arr)
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if np.all(arr == arr[..., :1]):
            arr = arr[..., 0]
        else:  # colour-coded instances: one id per colour
            _, ids = np.unique(arr.reshape(-1, arr.shape[-1]), axis=0, return_inverse=True)
            black = np.all(arr.reshape(-1, arr.shape[-1]) == 0, axis=1)
            ids = ids.astype(np.int64) + 1
            ids[black] = 0
            arr = ids.reshape(arr.shape[:2])
    if arr.ndim != 2:
        raise AnnotationError(f"{path}: a mask must be a single-channel or RGB image, got shape {arr.shape}")
    values = np.unique(arr)
    foreground = values[values != 0]
    mask = (arr != 0).astype(np.uint8)
    if len(foreground) <= 1:
        count = cv2.connectedComponents(mask, connectivity=8)[0] - 1
    else:
        count = len(foreground)
    return mask, int(count)


# ---------------------------------------------------------------------------------------------- rasterising

def _check_ring(ring: np.ndarray, path: Path, where: str) -> None:
    if len(np.unique(np.round(ring, 6), axis=0)) < 3:
        raise AnnotationError(f"{path}: {where} has fewer than 3 distinct points ({len(ring)} given): delete it "
                              "or redraw it as an area")
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    if not np.isfinite(area) or area <= 1e-9:
        raise AnnotationError(f"{path}: {where} has zero area (its points lie on a line): delete it or redraw it")


def _fill(shape: tuple[int, int], ring: np.ndarray, corner: bool) -> np.ndarray:
    """A boolean layer of one ring by cv2.fillPoly over its vertices rounded to whole pixels.

    cv2.fillPoly fills the pixels whose centres lie inside or on the outline. For pixel-corner outlines (ImageJ,
    QuPath) that adds a row and a column beyond ImageJ's own mask, so the layer is the intersection of the fill
    and the fill moved up-left by one pixel: exactly the pixels inside a traced (axis-aligned) outline.
    """
    pts = np.round(ring).astype(np.int32)
    layer = np.zeros(shape, np.uint8)
    cv2.fillPoly(layer, [pts], 1, lineType=cv2.LINE_8)
    if corner:
        moved = np.zeros(shape, np.uint8)
        cv2.fillPoly(moved, [pts - 1], 1, lineType=cv2.LINE_8)
        layer &= moved
    return layer.astype(bool)


def rasterise(shapes: Sequence[Shape], height: int, width: int, path: Path,
              tolerance: float = EDGE_TOLERANCE) -> np.ndarray:
    """The 0/1 union mask of shapes; a shape that is degenerate or lies beyond tolerance outside is an error."""
    mask = np.zeros((height, width), np.uint8)
    for shape in shapes:
        top = np.array([width, height], np.float64) - (0 if shape.corner else 1)  # last coordinate inside
        for ring in shape.rings:
            if ring.ndim != 2 or ring.shape[1] != 2 or not np.isfinite(ring).all():
                raise AnnotationError(f"{path}: {shape.where} has coordinates that are not finite (x, y) pairs")
            _check_ring(ring, path, shape.where)
            excess = np.maximum(-ring, ring - top).max(1)
            if excess.max() > tolerance:
                worst = ring[np.argmax(excess)]
                raise AnnotationError(
                    f"{path}: {shape.where} has points up to {excess.max():.1f} px outside the {width}x{height} "
                    f"image (e.g. x={worst[0]:.1f}, y={worst[1]:.1f}; up to {tolerance:g} px are clipped): is this "
                    "the annotation of another image, or of the image at another scale?")
        one = np.zeros((height, width), bool)
        if shape.rect is not None:
            y0, x0, y1, x1 = (int(round(v)) for v in shape.rect)
            one[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        else:
            for k, ring in enumerate(shape.rings):
                layer = _fill((height, width), np.clip(ring, 0, top), shape.corner)
                if shape.rule == "evenodd":
                    one ^= layer
                elif k == 0:
                    one |= layer
                else:
                    one &= ~layer
        if not one.any():
            raise AnnotationError(f"{path}: {shape.where} covers no pixel of the image")
        mask[one] = 1
    return mask


# ------------------------------------------------------------------------------------------------- pairing

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _candidates(stem: str, folder: Path, fmt: str, mask_suffix: str, image: Path) -> list[Path]:
    names: list[str] = []
    if fmt in ("auto", "labelme"):
        names.append(f"{stem}.json")
    if fmt in ("auto", "geojson"):
        names += [f"{stem}.geojson", f"{stem}.json"]
    if fmt in ("auto", "imagej"):
        names += [f"{stem}.roi", f"{stem}.roi.zip", f"{stem}.zip"]
    if fmt == "mask" or (fmt == "auto" and (mask_suffix or folder.resolve() != image.parent.resolve())):
        names += [f"{stem}{mask_suffix}{s}" for s in MASK_SUFFIXES]
    found = []
    for name in dict.fromkeys(names):
        path = folder / name
        if path.is_file() and path.resolve() != image.resolve():
            found.append(path)
    return found


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def pair_files(images: Sequence[Path | str], annotations: Path | str | None = None, fmt: str = "auto",
               mask_suffix: str = "", skip_unpaired: bool = False, images_only: bool = False) -> list[Item]:
    """Items pairing each image (files, or every image in folders) with its annotation by file stem.

    annotations: the folder holding the annotation files (default: each image's own folder). An image without
    annotation, or, where images are given as folders, an annotation file without image, is an AnnotationError
    (skip_unpaired: a warning and the file is left out).
    """
    if fmt not in ("auto", *FORMATS):
        raise AnnotationError(f"unknown format {fmt!r}; expected auto or one of {list(FORMATS)}")
    paths: list[Path] = []
    folders: list[Path] = []
    for given in map(Path, images):
        if given.is_dir():
            folders.append(given)
            paths += sorted(p for p in given.iterdir() if p.is_file() and _is_image(p)
                            and not (mask_suffix and p.stem.endswith(mask_suffix)))
        elif given.is_file():
            paths.append(given)
        else:
            raise AnnotationError(f"--images {given}: no such file or folder")
    if not paths:
        raise AnnotationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in images]}")
    if images_only:
        return [Item(p) for p in paths]
    items, used, problems = [], set(), []
    for image in paths:
        folder = Path(annotations) if annotations is not None else image.parent
        found = _candidates(image.stem, folder, fmt, mask_suffix, image)
        if len(found) > 1:
            raise AnnotationError(f"{image}: several annotation files match it ({[f.name for f in found]}): keep "
                                  "one, or pass --format (and --mask-suffix) to say which")
        if not found:
            problems.append(f"{image}: no annotation file found in {folder} (looked for "
                            f"{image.stem}.json / .geojson / .roi / .roi.zip / .zip"
                            f"{f' / {image.stem}{mask_suffix}.png' if mask_suffix else ''}); pass --annotations, "
                            "--mask-suffix or --format, or --images-only for unlabeled images")
            continue
        used.add(found[0].resolve())
        items.append(Item(image, found[0], fmt))
    scanned = {Path(annotations)} if annotations is not None and folders else set(folders)
    for folder in sorted(scanned):
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.resolve() in used:
                continue
            name = path.name.lower()
            is_annotation = name.endswith((".json", ".geojson", ".roi", ".zip")) or (
                mask_suffix and _is_image(path) and path.stem.endswith(mask_suffix))
            if not is_annotation:
                continue
            stem = path.stem[:-4] if name.endswith(".roi.zip") else path.stem
            stem = stem[: -len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem
            problems.append(f"{path}: annotation without an image (no {stem}.jpg / .png / .tif among the images): "
                            "add the image, or remove or rename the annotation")
    if problems:
        if not skip_unpaired:
            raise AnnotationError("unpaired files (pass --skip-unpaired to leave them out with a warning):\n  "
                                  + "\n  ".join(problems))
        for p in problems:
            _warn(f"{p}; skipped")
    if not items:
        raise AnnotationError(f"no image in {[str(p) for p in images]} has an annotation")
    return items


# ------------------------------------------------------------------------------------------------- metadata

def read_table(path: Path) -> dict[str, dict]:
    """Per-image overrides from a CSV: key (file name and stem) -> {column: value} of the metadata columns."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"--table {path} not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip().lower() for c in df.columns]
    key = next((c for c in TABLE_KEYS if c in df.columns), None)
    if key is None:
        raise AnnotationError(f"{path}: needs a column naming the image ({' or '.join(TABLE_KEYS)}); found "
                              f"{list(df.columns)}")
    unknown = sorted(set(df.columns) - {key, "id", *META_FIELDS})
    if unknown:
        _warn(f"{path}: column(s) {unknown} ignored (known: id, {', '.join(META_FIELDS)})")
    rows: dict[str, dict] = {}
    for _, r in df.iterrows():
        name = Path(str(r[key]).strip()).name
        values = {c: str(r[c]).strip() for c in ("id", *META_FIELDS) if c in df.columns and str(r[c]).strip()}
        for c in ("pixel_size", "tissue_thickness", "age"):
            if c in values:
                try:
                    values[c] = float(values[c])
                except ValueError as exc:
                    raise AnnotationError(f"{path}: {name}: {c} {values[c]!r} is not a number") from exc
        rows[name] = values
    return rows


def _table_values(table: dict[str, dict], image: Path) -> dict:
    if image.name in table:
        return table[image.name]
    stems = {Path(k).stem: v for k, v in table.items()}
    return stems.get(image.stem, {})


def resolve_meta(meta: Meta, where: str) -> dict:
    """The table values of one image: organ and data source checked, organ defaults for pixel size / thickness."""
    if meta.organ is None:
        raise AnnotationError(f"{where}: no organ: pass --organ (one of {', '.join(ORGANS)}) or an organ column "
                              "in --table")
    if meta.organ not in ORGANS:
        raise AnnotationError(f"{where}: unknown organ {meta.organ!r}; expected one of {', '.join(ORGANS)}")
    if meta.data_source is None:
        raise AnnotationError(f"{where}: no data source: pass --data-source (HPA for DAB-stained, Hubmap for H&E / "
                              "PAS images) or a data_source column in --table")
    if meta.data_source not in DATA_SOURCES:
        raise AnnotationError(f"{where}: unknown data source {meta.data_source!r}; expected one of "
                              f"{', '.join(DATA_SOURCES)}")
    info = organ(meta.organ)
    px = info.pixel_size[meta.data_source] if meta.pixel_size is None else float(meta.pixel_size)
    if not valid_pixel_size(px):
        raise AnnotationError(f"{where}: pixel size {meta.pixel_size} um/px is outside the usable range")
    thickness = info.thickness[meta.data_source] if meta.tissue_thickness is None else float(meta.tissue_thickness)
    return {"organ": meta.organ, "data_source": meta.data_source, "pixel_size": px,
            "tissue_thickness": int(thickness) if thickness == int(thickness) else thickness,
            "age": np.nan if meta.age is None else float(meta.age), "sex": meta.sex or "",
            "stain": meta.stain or ""}


# ---------------------------------------------------------------------------------------------------- import

def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header where the decoder allows, else by reading it."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                if len(shape) >= 3 and shape[-1] <= 4 < shape[-2]:
                    return int(shape[-3]), int(shape[-2])
                return int(shape[-2]), int(shape[-1])
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # a damaged header: the full reader says what is wrong
        return load_image(path).shape[:2]


def load_image(path: Path) -> np.ndarray:
    """An (h, w, 3) uint8 RGB image: TIFF through inference.io.read_image, JPEG / PNG through Pillow."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_image(path, max_side=None)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except Exception:  # Pillow cannot decode it: the fallbacks of read_image (tifffile, OpenCV) and their message
        return read_image(path, max_side=None)


def read_annotation(item: Item, height: int, width: int, labels: Sequence[str] | None = None,
                    tolerance: float = EDGE_TOLERANCE, allow_empty: bool = False) -> Annotation:
    """The mask and FTU count of one item's annotation at the image's (height, width); errors name the file."""
    path = Path(item.annotation)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found (for image {item.image})")
    fmt = detect_format(path) if item.format == "auto" else item.format
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown format {fmt!r}; expected auto or one of {list(FORMATS)}")
    seen: list[str] | None = None
    if fmt == "mask":
        mask, count = read_mask(path)
        if mask.shape != (height, width):
            raise AnnotationError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} px but the image {item.image} "
                                  f"is {width}x{height}: pair the right files or resize the mask (nearest)")
    else:
        if fmt == "labelme":
            shapes, size, seen = read_labelme(path, labels)
            if size is not None and size != (height, width):
                raise AnnotationError(f"{path}: LabelMe imageHeight x imageWidth {size[0]}x{size[1]} differ from "
                                      f"the image {item.image} ({height}x{width}): is it the annotation of another "
                                      "image or of a resized copy?")
        elif fmt == "imagej":
            shapes = read_imagej(path)
        else:
            shapes, seen = read_geojson(path, labels)
        mask = rasterise(shapes, height, width, path, tolerance)
        count = len(shapes)
    if count == 0 and not allow_empty:
        why = f" after --labels {list(labels)} (labels in the file: {sorted(set(seen))})" if labels and seen \
            is not None else ""
        raise AnnotationError(f"{path}: no FTU{why}: fix the label filter or the annotation, or pass --allow-empty "
                              "for an image that truly has none")
    return Annotation(mask, count)


def _existing(out: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for split, path in (("train", out / "train.csv"), ("test", out / "test.csv"),
                        ("targets", out / "targets" / "targets.csv")):
        if path.is_file():
            df = pd.read_csv(path, dtype={"rle": str, "source_file": str, "stain": str}, keep_default_na=False,
                             na_values=[""])
            bad = pd.to_numeric(df["id"], errors="coerce").isna()
            if bad.any():
                raise AnnotationError(f"{path}: ids must be integers, got {df.loc[bad, 'id'].head(5).tolist()}")
            df["id"] = df["id"].astype("int64")
            tables[split] = df
    return tables


def assign_ids(items: Sequence[Item], split: str, existing: dict[str, pd.DataFrame], ids: str = "number",
               id_start: int = 1) -> list[int]:
    """Integer ids for items: explicit ones, an earlier import's id of the same source file, else numbered."""
    if ids not in ("number", "stem"):
        raise AnnotationError(f"ids must be 'number' or 'stem', got {ids!r}")
    owner: dict[int, tuple[str, str]] = {}
    by_source: dict[str, tuple[str, int]] = {}
    for name, df in existing.items():
        sources = df["source_file"] if "source_file" in df.columns else pd.Series([""] * len(df))
        for i, src in zip(df["id"], sources.fillna(""), strict=True):
            owner[int(i)] = (name, str(src))
            if src:
                by_source[str(src)] = (name, int(i))
    result: list[int | None] = [None] * len(items)
    keys = [it.source_file for it in items]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise AnnotationError(f"the same image is given twice: {dup[:5]}")
    for n, item in enumerate(items):
        src = keys[n]
        explicit = item.id
        if explicit is None and ids == "stem":
            if not Path(item.image).stem.isdigit():
                raise AnnotationError(f"{item.image}: --id-from stem needs integer file stems (like 106.jpg); use "
                                      "--id-from number")
            explicit = int(Path(item.image).stem)
        if src in by_source:
            where, old = by_source[src]
            if where != split:
                raise AnnotationError(f"{item.image}: already imported into {where} as id {old}: an image cannot be "
                                      f"in {where} and {split} (remove its row there first)")
            if explicit is not None and explicit != old:
                raise AnnotationError(f"{item.image}: already imported as id {old}, now asked for id {explicit}")
            result[n] = old
            continue
        if explicit is not None:
            if int(explicit) in owner:
                where, other = owner[int(explicit)]
                raise AnnotationError(f"{item.image}: id {explicit} is already used in {where} by "
                                      f"{other or 'another image'}: choose other ids (--id-start, --id-from number)")
            result[n] = int(explicit)
            owner[int(explicit)] = (split, src)
    taken = set(owner) | {r for r in result if r is not None}
    next_id = max([id_start - 1, *taken]) + 1 if taken else id_start
    for n in sorted(range(len(items)), key=lambda k: keys[k]):
        if result[n] is None:
            while next_id in taken:
                next_id += 1
            result[n] = next_id
            taken.add(next_id)
    return [int(r) for r in result]  # type: ignore[arg-type]


def _write_tiff(path: Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, photometric="rgb", compression="zlib")
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_write(path) as handle:
        df.to_csv(handle, index=False, lineterminator="\n")


def _merge(old: pd.DataFrame | None, new: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    if old is not None:
        new = pd.concat([old[~old["id"].isin(new["id"])], new], ignore_index=True)
    for c in columns:
        if c not in new.columns:
            new[c] = ""
    return new.sort_values("id", kind="stable")[list(columns)]


def import_items(items: Sequence[Item], out: Path | str, split: str = "train", meta: Meta | dict | None = None,
                 table: Path | str | None = None, labels: Sequence[str] | None = None, allow_empty: bool = False,
                 ids: str = "number", id_start: int = 1, tolerance: float = EDGE_TOLERANCE,
                 progress: bool = True) -> pd.DataFrame:
    """Import items into the data folder out as split (train, test or targets = images only); return the new rows.

    Every annotation is read and checked before anything is written; the rows carry an extra `ftus` column (FTU
    count) and `area` (mask pixels) for summaries. See the module docstring for the layout and the ids.
    """
    if split not in SPLITS:
        raise AnnotationError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if not items:
        raise AnnotationError("no images to import")
    out = Path(out)
    base = meta if isinstance(meta, Meta) else Meta().merged(meta)
    overrides = read_table(Path(table)) if table is not None else {}
    if overrides:
        names = {Path(it.image).name for it in items} | {Path(it.image).stem for it in items}
        unused = [k for k in overrides if k not in names and Path(k).stem not in names]
        if unused:
            _warn(f"--table rows match no image: {unused[:5]}")
    items = list(items)
    for n, item in enumerate(items):
        values = dict(_table_values(overrides, Path(item.image)))
        table_id = values.pop("id", None)
        if table_id is not None and item.id is None:
            if not str(table_id).isdigit():
                raise AnnotationError(f"--table {table}: id {table_id!r} of {item.image} is not an integer")
            items[n] = replace(item, id=int(table_id))
        items[n] = replace(items[n], meta=base.merged(items[n].meta).merged(values))
    existing = _existing(out)
    new_ids = assign_ids(items, split, existing, ids, id_start)

    rows, problems = [], []
    for item, image_id in tqdm(list(zip(items, new_ids, strict=True)), desc="check annotations", unit="img",
                               disable=not progress, leave=False):
        try:
            if split != "targets" and item.annotation is None:
                raise AnnotationError(f"{item.image}: no annotation (use the images-only mode for unlabeled images)")
            if not Path(item.image).is_file():
                raise AnnotationError(f"{item.image}: image file not found (annotation {item.annotation})")
            row = {"id": image_id, **resolve_meta(item.meta or Meta(), str(item.image))}
            height, width = image_size(Path(item.image))
            row.update(img_height=height, img_width=width, source_file=item.source_file, ftus=0, area=0)
            if split != "targets":
                ann = read_annotation(item, height, width, labels, tolerance, allow_empty)
                row.update(rle=encode(ann.mask), ftus=ann.ftus, area=int(ann.mask.sum()))
            rows.append(row)
        except (AnnotationError, ImageReadError) as exc:
            problems.append(str(exc))
    if problems:
        raise AnnotationError(f"{len(problems)} of {len(items)} image(s) cannot be imported; nothing was written:\n"
                              "  " + "\n  ".join(problems))

    folder = out / ("targets" if split == "targets" else f"{split}_images")
    folder.mkdir(parents=True, exist_ok=True)
    for item, row in tqdm(list(zip(items, rows, strict=True)), desc=f"import {split}", unit="img",
                          disable=not progress):
        image = load_image(Path(item.image))
        if image.shape[:2] != (row["img_height"], row["img_width"]):
            raise AnnotationError(f"{item.image}: decodes to {image.shape[1]}x{image.shape[0]} px but its header "
                                  f"says {row['img_width']}x{row['img_height']}")
        _write_tiff(folder / f"{row['id']}.tiff", image)
    new = pd.DataFrame(rows)
    if split == "train":
        _write_csv(out / "train.csv", _merge(existing.get("train"), new, (*TRAIN_COLUMNS, *EXTRA_COLUMNS)))
    elif split == "test":
        test = _merge(existing.get("test"), new, (*TEST_COLUMNS, *EXTRA_COLUMNS))
        solution_path = out / "test_solution.csv"
        old_solution = pd.read_csv(solution_path, dtype={"rle": str}, keep_default_na=False) \
            if solution_path.is_file() else None
        solution_columns = ("id", "organ", "data_source", *[c for c in SOLUTION_COLUMNS if c not in ("id", "organ")])
        solution = _merge(old_solution, new, solution_columns)
        _write_csv(out / "test.csv", test)
        _write_csv(solution_path, solution)
        _write_csv(out / "sample_submission.csv", test[["id"]].assign(rle=SAMPLE_RLE))
    else:
        _write_csv(out / "targets" / "targets.csv",
                   _merge(existing.get("targets"), new, (*TARGET_COLUMNS, *EXTRA_COLUMNS)))
    return new


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per organ: images, FTU count and mask area share (%) of the rows import_items returned."""
    pixels = rows["img_height"] * rows["img_width"]
    table = rows.assign(pixels=pixels).groupby("organ").agg(
        images=("id", "size"), ftus=("ftus", "sum"), area=("area", "sum"), pixels=("pixels", "sum"))
    table["area_%"] = (100 * table["area"] / table["pixels"]).round(2)
    return table[["images", "ftus", "area_%"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.import_annotations", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders of images")
    ap.add_argument("--annotations", type=Path, help="folder of the annotation files (default: the images' own)")
    ap.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="annotation format")
    ap.add_argument("--mask-suffix", default="", help="mask files are <stem><suffix>.png, e.g. _anno")
    ap.add_argument("--labels", help="comma-separated LabelMe labels / QuPath classes that are FTUs (default: all)")
    ap.add_argument("--out", type=Path, required=True, help="data folder to write or append to")
    ap.add_argument("--split", default="train", choices=("train", "test"), help="which tables to write")
    ap.add_argument("--images-only", action="store_true", help="unlabeled images: DATA/targets/ and targets.csv")
    ap.add_argument("--organ", choices=ORGANS, help="organ of every image (or an organ column in --table)")
    ap.add_argument("--data-source", choices=DATA_SOURCES, help="HPA (DAB-stained) or Hubmap (H&E / PAS)")
    ap.add_argument("--stain", help="stain, e.g. PAS, H&E, DAB (the extra `stain` column)")
    ap.add_argument("--pixel-size", type=float, help="um/px (default: the organ's value for the data source)")
    ap.add_argument("--tissue-thickness", type=float, help="um (default: the organ's value for the data source)")
    ap.add_argument("--age", type=float, help="donor age (train.csv)")
    ap.add_argument("--sex", help="donor sex (train.csv)")
    ap.add_argument("--table", type=Path, help="CSV of per-image overrides keyed by a file (name or stem) column")
    ap.add_argument("--id-from", dest="ids", default="number", choices=("number", "stem"),
                    help="number images by sorted file name, or use integer file stems as ids")
    ap.add_argument("--id-start", type=int, default=1, help="first id numbered (after any id already in DATA)")
    hidden_alias(ap, "--ids", "--id-from")  # the old spelling; --ids is a list of ids in inference.overlay
    ap.add_argument("--allow-empty", action="store_true", help="an annotation without FTU gives an empty mask")
    ap.add_argument("--skip-unpaired", action="store_true", help="warn about and skip unpaired files")
    ap.add_argument("--tolerance", type=float, default=EDGE_TOLERANCE,
                    help="px a point may lie outside the image (clipped); beyond it is an error")
    args = ap.parse_args(argv)
    labels = [s for s in (args.labels or "").split(",") if s.strip()] or None
    meta = Meta(organ=args.organ, data_source=args.data_source, stain=args.stain, pixel_size=args.pixel_size,
                tissue_thickness=args.tissue_thickness, age=args.age, sex=args.sex)
    split = "targets" if args.images_only else args.split
    try:
        items = pair_files(args.images, args.annotations, args.format, args.mask_suffix, args.skip_unpaired,
                           images_only=args.images_only)
        if args.pixel_size is None and (args.table is None or "pixel_size" not in
                                        pd.read_csv(args.table, nrows=0).columns.str.lower()):
            print("note: no --pixel-size: each image takes its organ's pixel size for its data source "
                  "(inference.organs); pass the scanner's um/px where known", file=sys.stderr)
        rows = import_items(items, args.out, split, meta, args.table, labels, args.allow_empty, args.ids,
                            args.id_start, args.tolerance)
    except (AnnotationError, ImageReadError) as exc:
        ap.error(str(exc))
    where = args.out / ("targets/targets.csv" if split == "targets" else f"{split}.csv")
    print(f"{len(rows)} image(s) imported into {where} (ids {rows['id'].min()}-{rows['id'].max()})")
    table = summary(rows)
    print((table[["images"]] if split == "targets" else table).to_string())


if __name__ == "__main__":
    main()
