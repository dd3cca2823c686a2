"""Write a small synthetic dataset in the exact competition layout, for demos and tests.

    python -m data_prep.make_demo --out demo/data [--seed 0] [--n-train 40] [--n-test 10] [--n-targets 5]
        [--scale 0.1667]
    python -m data_prep.make_demo --out demo/slides --n-slides N [--slide-size 8192] [--slide-mpp 0.5] [--seed 0]

Writes train.csv, test.csv, sample_submission.csv, train_images/<id>.tiff, test_images/<id>.tiff and
test_solution.csv (the test ground truth, for `python -m inference.score`). Masks are column-major RLE.
It also writes OUT/targets/: unlabeled HuBMAP-like images (H&E, PAS for kidney; organs round-robin, ids from
TARGET_ID_BASE so they never clash with train or test ids) and OUT/targets/images.csv (test.csv's columns),
the target-domain images of data_prep.stain_copies --targets, data_prep.augment's histogram matching and
train.pseudo_label --images.

Each image is drawn in physical units: organ-specific functional tissue units (round glomeruli with a
capsule, lobulated prostate glands with a lumen, rows of elongated crypts, white-pulp nodules, thin-walled
alveoli) on textured tissue with bare-slide gaps, rasterised at the image's pixel size and coloured by a
Beer-Lambert stain model: hematoxylin + DAB for HPA, hematoxylin + eosin (PAS for kidney) for Hubmap.
Train images are HPA and square; test images mix HPA and Hubmap, with non-square sizes, one tiny image
(160 px) and one large one. Test images cover about the tissue extent of a train image, so Hubmap images
have the pixel counts their pixel size implies (large intestine larger, prostate a few dozen pixels).

--n-slides N writes N synthetic whole slides instead (organs round-robin, HuBMAP-like stain, --slide-mpp um/px):
OUT/<slide_id>.ome.tif (tiled pyramidal OME-TIFF, SubIFD levels; every second slide is a generic tiled TIFF
pyramid <slide_id>.tif whose levels OpenSlide also sees), OUT/<slide_id>_mask.tif (0/255 FTU mask pyramid of
the same layout), OUT/<slide_id>.geojson (FTU polygons in level-0 pixels, holes as inner rings) and
OUT/slides.csv (slide_id, slide, mask, geojson, organ, data_source, mpp, width, height). A slide is a section
of random outline on bare glass, drawn in 2048 px patches by the organ drawers below, so memory stays a few
patches plus the slide's uint8 mask.

`scale` shrinks the whole dataset linearly against the real one: a 3000 px HPA image becomes
3000 * scale px and every structure shrinks with it, so images are rendered at pixel_size / scale
micrometres per pixel. The CSVs keep the nominal competition pixel sizes, so the organ table and any
pixel-size rescaling treat demo images like real ones (only ratios between pixel sizes matter).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from inference.cli import HelpFormatter, hidden_alias
from inference.io import write_image
from inference.organs import ORGANS, organ
from inference.rle import encode
from inference.wsi.polygons import iter_ftus, write_ftus
from inference.wsi.reader import write_pyramid

DEFAULT_SCALE = 1 / 6  # 3000 px HPA images become 500 px
FULL_SIDE = 3000  # side of most real HPA train images, in pixels
TINY_SIDE = 160  # the smallest hidden test images
SAMPLE_RLE = "12 34"  # the placeholder the real sample_submission.csv uses
TARGET_ID_BASE = 50000  # above every id plan() draws, so target images can join a train set as extra data
TARGET_MIN_SIDE = TINY_SIDE  # as the smallest real images; enough stained pixels to fit stains (prostate: ~30 px)

# Optical density per unit concentration (RGB), after Ruifrok & Johnston's colour deconvolution vectors.
HEMATOXYLIN = (0.65, 0.70, 0.29)
EOSIN = (0.07, 0.99, 0.11)
DAB = (0.27, 0.57, 0.78)
PAS = (0.28, 0.90, 0.33)


@dataclass
class Canvas:
    """Stain-independent layers one organ drawer paints: tissue, three concentrations, the FTU mask."""

    rng: np.random.Generator
    px: float  # micrometres per pixel at which shapes are rasterised
    tissue: np.ndarray  # bool (h, w): tissue versus bare slide
    hema: np.ndarray  # nuclear stain (hematoxylin)
    cyto: np.ndarray  # cytoplasm and matrix (eosin / PAS; a faint counterstain in HPA)
    target: np.ndarray  # antibody-positive cells (DAB in HPA, extra eosin in H&E)
    ftu: np.ndarray  # uint8 (h, w) ground truth

    @classmethod
    def blank(cls, rng: np.random.Generator, px: float, height: int, width: int) -> Canvas:
        """An empty canvas of one image."""
        layers = (np.zeros((height, width), np.float32) for _ in range(3))
        return cls(rng, px, np.ones((height, width), bool), *layers, np.zeros((height, width), np.uint8))

    @property
    def shape(self) -> tuple[int, int]:
        return self.tissue.shape

    @property
    def extent_um(self) -> tuple[float, float]:
        """Image width and height in micrometres."""
        return self.shape[1] * self.px, self.shape[0] * self.px

    def mask(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)

    def count(self, per_mm2: float) -> int:
        """How many structures of a given density fit on the tissue of this image (at least one)."""
        area_mm2 = self.tissue.sum() * self.px**2 / 1e6
        return max(1, int(self.rng.poisson(per_mm2 * area_mm2)))

    def noise(self, scale_um: float) -> np.ndarray:
        """Zero-mean, unit-variance random field whose features are about scale_um across."""
        h, w = self.shape
        gh = min(h, int(np.ceil(h * self.px / scale_um)) + 2)
        gw = min(w, int(np.ceil(w * self.px / scale_um)) + 2)
        field = cv2.resize(self.rng.standard_normal((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        return (field - field.mean()) / (field.std() + 1e-6)

    def fibres(self, length_um: float, width_um: float) -> np.ndarray:
        """Unit-variance streaky texture (collagen, muscle) running along one random direction."""
        field = self.rng.standard_normal(self.shape, dtype=np.float32)
        field = cv2.GaussianBlur(
            field, (0, 0), sigmaX=max(length_um / self.px, 0.5), sigmaY=max(width_um / self.px, 0.5)
        )
        if self.rng.random() < 0.5:
            field = np.ascontiguousarray(cv2.resize(field.T, self.shape[::-1]))
        return (field - field.mean()) / (field.std() + 1e-6)

    def nuclei(self, region: np.ndarray, per_1000um2: float, radius_um: float) -> np.ndarray:
        """Stain density of randomly placed round nuclei inside region (bool or 0..1 probability)."""
        h, w = self.shape
        n = int(self.rng.poisson(per_1000um2 * h * w * self.px**2 / 1000))
        idx = self.rng.integers(0, h * w, n)
        idx = idx[self.rng.random(n) < region.ravel()[idx]]
        r = radius_um / self.px
        sigma = max(r / np.sqrt(2), 0.5)  # a resolved nucleus peaks at 1; unresolved ones keep their mass
        impulses = np.bincount(idx, minlength=h * w).astype(np.float32).reshape(h, w) * (np.pi * r * r)
        return cv2.GaussianBlur(impulses, (0, 0), sigma) / (2 * np.pi * sigma * sigma)

    def pts(self, xy_um: np.ndarray) -> np.ndarray:
        """Polygon vertices in micrometres as the fixed-point (shift=4) pixel coordinates cv2 draws."""
        return np.round(np.asarray(xy_um) / self.px * 16).astype(np.int32).reshape(-1, 1, 2)

    def xy(self, x_um: float, y_um: float) -> tuple[int, int]:
        """One point in micrometres as fixed-point (shift=4) pixel coordinates."""
        return round(x_um / self.px * 16), round(y_um / self.px * 16)

    def disc(self, mask: np.ndarray, x_um: float, y_um: float, r_um: float, value: int = 1) -> None:
        cv2.circle(mask, self.xy(x_um, y_um), round(r_um / self.px * 16), value, -1, cv2.LINE_8, 4)

    def fill(self, mask: np.ndarray, xy_um: np.ndarray, value: int = 1) -> None:
        cv2.fillPoly(mask, [self.pts(xy_um)], value, cv2.LINE_8, 4)

    def line(self, mask: np.ndarray, xy_um: np.ndarray, width_um: float, value: int = 1) -> None:
        """A thick open polyline with round ends (crypts, trabeculae, slit lumina)."""
        cv2.polylines(mask, [self.pts(xy_um)], False, value, max(1, round(width_um / self.px)), cv2.LINE_8, 4)

    def morph(self, mask: np.ndarray, um: float, op: int) -> np.ndarray:
        """Erode or dilate a mask by um micrometres (at least one pixel)."""
        k = 2 * max(1, round(um / self.px)) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        return cv2.morphologyEx(mask.astype(np.uint8), op, kernel).astype(bool)

    def hex_grid(self, spacing_um: float, jitter: float) -> np.ndarray:
        """Jittered hexagonal grid of points (micrometres) covering the image and a margin."""
        w_um, h_um = self.extent_um
        ys = np.arange(-spacing_um, h_um + spacing_um, spacing_um * np.sqrt(3) / 2)
        xs = np.arange(-spacing_um, w_um + spacing_um, spacing_um)
        gx, gy = np.meshgrid(xs, ys)
        gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing_um / 2
        points = np.stack([gx.ravel(), gy.ravel()], axis=1)
        return points + self.rng.normal(0, jitter * spacing_um, points.shape)

    def scatter(self, allowed: np.ndarray, radii_um: np.ndarray, gap: float = 1.05) -> list[tuple[float, float, float]]:
        """Non-overlapping discs (x, y, r in micrometres) centred on allowed pixels; the first always fits."""
        ys, xs = np.nonzero(allowed)
        if len(xs) == 0:
            ys, xs = np.nonzero(np.ones(self.shape, bool))
        order = self.rng.permutation(len(xs))[: 20 * len(radii_um)]
        placed = np.zeros((len(radii_um), 3))
        n = 0
        for k in order:
            if n == len(radii_um):
                break
            x, y, r = (xs[k] + 0.5) * self.px, (ys[k] + 0.5) * self.px, float(radii_um[n])
            d2 = (placed[:n, 0] - x) ** 2 + (placed[:n, 1] - y) ** 2
            if n == 0 or np.all(d2 >= (gap * (r + placed[:n, 2])) ** 2):
                placed[n] = x, y, r
                n += 1
        return [tuple(p) for p in placed[:n].tolist()]


def blob(
    rng: np.random.Generator,
    x: float,
    y: float,
    radius: float,
    irregularity: float,
    harmonics: int = 5,
    aspect: float = 1.0,
    n: int = 64,
) -> np.ndarray:
    """Closed outline (n, 2) of a lobulated blob: a circle with random low-frequency radial harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, harmonics + 2)[:, None]
    amp = rng.normal(0, irregularity, (len(k), 1)) / np.sqrt(k - 1)
    r = 1 + (amp * np.cos(k * t + rng.uniform(0, 2 * np.pi, (len(k), 1)))).sum(0)
    r = np.clip(r, 0.4, None) * radius
    angle = rng.uniform(0, np.pi)
    u, v = r * np.cos(t) * aspect, r * np.sin(t)
    return np.stack([x + u * np.cos(angle) - v * np.sin(angle), y + u * np.sin(angle) + v * np.cos(angle)], axis=1)


def kidney_tubules(c: Canvas) -> np.ndarray:
    """A uint8 map of packed tubules on a jittered hexagonal grid: 1 epithelium, 2 lumen."""
    rng = c.rng
    r_tub = rng.uniform(20, 28)
    tubules = c.mask()
    for x, y in c.hex_grid(2.1 * r_tub, 0.2):
        a, b, ang = r_tub * rng.uniform(0.9, 1.4), r_tub * rng.uniform(0.7, 1.0), rng.uniform(0, 180)
        cv2.ellipse(tubules, c.xy(x, y), c.xy(a, b), ang, 0, 360, 1, -1, cv2.LINE_8, 4)
        cv2.ellipse(tubules, c.xy(x, y), c.xy(a * 0.35, b * 0.3), ang, 0, 360, 2, -1, cv2.LINE_8, 4)
    return tubules


def colour_kidney(c: Canvas, glom: np.ndarray, tuft: np.ndarray, tubules: np.ndarray) -> None:
    """Fill cyto, hema and target: glomeruli (thin capsule wall, Bowman's space, tuft inside glom) among tubules."""
    wall = glom & ~c.morph(glom, 3, cv2.MORPH_ERODE)
    space = glom & ~tuft & ~wall
    epi, lumen = (tubules == 1) & ~glom, (tubules == 2) & ~glom
    membrane = (cv2.morphologyEx(tubules, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0) & ~glom
    grain = c.noise(5)
    capillaries = c.nuclei(tuft, 5, 3.5)
    c.cyto[:] = 0.1 + epi * (0.5 + 0.1 * grain) + 0.25 * membrane + 0.02 * lumen
    c.cyto[tuft] = 0.3 + 0.08 * grain[tuft]
    c.cyto[wall] += 0.45
    c.cyto[space] = 0.02
    c.cyto -= 0.3 * capillaries
    c.hema[:] = c.nuclei(epi, 4, 3.0) + c.nuclei(~glom & ~epi & ~lumen, 1.5, 2.5) + c.nuclei(wall, 6, 2.5)
    c.hema += c.nuclei(tuft, 22, 2.6) + 0.08 * tuft - 0.3 * capillaries
    c.target[:] = epi * (0.7 + 0.2 * grain)


def draw_kidney(c: Canvas) -> None:
    """Cortex: packed tubules around round glomeruli (lobulated tuft, Bowman's space, thin capsule)."""
    rng = c.rng
    tubules = kidney_tubules(c)
    capsule, tuft = c.mask(), c.mask()
    for x, y, r in c.scatter(c.morph(c.tissue, 60, cv2.MORPH_ERODE), rng.uniform(65, 110, c.count(4.0)), gap=1.4):
        aspect = rng.uniform(0.85, 1.15)
        c.fill(capsule, blob(rng, x, y, r, 0.04, aspect=aspect))
        c.fill(tuft, blob(rng, x + rng.normal(0, 4), y + rng.normal(0, 4), r - rng.uniform(8, 16), 0.12, 7, aspect))
    glom = capsule.astype(bool)
    colour_kidney(c, glom, tuft.astype(bool) & glom, tubules)
    c.ftu |= capsule


def colour_prostate(c: Canvas, gland: np.ndarray, lum: np.ndarray, concretion: np.ndarray) -> None:
    """Fill cyto, hema and target: glands (basal nuclei, epithelium around a pale lumen, concretions) in stroma."""
    epi = gland & ~lum
    basal = gland & ~c.morph(gland, 8, cv2.MORPH_ERODE)
    stroma = ~gland
    fib = c.fibres(25, 3)
    c.cyto[:] = stroma * (0.42 + 0.12 * fib) + epi * (0.5 + 0.1 * c.noise(4)) + lum * (0.06 + 0.04 * c.noise(30))
    c.cyto += 0.6 * concretion
    c.hema[:] = c.nuclei(stroma, 1.2, 2.5) + c.nuclei(basal & epi, 14, 3.0) + c.nuclei(epi & ~basal, 2, 3.0)
    c.target[:] = epi * (0.8 + 0.2 * c.noise(6)) + 0.1 * stroma


def draw_prostate(c: Canvas) -> None:
    """Fibromuscular stroma with irregular, lobulated glands: epithelium with basal nuclei around a pale lumen."""
    rng = c.rng
    gland, lumen, concretion = c.mask(), c.mask(), c.mask()
    n = 64
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    for x, y, r in c.scatter(c.tissue, rng.uniform(70, 220, c.count(9.0)), gap=1.0):
        outer = blob(rng, x, y, r, 0.18, 6, rng.uniform(0.5, 1.0), n)
        # Papillary infoldings: the epithelium thickens in random bumps that reach into the lumen.
        folds = np.clip(np.sin(rng.integers(6, 14) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
        thick = rng.uniform(14, 22) * (1 + rng.uniform(0.5, 2.0) * folds * (rng.random(n) < 0.7))
        centre = outer.mean(0)
        radial = outer - centre
        dist = np.linalg.norm(radial, axis=1, keepdims=True)
        inner = centre + radial * np.clip(1 - thick[:, None] / dist, 0.15, None)
        c.fill(gland, outer)
        c.fill(lumen, inner)
        if rng.random() < 0.15:
            c.disc(concretion, *centre, rng.uniform(6, 14))
    g, lum = gland.astype(bool), lumen.astype(bool) & gland.astype(bool)
    colour_prostate(c, g, lum, concretion.astype(bool) & lum)
    c.ftu |= gland


def colour_largeintestine(c: Canvas, cr: np.ndarray, slit: np.ndarray, mucosa: np.ndarray) -> None:
    """Fill cyto, hema and target: crypts (basal nuclei, goblet cells, slit lumen) in lamina propria, deeper layers."""
    basal = cr & ~c.morph(cr, 8, cv2.MORPH_ERODE)
    goblets = c.nuclei(cr & ~basal, 14, 4.5)
    lamina = mucosa & ~cr
    deep = ~mucosa
    fib = c.fibres(30, 4)
    c.cyto[:] = (
        cr * (0.3 - 0.25 * np.clip(goblets, 0, 1)) + lamina * (0.35 + 0.1 * c.noise(10)) + deep * (0.55 + 0.15 * fib)
    )
    c.cyto[slit] = 0.03
    c.hema[:] = c.nuclei(basal, 22, 2.6) + c.nuclei(lamina, 9, 2.4) + c.nuclei(deep, 1.0, 2.5) + 0.1 * goblets * cr
    c.hema[slit] = 0
    c.target[:] = basal * 0.8 + (cr & ~basal & ~slit) * 0.3 + 0.1 * deep


def draw_largeintestine(c: Canvas) -> None:
    """Mucosa of elongated crypts in rows (or cross-sectioned rings) in a dense lamina propria, over submucosa."""
    rng = c.rng
    h, w = c.shape
    w_um, h_um = c.extent_um
    crypts, slits = c.mask(), c.mask()
    width = rng.uniform(45, 65)
    spacing = width * rng.uniform(1.5, 1.9)
    if rng.random() < 0.6:  # sectioned along the crypts: parallel tubes perpendicular to the surface
        theta = rng.uniform(0, 2 * np.pi)
        along, normal = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
        depth = rng.uniform(350, 550)
        half = 0.5 * np.hypot(w_um, h_um)
        surface = rng.uniform(-0.6, -0.2) * half  # the surface line runs near one side of the image
        centre = np.array([w_um / 2, h_um / 2])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * c.px
        d = (xx - centre[0]) * normal[0] + (yy - centre[1]) * normal[1] - surface
        c.tissue &= d > -10  # the gut lumen above the surface is bare slide
        mucosa = d < depth
        offsets = np.arange(-half, half, spacing)
        for u in offsets + rng.normal(0, 6, len(offsets)):
            start = rng.uniform(15, 40)
            stop = depth - rng.uniform(10, 60)
            ts = np.linspace(start, stop, 5)
            bend = np.cumsum(rng.normal(0, 6, 5))
            xy = centre + (u + bend)[:, None] * along + (surface + ts)[:, None] * normal
            c.line(crypts, xy, width * rng.uniform(0.85, 1.15))
            c.line(slits, xy[1:], rng.uniform(4, 8))
    else:  # sectioned across: round crypt rings packed in the lamina propria
        mucosa = np.ones(c.shape, bool)
        for x, y in c.hex_grid(spacing * 1.1, 0.12):
            r = width / 2 * rng.uniform(0.8, 1.2)
            c.fill(crypts, blob(rng, x, y, r, 0.08, 3, rng.uniform(0.7, 1.0), 32))
            c.disc(slits, x, y, rng.uniform(2, 5))
        if rng.random() < 0.5:  # muscularis under part of the section
            mucosa = c.noise(400) < 0.6
    cr = crypts.astype(bool) & mucosa
    colour_largeintestine(c, cr, slits.astype(bool) & cr, mucosa)
    c.ftu |= cr


def spleen_trabeculae(c: Canvas) -> np.ndarray:
    """A uint8 mask of 0-2 fibrous trabeculae: thick random-walk polylines across the image."""
    rng = c.rng
    trabeculae = c.mask()
    w_um, h_um = c.extent_um
    for _ in range(rng.integers(0, 3)):
        xy = np.cumsum(rng.normal(0, 250, (4, 2)), 0) + rng.uniform(0, 1, 2) * [w_um, h_um]
        c.line(trabeculae, xy, rng.uniform(25, 60))
    return trabeculae


def colour_spleen(c: Canvas, nod: np.ndarray, trabeculae: np.ndarray, arterioles: np.ndarray) -> None:
    """Fill cyto, hema and target: white pulp nod (with its arterioles) in red pulp with sinusoids and trabeculae."""
    trab = trabeculae.astype(bool) & ~nod
    art = arterioles.astype(bool) & nod
    art_lumen = c.morph(art, 5, cv2.MORPH_ERODE)
    margin = c.morph(nod, c.rng.uniform(25, 50), cv2.MORPH_DILATE) & ~nod
    red = ~nod & ~trab
    sinus = (c.noise(12) > 1.1) & red
    c.cyto[:] = red * (0.45 + 0.1 * c.noise(3)) + nod * 0.15 + trab * (0.75 + 0.1 * c.fibres(30, 4))
    c.cyto[sinus] = 0.15
    c.cyto[art] = 0.7
    c.cyto[art_lumen] = 0.03
    c.hema[:] = c.nuclei(red & ~margin, 4, 2.8) + c.nuclei(margin, 12, 2.5) + c.nuclei(nod & ~art, 32, 2.4)
    c.hema += c.nuclei(trab, 0.8, 2.5) + c.nuclei(art & ~art_lumen, 6, 2.5)
    c.hema[art_lumen] = 0
    c.target[:] = red * np.clip(0.45 + 0.25 * c.noise(6), 0, None) + 0.05 * nod


def draw_spleen(c: Canvas) -> None:
    """Red pulp (blood, sinusoids, trabeculae) around white-pulp nodules of packed lymphocytes."""
    rng = c.rng
    trabeculae = spleen_trabeculae(c)
    nodules, arterioles = c.mask(), c.mask()
    for x, y, r in c.scatter(c.morph(c.tissue, 80, cv2.MORPH_ERODE), rng.uniform(130, 330, c.count(1.6)), gap=1.5):
        c.fill(nodules, blob(rng, x, y, r, 0.12, 4, rng.uniform(0.65, 1.0)))
        ax, ay = x + rng.normal(0, 0.25 * r), y + rng.normal(0, 0.25 * r)
        c.disc(arterioles, ax, ay, rng.uniform(8, 16))
    colour_spleen(c, nodules.astype(bool), trabeculae, arterioles)
    c.ftu |= nodules


def draw_lung(c: Canvas) -> None:
    """Alveolar parenchyma: thin-walled polygonal air spaces, with ducts, vessels and collapsed areas that are not FTUs."""
    rng = c.rng
    h, w = c.shape
    size = rng.uniform(110, 190)
    # Alveoli are the Voronoi cells of jittered seeds, with walls bent by a smooth displacement field.
    seeds = np.full(c.shape, 255, np.uint8)
    pts = np.round(c.hex_grid(size, 0.25) / c.px).astype(int)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)]
    seeds[pts[:, 1], pts[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    shift = 0.12 * size / c.px
    mx, my = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    labels = cv2.remap(
        labels.astype(np.float32),
        mx + shift * c.noise(size),
        my + shift * c.noise(size),
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REFLECT,
    ).astype(np.int32)
    edges = np.zeros(c.shape, bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    wall_um = rng.uniform(2, 4)
    walls = c.morph(edges, wall_um, cv2.MORPH_DILATE) if c.px < 3 else edges
    # The section tears along alveolar walls: keep, whole, the cells that lie mostly on tissue.
    n_cells = int(labels.max()) + 1
    on_tissue = np.bincount(labels.ravel(), c.tissue.ravel(), n_cells) / np.maximum(
        np.bincount(labels.ravel(), None, n_cells), 1
    )
    kept = on_tissue > 0.5
    kept[np.argmax(on_tissue)] = True
    c.tissue[:] = c.morph(kept[labels], wall_um, cv2.MORPH_DILATE)
    ducts, vessels, vessel_lumen = c.mask(), c.mask(), c.mask()
    for x, y, r in c.scatter(c.tissue, rng.uniform(60, 140, rng.integers(0, 4)), gap=1.0):
        c.fill(ducts, blob(rng, x, y, r, 0.25, 5))
    for x, y, r in c.scatter(c.tissue, rng.uniform(40, 120, rng.integers(1, 4)), gap=1.2):
        c.fill(vessels, blob(rng, x, y, r, 0.06, 3))
        c.fill(vessel_lumen, blob(rng, x, y, r * rng.uniform(0.55, 0.75), 0.06, 3))
    duct, vessel = ducts.astype(bool), vessels.astype(bool)
    vlum = vessel_lumen.astype(bool) & vessel
    collapsed = c.noise(350) > rng.uniform(1.2, 2.0)
    walls = (walls | collapsed) & ~duct & ~vessel
    air = ~walls & ~vessel
    good = kept.copy()
    good[labels[duct | vessel | collapsed]] = False
    if not good.any():  # every image has an FTU: fall back to the most open kept cell
        good[np.argmax(np.bincount(labels[air & kept[labels]], None, n_cells))] = True
    macrophages = c.nuclei(air & ~duct, 0.25, 6)
    c.cyto[:] = walls * (0.7 + 0.1 * c.noise(8)) + air * 0.02 + 0.4 * macrophages
    c.cyto[vessel & ~vlum] = 0.7 + 0.1 * c.fibres(20, 3)[vessel & ~vlum]
    c.cyto[vlum] = 0.5 + 0.3 * c.noise(3)[vlum]  # red blood cells
    c.hema[:] = c.nuclei(walls & ~collapsed, 8, 2.6) + c.nuclei(collapsed, 7, 2.6) + c.nuclei(vessel & ~vlum, 4, 2.5)
    c.hema += 0.6 * macrophages
    c.target[:] = 0.9 * macrophages + walls * 0.15
    c.ftu |= (air & good[labels]).astype(np.uint8)


DRAWERS: dict[str, Callable[[Canvas], None]] = {
    "kidney": draw_kidney,
    "prostate": draw_prostate,
    "largeintestine": draw_largeintestine,
    "spleen": draw_spleen,
    "lung": draw_lung,
}


def tissue_layout(c: Canvas) -> None:
    """Carve bare-slide gaps into the canvas: torn, lobed tissue and sometimes the edge of the section."""
    rng = c.rng
    field = c.noise(450) + 0.4 * c.noise(120)
    if rng.random() < 0.5:
        h, w = c.shape
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        field += 2.0 * ((xx - w / 2) * np.cos(theta) + (yy - h / 2) * np.sin(theta)) / max(h, w)
    c.tissue &= field > np.quantile(field, 1 - rng.uniform(0.7, 0.92))


def stain(c: Canvas, data_source: str, organ_name: str) -> np.ndarray:
    """Colour the layers by Beer-Lambert optical density mixing: hematoxylin + DAB (HPA) or + eosin/PAS (Hubmap)."""
    rng = c.rng

    def vector(v: tuple[float, float, float]) -> np.ndarray:
        v = np.clip(np.asarray(v) + rng.normal(0, 0.04, 3), 0.01, None)
        return v / np.linalg.norm(v)

    if data_source == "HPA":
        conc = [0.7 * c.hema + 0.3 * c.cyto, rng.uniform(0.1, 0.8) * c.target + 0.04 * c.cyto]
        vecs = [vector(HEMATOXYLIN), vector(DAB)]
    else:
        conc = [0.9 * c.hema + 0.05 * c.cyto, 0.6 * c.cyto + 0.2 * c.target]
        vecs = [vector(HEMATOXYLIN), vector(PAS if organ_name == "kidney" else EOSIN)]
    # Uneven staining across the section, then a soft tissue edge.
    soft = cv2.GaussianBlur(c.tissue.astype(np.float32), (0, 0), max(1.0, 2 / c.px)) * (1 + 0.12 * c.noise(150))
    gains = rng.uniform(0.8, 1.2, len(conc)).astype(np.float32)
    stack = np.stack([np.clip(x, 0, 1.6) * g for x, g in zip(conc, gains, strict=True)], axis=-1) * soft[..., None]
    glass = rng.uniform(0.01, 0.04) + rng.normal(0, 0.004, 3)
    od = stack @ np.stack(vecs).astype(np.float32) + glass.astype(np.float32)
    rgb = 255 * np.power(np.float32(10), -od)
    rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.4, 0.8))
    rgb += rng.normal(0, 2.5, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_image(
    organ_name: str, data_source: str, height: int, width: int, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one (h, w, 3) uint8 image and its uint8 FTU mask at the organ's scaled pixel size."""
    c = Canvas.blank(rng, organ(organ_name).pixel_size[data_source] / scale, height, width)
    tissue_layout(c)
    DRAWERS[organ_name](c)
    # FTUs are centred on tissue; keep them whole, with a rim, so no torn-off lumen looks like bare slide.
    c.tissue |= c.morph(c.ftu, 10, cv2.MORPH_DILATE)
    if not c.ftu.any():
        raise RuntimeError(f"demo {organ_name} image {height}x{width} came out without an FTU; this is a bug")
    return stain(c, data_source, organ_name), c.ftu


def plan(seed: int, n_train: int, n_test: int, scale: float) -> pd.DataFrame:
    """One row per image: split, id, organ, data_source, size; organs round-robin, ids unique across splits."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(100, 32768), n_train + n_test, replace=False)
    side = FULL_SIDE * scale
    rows = []
    for i in range(n_train):
        s = round(side if rng.random() < 0.8 else rng.uniform(2300, 2800) * scale)
        rows.append(("train", int(ids[i]), ORGANS[i % len(ORGANS)], "HPA", s, s))
    for i in range(n_test):
        if i == 0:
            h = w = TINY_SIDE
        elif i == 1:
            h, w = round(1.5 * side), round(1.35 * side)
        else:
            # about the tissue extent of a train image, so a Hubmap image has fewer pixels at a coarser pixel size
            # (a prostate section at 6.263 um/px is a few dozen demo pixels, like the real 160 px ones)
            source, name = ("Hubmap" if i % 2 == 0 else "HPA"), ORGANS[i % len(ORGANS)]
            extent = organ(name).pixel_size["HPA"] / organ(name).pixel_size[source]
            h, w = (max(24, round(side * extent * f)) for f in rng.uniform(0.6, 1.2, 2))
            w += w == h
        rows.append(("test", int(ids[n_train + i]), ORGANS[i % len(ORGANS)], "Hubmap" if i % 2 == 0 else "HPA", h, w))
    return pd.DataFrame(rows, columns=["split", "id", "organ", "data_source", "img_height", "img_width"])


def make_targets(out: Path, n: int, seed: int = 0, scale: float = DEFAULT_SCALE) -> pd.DataFrame:
    """Write n unlabeled Hubmap-style images (organs round-robin) and their images.csv under out; return the table.

    Sizes follow the Hubmap test images' rule (about a train image's tissue extent), at least TARGET_MIN_SIDE.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keep = {f"{TARGET_ID_BASE + k}.tiff" for k in range(n)}
    for stale in out.glob("*.tiff"):  # left over from a run with more targets
        if stale.name not in keep:
            stale.unlink()
    rows = []
    for k in range(n):
        name = ORGANS[k % len(ORGANS)]
        rng = np.random.default_rng([seed, 5, k])
        extent = organ(name).pixel_size["HPA"] / organ(name).pixel_size["Hubmap"]
        h, w = (max(TARGET_MIN_SIDE, round(FULL_SIDE * scale * extent * f)) for f in rng.uniform(0.6, 1.2, 2))
        image, _ = make_image(name, "Hubmap", h, w, scale, rng)  # the mask is what a target does not have
        image_id = TARGET_ID_BASE + k
        write_image(out / f"{image_id}.tiff", image)
        thickness = organ(name).thickness["Hubmap"]
        rows.append((image_id, name, "Hubmap", h, w, organ(name).pixel_size["Hubmap"],
                     int(thickness) if thickness == int(thickness) else thickness))
    table = pd.DataFrame(rows, columns=["id", "organ", "data_source", "img_height", "img_width", "pixel_size",
                                        "tissue_thickness"])
    table.to_csv(out / "images.csv", index=False, lineterminator="\n")
    return table


def make_demo(
    out: Path, seed: int = 0, n_train: int = 40, n_test: int = 10, scale: float = DEFAULT_SCALE, n_targets: int = 5
) -> Path:
    """Write the demo dataset under out (competition layout, test_solution.csv, targets/) and return out."""
    if n_train < len(ORGANS) or n_test < len(ORGANS):
        raise ValueError(
            f"n_train and n_test must be at least {len(ORGANS)} to cover every organ; got {n_train}, {n_test}"
        )
    if not 0 < scale <= 2:
        raise ValueError(f"scale must be in (0, 2] (1 = real 3000 px images); got {scale}")
    out = Path(out)
    rows = plan(seed, n_train, n_test, scale)
    for split in ("train", "test"):
        folder = out / f"{split}_images"
        folder.mkdir(parents=True, exist_ok=True)
        keep = {f"{i}.tiff" for i in rows.loc[rows["split"] == split, "id"]}
        for stale in folder.glob("*.tiff"):  # left over from a run with other arguments
            if stale.name not in keep:
                stale.unlink()
    rles = []
    for r in tqdm(rows.itertuples(), total=len(rows), desc="demo images", unit="img"):
        rng = np.random.default_rng([seed, r.id])
        image, mask = make_image(r.organ, r.data_source, r.img_height, r.img_width, scale, rng)
        write_image(out / f"{r.split}_images" / f"{r.id}.tiff", image)
        rles.append(encode(mask))
    rows["rle"] = rles
    rows["pixel_size"] = [organ(o).pixel_size[d] for o, d in zip(rows["organ"], rows["data_source"], strict=True)]
    thickness = [organ(o).thickness[d] for o, d in zip(rows["organ"], rows["data_source"], strict=True)]
    rows["tissue_thickness"] = [int(t) if t == int(t) else t for t in thickness]  # written "4" like the real CSVs
    meta = np.random.default_rng([seed, 1])
    rows["age"] = meta.integers(20, 85, len(rows)).astype(float)
    rows["sex"] = np.where((rows["organ"] == "prostate") | (meta.random(len(rows)) < 0.5), "Male", "Female")
    rows = rows.sort_values("id", kind="stable")
    train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    base = ["id", "organ", "data_source", "img_height", "img_width"]
    tables = {
        "train.csv": train[[*base, "pixel_size", "tissue_thickness", "rle", "age", "sex"]],
        "test.csv": test[[*base, "pixel_size", "tissue_thickness"]],
        "sample_submission.csv": test[["id"]].assign(rle=SAMPLE_RLE),
        "test_solution.csv": test[[*base, "rle"]],
    }
    for name, table in tables.items():
        table.to_csv(out / name, index=False, lineterminator="\n")
    if n_targets:
        make_targets(out / "targets", n_targets, seed, scale)
    return out


SLIDE_PATCH = 2048  # level-0 pixels per drawn patch of a demo slide
GLASS = 242  # bare slide outside the section


def section_outline(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A coarse (<=256 px) bool map of a tissue section on the slide: a lobed blob covering about half of it."""
    gh, gw = max(8, round(256 * height / max(height, width))), max(8, round(256 * width / max(height, width)))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    r = np.hypot((yy - gh / 2) / (gh / 2), (xx - gw / 2) / (gw / 2))
    noise = cv2.resize(rng.standard_normal((6, 6)).astype(np.float32), (gw, gh), interpolation=cv2.INTER_CUBIC)
    return (r + 0.25 * noise) < 0.8


def slide_rows(
    organ_name: str, height: int, width: int, mpp: float, rng: np.random.Generator, mask: np.ndarray
) -> Iterator[np.ndarray]:
    """Yield the slide's RGB rows patch-row by patch-row, filling `mask` (uint8 0/1, (height, width)) as it goes."""
    outline = section_outline(rng, height, width)
    oy = np.minimum(np.arange(height) * outline.shape[0] // height, outline.shape[0] - 1)
    ox = np.minimum(np.arange(width) * outline.shape[1] // width, outline.shape[1] - 1)
    scale = organ(organ_name).pixel_size["Hubmap"] / mpp  # draw at exactly mpp um/px
    for y in range(0, height, SLIDE_PATCH):
        ph = min(SLIDE_PATCH, height - y)
        row = np.full((ph, width, 3), GLASS, np.uint8)
        for x in range(0, width, SLIDE_PATCH):
            pw = min(SLIDE_PATCH, width - x)
            section = outline[oy[y : y + ph]][:, ox[x : x + pw]]
            if not section.any():
                continue
            image, ftu = make_image(organ_name, "Hubmap", ph, pw, scale, rng)
            row[:, x : x + pw][section] = image[section]
            mask[y : y + ph, x : x + pw] = ftu * section
        yield row


def make_slides(out: Path, n: int, seed: int = 0, side: int = 8192, mpp: float = 0.5) -> Path:
    """Write n synthetic slides, their mask pyramids and GeoJSON, and OUT/slides.csv (see the module docstring)."""
    if n < 1 or side < 256:
        raise ValueError(f"need at least one slide of at least 256 px; got n={n}, side={side}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc="demo slides", unit="slide"):
        organ_name = ORGANS[i % len(ORGANS)]
        rng = np.random.default_rng([seed, 7, i])
        height, width = side, round(side * rng.uniform(0.8, 1.0))
        slide_id = f"slide{i:02d}_{organ_name}"
        layout = "subifds" if i % 2 == 0 else "chain"
        name = f"{slide_id}.ome.tif" if layout == "subifds" else f"{slide_id}.tif"
        mask = np.zeros((height, width), np.uint8)
        write_pyramid(out / name, slide_rows(organ_name, height, width, mpp, rng, mask), height, width, mpp, layout)
        mask_name = f"{slide_id}_mask.ome.tif" if layout == "subifds" else f"{slide_id}_mask.tif"
        write_pyramid(out / mask_name, (mask[y : y + 1024] * 255 for y in range(0, height, 1024)), height, width,
                      mpp, layout, mask=True)
        write_ftus(iter_ftus(mask), out / f"{slide_id}.geojson", out / f"{slide_id}_ftus.csv", mpp, organ_name)
        rows.append((slide_id, name, mask_name, f"{slide_id}.geojson", organ_name, "Hubmap", mpp, width, height))
    table = pd.DataFrame(rows, columns=["slide_id", "slide", "mask", "geojson", "organ", "data_source", "mpp",
                                        "width", "height"])
    table.to_csv(out / "slides.csv", index=False, lineterminator="\n")
    return out / "slides.csv"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.make_demo", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="dataset folder to write (created if missing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=40, help="train images, organs round-robin (default 40)")
    ap.add_argument("--n-test", type=int, default=10, help="test images, HPA and Hubmap alternating (default 10)")
    ap.add_argument("--n-targets", type=int, default=5, help="unlabeled Hubmap-style images in OUT/targets (default 5)")
    ap.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"linear size against the real data: 1 = 3000 px train images (default {DEFAULT_SCALE:.4g})",
    )
    ap.add_argument("--n-slides", type=int, metavar="N", help="write N synthetic whole slides (and slides.csv) instead")
    ap.add_argument("--slide-size", type=int, default=8192, help="slide height in pixels (default 8192)")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="slide um per pixel (default 0.5)")
    hidden_alias(ap, "--slides", "--n-slides")  # the old spelling (elsewhere --slides is a slides CSV)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.n_slides is not None:
        table = pd.read_csv(make_slides(args.out, args.n_slides, args.seed, args.slide_size, args.slide_mpp))
        print(f"wrote {len(table)} slides to {args.out} in {time.perf_counter() - start:.1f} s")
        print(table[["slide_id", "slide", "organ", "width", "height", "mpp"]].to_string(index=False))
        return
    out = make_demo(args.out, args.seed, args.n_train, args.n_test, args.scale, args.n_targets)
    train, test = pd.read_csv(out / "train.csv"), pd.read_csv(out / "test.csv")
    counts = pd.concat([train.assign(split="train"), test.assign(split="test")])
    table = counts.groupby(["organ", "split", "data_source"]).size().unstack(["split", "data_source"], fill_value=0)
    print(f"wrote {len(train)} train + {len(test)} test images (+ {args.n_targets} unlabeled Hubmap-style targets in "
          f"{out / 'targets'}) to {out} in {time.perf_counter() - start:.1f} s")
    print(table.reindex(ORGANS).fillna(0).astype(int).sort_index(axis=1).to_string())


if __name__ == "__main__":
    main()
