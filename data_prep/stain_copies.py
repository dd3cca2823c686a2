"""Offline stain-transferred copies of a tile set's whole images (the 1st place's 351 x 4 torchstain copies).

    python -m data_prep.stain_copies --tiles TILES --targets IMAGES_OR_DIR [IMAGES_OR_DIR ...]
        [--method macenko|reinhard|vahadane] [--copies 4] [--seed 0] [--overwrite]

Each whole-image row of the tile set (source "scaled", data_prep.tiles --scaled P: what the crop sampler draws
crops from) is re-rendered K times with the stains of K target images (H&E / PAS, e.g. HuBMAP images or
`make_demo`'s DEMO/targets/), a different target per copy where there are enough (a seeded permutation per
image). The copies go to TILES/images/<tile_id>_stain<k>.png and into TILES/index.csv as source "stain",
training-only rows that keep their source image's fold (so a fold-k image's copies never train fold k) and
its mask file (the geometry is untouched: only colours change); `parents` names the source row. The trainers
draw them through FastaiConfig.stain_copy_share (train.crops).

Methods (all fit the source stains on the whole image being copied, the target's on the whole target):
- macenko: torchstain's Macenko fit (inference.stain.image_stains) and its linear re-rendering
  (inference.stain.normalise_stain);
- reinhard: torchstain's NumpyReinhardNormalizer (LAB channel means and deviations);
- vahadane: Vahadane et al. 2016 (IEEE TMI), sparse non-negative stain separation, written here because
  torchstain 1.4.1 has no Vahadane normaliser and staintools needs spams (not installable here): the two stain
  vectors come from a sparse NMF of tissue optical densities, OD ~ C W with C, W >= 0, unit rows of W and an
  L1 penalty on C (the problem staintools hands spams.trainDL), by multiplicative updates in numpy
  (scikit-learn's DictionaryLearning solves the same problem but took 2-3 s a demo image, coordinate descent
  per pixel); concentrations are exact two-stain non-negative least squares (staintools' lasso with lambda
  0.01 is nearly that), scaled by the target's / source's 99th-percentile ratio.
An image whose stains cannot be fitted (blank, one stain) gets no copy, and such a target is left out, both
with a warning; the run says how many copies were skipped.

Resumable: a copy already on disk is kept; TILES/stain_copies.json records the settings and the rows copied,
and other settings need --overwrite (which deletes the old copies first).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torchstain.numpy.normalizers import NumpyReinhardNormalizer
from tqdm import tqdm

from data_prep.lpb import fingerprint
from data_prep.tileset import TileSetError, load_index, read_png, write_index, write_png
from inference.cli import HelpFormatter
from inference.io import ImageReadError, read_image
from inference.stain import StainReference, image_stains, normalise_stain

log = logging.getLogger("data_prep.stain_copies")

METHODS = ("macenko", "reinhard", "vahadane")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SOURCE = "stain"
# L1 penalty of the stain NMF. staintools passes 0.1 to spams; here 0.1 and 0.03 pull the vectors onto the RGB
# axes, while 0.01 recovers the demo renderer's known H, eosin and PAS vectors within about 0.05.
VAHADANE_LAMBDA = 0.01
VAHADANE_BETA = 0.15  # optical density below which a channel counts as bare glass
VAHADANE_PIXELS = 20_000  # tissue pixels the dictionary is learnt from (staintools uses every pixel)
VAHADANE_MIN_PIXELS = 500
VAHADANE_LIGHT = 255.0  # staintools' transmitted light: glass stays white
VAHADANE_ITERATIONS = 300
# Starting stains of the NMF: Ruifrok & Johnston's hematoxylin and eosin (data_prep.augment.RGB_FROM_HED rows).
VAHADANE_INIT = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])


def image_paths(targets: Sequence[Path]) -> list[Path]:
    """Target image files: the files given, and every image (tif, tiff, png, jpg) inside the folders given."""
    paths: list[Path] = []
    for target in map(Path, targets):
        if target.is_dir():
            paths += sorted(p for p in target.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif target.is_file():
            paths.append(target)
        else:
            raise FileNotFoundError(f"target {target} is neither an image file nor a folder")
    if not paths:
        raise FileNotFoundError(f"no target images ({', '.join(IMAGE_SUFFIXES)}) in {[str(t) for t in targets]}")
    return paths


def read_any(path: Path) -> np.ndarray:
    """An (h, w, 3) uint8 RGB image from a TIFF (inference.io) or a PNG / JPEG (OpenCV)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_image(path)
    try:
        return read_png(path)
    except OSError as exc:
        raise ImageReadError(str(exc)) from exc


def _density(pixels: np.ndarray) -> np.ndarray:
    """(n, 3) float32 optical density of (n, 3) uint8 pixels under VAHADANE_LIGHT."""
    return -np.log(np.maximum(pixels.astype(np.float32), 1.0) / VAHADANE_LIGHT)


def vahadane_stains(image: np.ndarray, seed: int = 0) -> StainReference:
    """An RGB uint8 image's Vahadane stain vectors (columns, hematoxylin first) and 99th-percentile amounts.

    Raises ValueError when the image has too little tissue or only one stain.
    """
    od = _density(image.reshape(-1, 3))
    tissue = od[(od > VAHADANE_BETA).all(axis=1)]
    if len(tissue) < VAHADANE_MIN_PIXELS:
        raise ValueError(f"{len(tissue)} tissue pixels, fewer than {VAHADANE_MIN_PIXELS} (blank or very pale image)")
    rng = np.random.default_rng(seed)
    sample = tissue[rng.choice(len(tissue), min(VAHADANE_PIXELS, len(tissue)), replace=False)].astype(np.float64)
    dictionary = sparse_nmf(sample, VAHADANE_INIT, VAHADANE_LAMBDA, VAHADANE_ITERATIONS)
    if dictionary[0, 0] < dictionary[1, 0]:  # hematoxylin absorbs more red than eosin, PAS or DAB (staintools)
        dictionary = dictionary[::-1]
    matrix = dictionary.T  # (3, 2), columns as in inference.stain.StainReference
    cosine = float(matrix[:, 0] @ matrix[:, 1])
    if cosine > 0.995:
        raise ValueError(f"the two stain vectors are nearly parallel (cosine {cosine:.4f})")
    maxima = np.percentile(nonnegative_concentrations(od, matrix), 99, axis=0)
    if not (maxima > 0).all():
        raise ValueError(f"no usable stain amounts (99th percentiles {maxima})")
    return StainReference(matrix, maxima)


def sparse_nmf(od: np.ndarray, init: np.ndarray, penalty: float, iterations: int) -> np.ndarray:
    """Unit-norm (k, 3) stains W of min 0.5 ||OD - C W||^2 + penalty |C|_1 over C, W >= 0 (Lee & Seung updates).

    Raises ValueError when a stain vanishes (the image holds one stain).
    """
    w = init / np.linalg.norm(init, axis=1, keepdims=True)
    c = np.maximum(od @ np.linalg.pinv(w), 1e-3)
    for _ in range(iterations):
        c *= (od @ w.T) / (c @ (w @ w.T) + penalty + 1e-12)
        w *= (c.T @ od) / ((c.T @ c) @ w + 1e-12)
        norms = np.linalg.norm(w, axis=1, keepdims=True)
        if (norms < 1e-9).any():
            raise ValueError("sparse NMF found only one stain")
        w /= norms  # the scale moves into C, so the L1 penalty cannot shrink C by growing W
        c *= norms.T
    return w


def nonnegative_concentrations(od: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(n, 2) least-squares stain amounts >= 0 of (n, 3) densities on two stain columns, solved exactly.

    With two stains the non-negative optimum is the unconstrained one when both amounts are >= 0, else the
    better of the two one-stain fits (or zero): three closed forms, vectorised.
    """
    a = matrix.astype(np.float32)
    both = od @ np.linalg.pinv(a).T.astype(np.float32)
    single = np.maximum(od @ a, 0) / (a * a).sum(0)  # each stain alone, clipped at 0
    residual = [((od - single[:, [k]] * a[:, k]) ** 2).sum(1) for k in range(2)]
    only_first = residual[0] <= residual[1]
    fallback = np.where(only_first[:, None], single * [1, 0], single * [0, 1]).astype(np.float32)
    return np.where((both >= 0).all(1, keepdims=True), both, fallback)


def vahadane_transfer(image: np.ndarray, source: StainReference, target: StainReference) -> np.ndarray:
    """Re-render an image's Vahadane concentrations with the target's stain vectors and amounts."""
    h, w, _ = image.shape
    od = _density(image.reshape(-1, 3))
    amounts = nonnegative_concentrations(od, source.stain_matrix)
    amounts *= (target.max_concentrations / source.max_concentrations).astype(np.float32)
    density = amounts @ target.stain_matrix.T.astype(np.float32)
    return np.clip(VAHADANE_LIGHT * np.exp(-density), 0, 255).reshape(h, w, 3).astype(np.uint8)


Transfer = Callable[[np.ndarray], np.ndarray | None]


def make_transfer(method: str, target_image: np.ndarray, seed: int = 0) -> Transfer:
    """A function re-staining an image like target_image (None for an image whose stains cannot be fitted).

    Raises ValueError when the target itself cannot be fitted.
    """
    if method == "macenko":
        reference = image_stains(target_image)

        def macenko(image: np.ndarray) -> np.ndarray | None:
            out = normalise_stain(image, reference)
            return None if out is image else out  # normalise_stain returns its input unchanged when unfit

        return macenko
    if method == "reinhard":
        normalizer = NumpyReinhardNormalizer()
        normalizer.fit(target_image)

        def reinhard(image: np.ndarray) -> np.ndarray | None:
            return normalizer.normalize(image)

        return reinhard
    if method == "vahadane":
        reference = vahadane_stains(target_image, seed)

        def vahadane(image: np.ndarray) -> np.ndarray | None:
            try:
                source = vahadane_stains(image, seed)
            except ValueError as exc:
                log.warning("vahadane: %s", exc)
                return None
            return vahadane_transfer(image, source, reference)

        return vahadane
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


@dataclass(frozen=True)
class CopySettings:
    method: str
    copies: int
    seed: int
    targets: tuple[str, ...]  # resolved target paths
    sources: str  # fingerprint of the rows copied


def copy_tile_id(tile_id: str, k: int) -> str:
    """Tile id of copy k of a row, e.g. 1234_px0.8_stain0."""
    return f"{tile_id}_stain{k}"


def target_order(image_id: object, n_targets: int, seed: int) -> np.ndarray:
    """A seeded permutation of the targets for one image: copy k uses target order[k % n_targets]."""
    return np.random.default_rng([seed, int(image_id)]).permutation(n_targets)


def add_stain_copies(
    tiles_dir: Path,
    targets: Sequence[Path],
    method: str = "macenko",
    copies: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write K stain copies of every whole-image row into the tile set (skipping copies on disk); return the index."""
    tiles_dir = Path(tiles_dir)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    index = load_index(tiles_dir)
    sources = index[index["source"] == "scaled"]
    if sources.empty:
        raise TileSetError(
            f"{tiles_dir} has no whole-image rows to copy; build it with python -m data_prep.tiles ... --scaled P"
        )
    paths = [p.resolve() for p in image_paths(targets)]
    settings = asdict(CopySettings(method, copies, seed, tuple(map(str, paths)), fingerprint(sources["tile_id"])))
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    record = tiles_dir / "stain_copies.json"
    previous = json.loads(record.read_text()) if record.is_file() else None
    old = index[index["source"] == SOURCE]
    if previous is not None and previous != settings and not overwrite:
        raise TileSetError(
            f"{tiles_dir} holds stain copies made with {previous}, not {settings}; pass --overwrite to replace them"
        )
    if overwrite or previous != settings:
        for path in old["image_path"]:
            (tiles_dir / path).unlink(missing_ok=True)
    record.write_text(json.dumps(settings, indent=2) + "\n")
    transfers: list[Transfer] = []
    for path in tqdm(paths, desc="fit targets", unit="img", leave=False):
        try:
            transfers.append(make_transfer(method, read_any(path), seed))
        except ValueError as exc:  # the others still serve; the target list stays the recorded one
            log.warning("target %s left out: %s cannot fit its stains (%s)", path, method, exc)
    if not transfers:
        raise TileSetError(f"no target of {[str(p) for p in paths]} has stains {method} can fit; choose others")
    rows, done, skipped = [], 0, 0
    for row in tqdm(list(sources.itertuples(index=False)), desc=f"stain copies ({method})", unit="img"):
        order = target_order(row.image_id, len(transfers), seed)
        image = None
        for k in range(copies):
            tile_id = copy_tile_id(row.tile_id, k)
            out = tiles_dir / "images" / f"{tile_id}.png"
            if out.is_file():
                done += 1
            else:
                image = read_png(tiles_dir / row.image_path) if image is None else image
                copy = transfers[order[k % len(transfers)]](image)
                if copy is None:
                    skipped += 1
                    continue
                write_png(out, copy)
            rows.append(
                {**row._asdict(), "tile_id": tile_id, "image_path": f"images/{tile_id}.png", "source": SOURCE,
                 "parents": row.tile_id}
            )  # fmt: skip
    print(
        f"stain copies: {len(rows)} of {len(sources) * copies} ({method}, {len(paths)} targets), "
        f"{done} already on disk, {skipped} skipped (stains could not be fitted)"
    )
    kept = index[index["source"] != SOURCE]
    write_index(tiles_dir, pd.concat([kept, pd.DataFrame(rows, columns=kept.columns)], ignore_index=True))
    return load_index(tiles_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m data_prep.stain_copies",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--tiles", type=Path, required=True, help="tile set folder with --scaled whole-image rows")
    ap.add_argument("--targets", type=Path, nargs="+", required=True, help="target H&E / PAS images or folders")
    ap.add_argument("--method", choices=METHODS, default="macenko", help="stain transfer method")
    ap.add_argument("--copies", type=int, default=4, help="copies per whole image (K)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the target order (and Vahadane's fit)")
    ap.add_argument("--overwrite", action="store_true", help="replace copies made with other settings")
    args = ap.parse_args(argv)
    if args.copies < 1:
        ap.error(f"--copies must be >= 1, got {args.copies}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        index = add_stain_copies(args.tiles, args.targets, args.method, args.copies, args.seed, args.overwrite)
    except (TileSetError, FileNotFoundError, ImageReadError) as exc:
        ap.error(str(exc))
    copies = index[index["source"] == SOURCE]
    print(f"wrote {args.tiles / 'index.csv'}: {len(copies)} stain copies\n{copies.groupby('organ').size().to_string()}")


if __name__ == "__main__":
    main()
