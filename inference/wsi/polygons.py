"""FTU outlines of a slide-sized mask, block by block: one polygon (holes as inner rings) and one table row per FTU.

The mask is any 2-D array that slices like numpy (a zarr array on disk): it is read in blocks plus a halo,
each 8-connected component is emitted once, by the block holding its first pixel in raster order, and a
component reaching the halo's edge is re-read in a window grown around it. Memory is one block, whatever
the slide size. Outlines are traced on a k-upsampled crop (k = 8 for small FTUs) and moved onto the pixel
edges by a mitred shapely buffer of half an upsampled pixel, so polygon areas match pixel counts (within
2% in the tests); coordinates are scaled to level-0 pixels (QuPath's and OpenSlide's frame).

Valid geometry (what QuPath's merge / intersect and shapely need): pixels of one FTU that touch only at a
corner would make a figure-8 ring that visits the corner twice, so such contacts are cut (one sub-pixel of
the upsampled crop on each side) and the FTU becomes a MultiPolygon of its 4-connected parts; the parts are
joined with shapely.union_all and snapped to the 0.01 px grid with shapely.set_precision, both of which
return valid geometry. Every feature carries QuPath's `classification` (the organ's FTU class and colour)
and objectType annotation or detection.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
import shapely.affinity

from inference.atomic import atomic_write

Ring = np.ndarray  # (n, 2) float64 (x, y), closed: the last vertex repeats the first
log = logging.getLogger("inference.wsi.polygons")
MAX_WINDOW = 8192 * 8192  # a component is not followed beyond a window this large (labels: 256 MiB)
MAX_RINGS = 20_000  # beyond this many rings in one FTU, GEOS's buffer / union would take minutes and GBs
OBJECT_TYPES = ("annotation", "detection")
# QuPath classification per organ: the FTU the competition annotates, one colour each (RGB)
FTU_CLASSES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "kidney": ("glomerulus", (230, 60, 60)),
    "prostate": ("gland", (60, 130, 230)),
    "largeintestine": ("crypt", (40, 170, 80)),
    "spleen": ("white pulp", (200, 120, 220)),
    "lung": ("alveolus", (240, 170, 40)),
}
DEFAULT_CLASS = ("FTU", (255, 64, 64))


def ftu_class(organ_or_name: str) -> tuple[str, tuple[int, int, int]]:
    """(class name, colour) of an organ's FTU; any other name is kept as the class, in the default colour."""
    if organ_or_name in FTU_CLASSES:
        return FTU_CLASSES[organ_or_name]
    return (organ_or_name or DEFAULT_CLASS[0], DEFAULT_CLASS[1])


@dataclass
class Ftu:
    """One connected FTU: rings in level-0 pixels and its measurements."""

    polygons: list[list[Ring]]  # [[outer, hole, ...], ...]: one entry unless the outline pinches apart
    x0: float
    y0: float
    x1: float
    y1: float
    centroid_x: float
    centroid_y: float
    area_px: float  # level-0 pixels (mask pixels times the level's downsample squared)
    mean_probability: float | None


def shoelace(ring: Ring) -> float:
    """Absolute area of a closed ring."""
    xy = np.asarray(ring, dtype=np.float64)
    if len(xy) < 3:
        return 0.0
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def polygon_area(polygons: list[list[Ring]]) -> float:
    """Area of outer rings minus their holes."""
    return sum(shoelace(rings[0]) - sum(shoelace(h) for h in rings[1:]) for rings in polygons)


def _cut_corner_contacts(up: np.ndarray, crop: np.ndarray, k: int) -> None:
    """Clear the two upsampled pixels at every corner where crop pixels touch only diagonally (in place)."""
    a = crop
    main = a[:-1, :-1] & a[1:, 1:] & ~a[:-1, 1:] & ~a[1:, :-1]
    anti = a[:-1, 1:] & a[1:, :-1] & ~a[:-1, :-1] & ~a[1:, 1:]
    for pattern, (d0, d1) in ((main, ((-1, -1), (0, 0))), (anti, ((-1, 0), (0, -1)))):
        ys, xs = np.nonzero(pattern)
        if len(ys):
            uy, ux = (ys + 1) * k + 1, (xs + 1) * k + 1  # the shared corner in the 1-padded upsampled crop
            for dy, dx in (d0, d1):
                up[uy + dy, ux + dx] = 0


def _rings_unchecked(contours, hierarchy: np.ndarray, k: int, scale: tuple[float, float],
                     offset: tuple[float, float]) -> list[list[Ring]]:
    """Outer rings with their holes at the boundary pixels' centres, without shapely (pathological FTUs only)."""
    sx, sy = scale
    ox, oy = offset

    def ring(contour: np.ndarray) -> Ring:
        pts = (cv2.approxPolyDP(contour, 1.0, True)[:, 0].astype(np.float64) - 0.5) / k
        xy = np.round(np.stack([(ox + pts[:, 0]) * sx, (oy + pts[:, 1]) * sy], axis=1), 2)
        return np.concatenate([xy, xy[:1]])

    polygons: dict[int, list[Ring]] = {}
    for i, (_, _, _, parent) in enumerate(hierarchy):
        if parent == -1:
            polygons[i] = [ring(contours[i])]
    for i, (_, _, _, parent) in enumerate(hierarchy):
        if parent in polygons and len(contours[i]) >= 3:
            polygons[parent].append(ring(contours[i]))
    return [rings for rings in polygons.values() if len(rings[0]) >= 4]


def outline(crop: np.ndarray, scale: tuple[float, float], offset: tuple[float, float]) -> list[list[Ring]]:
    """Valid pixel-edge polygons of a bool crop: [[outer, holes...], ...], as (x, y) = (offset + edge) * scale."""
    # contours run through the boundary pixels' centres of the k-upsampled crop, 1 / (2k) inside the edge;
    # a mitred buffer by that much puts them back on the pixel edges (the upsampled crop stays <= 16M px)
    k = 8 if crop.size <= 250_000 else 4 if crop.size <= 1_000_000 else 2 if crop.size <= 4_000_000 else 1
    up = cv2.resize(crop.view(np.uint8), None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    _cut_corner_contacts(up, crop, k)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []

    def ring(contour: np.ndarray) -> np.ndarray:
        pts = cv2.approxPolyDP(contour, 1.0, True)[:, 0].astype(np.float64)
        if len(pts) < 3:
            pts = contour[:, 0].astype(np.float64)
        return (pts - 0.5) / k  # crop-pixel units (the upsampled crop is padded by one pixel)

    if len(contours) > MAX_RINGS:
        log.warning("an FTU at (%d, %d) px has %d outline rings (a noisy mask?): traced without the validity pass; "
                    "--fill-holes / --min-area clean such masks", offset[0], offset[1], len(contours))
        return _rings_unchecked(contours, hierarchy[0], k, scale, offset)
    shells: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for i, (_, _, _, parent) in enumerate(hierarchy[0]):
        if parent == -1:
            shells[i], holes[i] = ring(contours[i]), []
    for i, (_, _, _, parent) in enumerate(hierarchy[0]):
        if parent in shells:
            holes[parent].append(ring(contours[i]))
    parts = []
    for i, shell in shells.items():
        distinct = np.unique(shell, axis=0)
        if len(distinct) < 3:  # a sub-pixel dot or a one-sub-pixel-wide line: the square buffer is its area
            line = shapely.Point(distinct[0]) if len(distinct) == 1 else shapely.LineString(distinct)
            parts.append(shapely.buffer(line, 0.5 / k, cap_style="square", join_style="mitre"))
            continue
        polygon = shapely.Polygon(shell, [h for h in holes[i] if len(np.unique(h, axis=0)) >= 3])
        if not polygon.is_valid:  # approxPolyDP can still make a ring touch itself
            polygon = shapely.make_valid(polygon)
        parts.append(shapely.buffer(polygon, 0.5 / k, join_style="mitre", mitre_limit=2.0))
    sx, sy = scale
    ox, oy = offset
    # the union keeps parts that touch at a point apart and merges any that the buffer made overlap;
    # the 0.01 px grid of the written coordinates is applied by GEOS so the result stays valid
    geometry = shapely.affinity.affine_transform(shapely.union_all(parts), [sx, 0, 0, sy, ox * sx, oy * sy])
    geometry = shapely.set_precision(geometry, 0.01)
    polygons = [g for g in getattr(geometry, "geoms", [geometry]) if isinstance(g, shapely.Polygon) and not g.is_empty]
    return [[np.asarray(g.exterior.coords), *(np.asarray(h.coords) for h in g.interiors)] for g in polygons]


def _window(y0: int, x0: int, y1: int, x1: int, halo: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    return max(0, y0 - halo), max(0, x0 - halo), min(shape[0], y1 + halo), min(shape[1], x1 + halo)


def _touches(box: tuple[int, int, int, int], win: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """Does a component's box (y0, x0, y1, x1) reach a window edge that is not the mask's edge?"""
    y0, x0, y1, x1 = box
    wy0, wx0, wy1, wx1 = win
    return (y0 == wy0 > 0) or (x0 == wx0 > 0) or (y1 == wy1 < shape[0]) or (x1 == wx1 < shape[1])


def _labels(mask, win: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    wy0, wx0, wy1, wx1 = win
    m = (np.asarray(mask[wy0:wy1, wx0:wx1]) > 0).view(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    return labels, stats


def _holds(crop: np.ndarray, box: tuple[int, int, int, int], point: tuple[int, int]) -> bool:
    """Is mask pixel `point` (y, x) part of the component `crop` at `box`?"""
    y, x = point
    return box[0] <= y < box[2] and box[1] <= x < box[3] and bool(crop[y - box[0], x - box[1]])


def _component(mask, seed: tuple[int, int], box: tuple[int, int, int, int], halo: int) -> tuple[np.ndarray, tuple]:
    """(bool crop, its (y0, x0, y1, x1)) of the component holding `seed`, growing the window until it fits."""
    shape = mask.shape
    while True:
        win = _window(*box, halo, shape)
        labels, stats = _labels(mask, win)
        label = labels[seed[0] - win[0], seed[1] - win[1]]
        left, top, w, h = (int(v) for v in stats[label, :4])
        box = (win[0] + top, win[1] + left, win[0] + top + h, win[1] + left + w)
        area = (win[2] - win[0]) * (win[3] - win[1])
        if _touches(box, win, shape) and area > MAX_WINDOW:
            log.warning("an FTU reaches beyond a %d px window at %s (level px); its outline is cut there", area, seed)
        if not _touches(box, win, shape) or area > MAX_WINDOW:
            crop = labels[top : top + h, left : left + w] == label
            return crop, box
        halo *= 2


def iter_components(mask, block: int = 2048, halo: int = 256) -> Iterator[tuple[np.ndarray, tuple]]:
    """(bool crop, (y0, x0, y1, x1)) of every 8-connected component of a 2-D mask, once, in raster order."""
    shape = tuple(mask.shape)
    for by in range(0, shape[0], block):
        for bx in range(0, shape[1], block):
            core = (by, bx, min(by + block, shape[0]), min(bx + block, shape[1]))
            win = _window(*core, halo, shape)
            labels, stats = _labels(mask, win)
            grown: set[tuple[int, int]] = set()  # pieces of one component that join outside the window
            covered: list[tuple[np.ndarray, tuple]] = []  # components grown from this window: grow each once
            for label in range(1, len(stats)):
                left, top, w, h = (int(v) for v in stats[label, :4])
                box = (win[0] + top, win[1] + left, win[0] + top + h, win[1] + left + w)
                if not _touches(box, win, shape):
                    first = int(np.argmax(labels[top] == label))
                    if core[0] <= box[0] < core[2] and core[1] <= win[1] + first < core[3]:
                        yield labels[top : top + h, left : left + w] == label, box
                    continue  # else another block owns it
                if box[0] < core[0]:
                    continue  # its first row, and so its first pixel, lies above this block
                first = int(np.argmax(labels[top] == label))
                point = (box[0], win[1] + first)
                if any(_holds(c, f, point) for c, f in covered):
                    continue  # a piece of a component already grown (and yielded or left to its owner)
                crop, full = _component(mask, point, box, halo)
                covered.append((crop, full))
                # the owner is the block holding the whole component's first pixel in raster order
                seed = (full[0], full[1] + int(np.argmax(crop[0])))
                if core[0] <= seed[0] < core[2] and core[1] <= seed[1] < core[3] and seed not in grown:
                    grown.add(seed)
                    yield crop, full


def iter_ftus(
    mask, scale: tuple[float, float] = (1.0, 1.0), probability=None, block: int = 2048, halo: int = 256
) -> Iterator[Ftu]:
    """Every 8-connected component of a 2-D mask (nonzero = FTU), once, in raster order of its first pixel.

    `scale` = (sx, sy) level-0 pixels per mask pixel; `probability` (same shape, uint8 0..255) gives each
    FTU's mean probability.
    """
    for crop, box in iter_components(mask, block, halo):
        yield _measure(crop, box, scale, probability)


def _measure(crop: np.ndarray, box: tuple[int, int, int, int], scale: tuple[float, float], probability) -> Ftu:
    sx, sy = scale
    y0, x0, y1, x1 = box
    moments = cv2.moments(crop.view(np.uint8), binaryImage=True)  # no index arrays for huge components
    count = moments["m00"]
    mean_p = None
    if probability is not None:
        mean_p = round(float(np.asarray(probability[y0:y1, x0:x1])[crop].mean()) / 255.0, 4)
    return Ftu(
        polygons=outline(crop, scale, (x0, y0)),
        x0=x0 * sx, y0=y0 * sy, x1=x1 * sx, y1=y1 * sy,
        centroid_x=round(float((moments["m10"] / count + x0 + 0.5) * sx), 2),
        centroid_y=round(float((moments["m01"] / count + y0 + 0.5) * sy), 2),
        area_px=float(count) * sx * sy,
        mean_probability=mean_p,
    )


def _ring_json(ring: Ring, chunk: int = 20000) -> Iterator[str]:
    """JSON text of one ring, a chunk of vertices at a time (huge outlines never become Python lists)."""
    yield "["
    for i in range(0, len(ring), chunk):
        part = ring[i : i + chunk]
        yield ("," if i else "") + ",".join(f"[{x:.2f},{y:.2f}]" for x, y in part)
    yield "]"


def write_feature(
    fh, ftu: Ftu, index: int, name: str, mpp: float | None, objects: str = "annotation", slide: str = ""
) -> None:
    """Write one QuPath-importable GeoJSON feature (Polygon, or MultiPolygon if its parts touch only at corners)."""
    measurements = {"area_px": round(ftu.area_px, 2)}
    if mpp:
        measurements["area_um2"] = round(ftu.area_px * mpp * mpp, 2)
    if ftu.mean_probability is not None:
        measurements["mean_probability"] = ftu.mean_probability
    class_name, colour = ftu_class(name)
    properties = {
        "objectType": objects,
        "name": f"{class_name} {index}",
        "classification": {"name": class_name, "color": list(colour)},
        "isLocked": False,
        "measurements": measurements,
    }
    # QuPath reads "id" as the object's UUID; derived from slide and index so re-runs write identical files
    object_id = uuid.uuid5(uuid.NAMESPACE_URL, f"inference.wsi/{slide}/{index}")
    multi = len(ftu.polygons) > 1
    fh.write(f'{{"type": "Feature", "id": "{object_id}", "geometry": {{"type": '
             f'"{"MultiPolygon" if multi else "Polygon"}", "coordinates": ')
    fh.write("[" if multi else "")
    for p, rings in enumerate(ftu.polygons):
        fh.write(("," if p else "") + "[")
        for r, ring in enumerate(rings):
            fh.write("," if r else "")
            for text in _ring_json(ring):
                fh.write(text)
        fh.write("]")
    fh.write("]" if multi else "")
    fh.write(f"}}, \"properties\": {json.dumps(properties)}}}")


CSV_COLUMNS = ("slide", "ftu_id", "class", "centroid_x", "centroid_y", "x0", "y0", "x1", "y1", "mpp", "area_px",
               "area_um2", "polygon_area_px", "parts", "holes", "mean_probability")


def write_ftus(
    ftus: Iterator[Ftu], geojson_path: Path, csv_path: Path, mpp: float | None, name: str = "FTU",
    slide: str = "", objects: str = "annotation",
) -> dict:
    """Stream FTUs into a GeoJSON FeatureCollection and a CSV (one row each); return totals.

    `name` is an organ (its FTU class and colour, see FTU_CLASSES) or a class name; `slide` fills the
    CSV's slide column; `objects` is QuPath's objectType (annotation: editable; detection: light, many).
    Boxes are whole level-0 pixels (floor / ceil of the scaled component box).
    """
    import pandas as pd

    if objects not in OBJECT_TYPES:
        raise ValueError(f"objects {objects!r} not in {OBJECT_TYPES}")
    class_name, _ = ftu_class(name)
    rows = []
    with atomic_write(geojson_path) as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        for i, ftu in enumerate(ftus, start=1):
            if not ftu.polygons:
                continue
            fh.write(",\n" if rows else "")
            write_feature(fh, ftu, i, name, mpp, objects, slide)
            rows.append({
                "slide": slide, "ftu_id": i, "class": class_name,
                "centroid_x": ftu.centroid_x, "centroid_y": ftu.centroid_y,
                "x0": math.floor(ftu.x0 + 1e-6), "y0": math.floor(ftu.y0 + 1e-6),
                "x1": math.ceil(ftu.x1 - 1e-6), "y1": math.ceil(ftu.y1 - 1e-6),
                "mpp": mpp, "area_px": round(ftu.area_px, 2),
                "area_um2": round(ftu.area_px * mpp * mpp, 2) if mpp else None,
                "polygon_area_px": round(polygon_area(ftu.polygons), 2),
                "parts": len(ftu.polygons), "holes": sum(len(p) - 1 for p in ftu.polygons),
                "mean_probability": ftu.mean_probability,
            })
        fh.write("\n]}\n")
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    with atomic_write(csv_path) as fh:
        table.to_csv(fh, index=False)
    return {"ftus": len(table), "area_px": float(table["area_px"].sum()),
            "polygon_area_px": float(table["polygon_area_px"].sum()), "class": class_name}
