"""Whole slides: demo slides, slide readers, the pyramid writer, inference.wsi against inference.predict, wsi_tiles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from inference.engine.sliding import WindowFilter, sliding_window
from inference.metric import dice
from inference.rle import decode
from inference.wsi.polygons import iter_ftus, polygon_area
from inference.wsi.reader import open_slide, write_pyramid

SIDE = 2048


def test_demo_slides_readers_agree(demo_slides: Path) -> None:
    table = pd.read_csv(demo_slides)
    assert list(table["organ"]) == ["kidney", "prostate"]
    for row in table.itertuples():
        path = demo_slides.parent / row.slide
        with open_slide(path, "tifffile") as a, open_slide(path, "openslide") as b:
            assert a.mpp == pytest.approx(0.5) and b.mpp == pytest.approx(0.5)
            assert a.dimensions[0] == b.dimensions[0] == (row.width, row.height)
            assert len(a.dimensions) >= 2  # tifffile sees the pyramid in both layouts
            np.testing.assert_array_equal(a.read(0, 500, 600, 300, 200), b.read(0, 500, 600, 300, 200))
            edge = a.read(0, row.width - 10, -10, 20, 20)
            assert (edge[:10] == 255).all() and (edge[:, 10:] == 255).all()  # outside the slide reads as glass
        if path.name.endswith(".ome.tif"):
            assert b.dimensions == b.dimensions[:1]  # OpenSlide shows level 0 of a SubIFD pyramid
        else:
            assert len(b.dimensions) == len(a.dimensions)
        with open_slide(demo_slides.parent / row.mask) as m:
            truth = m.read(0, 0, 0, row.width, row.height)[..., 0]
        assert set(np.unique(truth)) <= {0, 255} and truth.any()
        features = json.loads((demo_slides.parent / row.geojson).read_text())["features"]
        area = sum(polygon_area([f["geometry"]["coordinates"]]) for f in features)
        assert area == pytest.approx((truth > 0).sum(), rel=0.02)


def test_write_pyramid_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1301, 777, 3), dtype=np.uint8)
    strips = (image[y : y + 333] for y in range(0, 1301, 333))
    write_pyramid(tmp_path / "a.tif", strips, 1301, 777, mpp=0.25, layout="chain", min_side=200)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(1301, 777), (651, 389), (326, 195), (163, 98)]
        np.testing.assert_array_equal(levels[0].asarray(), image)
    mask = (rng.random((700, 500)) > 0.5).astype(np.uint8) * 255
    write_pyramid(tmp_path / "m.tif", [mask], 700, 500, mpp=0.25, mask=True, min_side=100, layout="subifds")
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 4
        for level in tif.series[0].levels:
            assert set(np.unique(level.asarray())) <= {0, 255}
    with pytest.raises(ValueError, match="rows"):
        write_pyramid(tmp_path / "bad.tif", [mask[:600]], 700, 500, mask=True)


def test_window_filter_skips_windows_without_weight() -> None:
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.ones(batch.shape[0], 1, 32, 32)

    full = sliding_window(image, forward, tile=32, stride=16, out_channels=1)
    keep = np.zeros((8, 12), bool)
    keep[:, :4] = True  # the left third of the image
    windows = WindowFilter(keep)
    part = sliding_window(image, forward, tile=32, stride=16, out_channels=1, windows=windows)
    assert windows.predicted + windows.skipped == 3 * 5 and windows.skipped > 0
    assert torch.allclose(part[:, :, :32], full[:, :, :32])  # run windows blend as before
    assert (part[:, :, 64:] == 0).all()  # no window ran there
    nothing = WindowFilter(np.zeros((2, 2), bool))
    assert (sliding_window(image, forward, 32, 16, 1, windows=nothing) == 0).all() and nothing.predicted == 0


def _check_pyramid_readers(path: Path, size: tuple[int, int], mpp: float) -> None:
    """OpenSlide and MONAI's WSIReader (openslide and tifffile backends) see every level and its mpp."""
    import openslide
    from monai.data import WSIReader

    with tifffile.TiffFile(path) as tif:
        sizes = [(lv.shape[1], lv.shape[0]) for lv in tif.series[0].levels]  # (w, h)
        assert [p.subfiletype for p in tif.pages] == [0] + [1] * (len(tif.pages) - 1)
        assert all(p.is_tiled and p.tags["ResolutionUnit"].value == 3 for p in tif.pages)  # centimetre
    assert len(sizes) >= 2 and sizes[0] == size
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == tuple(sizes)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(mpp)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(mpp)
    for backend in ("openslide", "tifffile"):
        reader = WSIReader(backend=backend)
        wsi = reader.read(str(path))
        assert reader.get_level_count(wsi) == len(sizes)
        for level, (w, h) in enumerate(sizes):
            assert reader.get_size(wsi, level) == (h, w)
            assert reader.get_mpp(wsi, level) == pytest.approx((mpp * size[0] / w, mpp * size[1] / h), rel=1e-3)
    reader = WSIReader(backend="openslide")  # MONAI's tifffile backend insists on RGB; its openslide one converts
    data, meta = reader.get_data(reader.read(str(path)), level=len(sizes) - 1)
    assert data.shape == (3, sizes[-1][1], sizes[-1][0])


def _rings(feature: dict) -> list[list[list]]:
    geometry = feature["geometry"]
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def _check_valid_features(features: list[dict]) -> None:
    """shapely calls every polygon valid and no ring visits a vertex twice."""
    import shapely

    for feature in features:
        geometry = shapely.geometry.shape(feature["geometry"])
        assert geometry.is_valid, shapely.is_valid_reason(geometry)
        for polygon in _rings(feature):
            for ring in polygon:
                vertices = [tuple(v) for v in ring[:-1]]
                assert ring[0] == ring[-1] and len(set(vertices)) == len(vertices)


def _run_wsi(slide: Path, run: Path, out: Path, *extra: str) -> dict:
    from inference.wsi.cli import main

    assert main(["--slide", str(slide), "--models", str(run), "--out", str(out), "--block", "512",
                 "--device", "cpu", *extra]) == 0
    state = json.loads((out / f"{slide.name.split('.')[0]}_work" / "state.json").read_text())
    return state["summary"]


@pytest.mark.slow
def test_wsi_matches_predict_and_writes_readable_outputs(
    demo_slides: Path, dark_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import openslide

    from inference.predict import main as predict_main

    row = pd.read_csv(demo_slides).iloc[0]
    slide = demo_slides.parent / row.slide
    out = tmp_path / "wsi"
    summary = _run_wsi(slide, dark_run, out, "--organ", "kidney")
    assert summary["level"] == 1 and summary["skipped_windows"] > 0 and summary["predicted_windows"] > 0
    assert "background windows skipped" in capsys.readouterr().out
    stem = "slide00_kidney"
    mask_path = out / f"{stem}_mask.tif"
    with tifffile.TiffFile(mask_path) as tif:
        assert len(tif.series[0].levels) >= 2
        mask = tif.series[0].asarray()
    assert mask.shape == (row.height, row.width) and set(np.unique(mask)) == {0, 255}
    for name in (f"{stem}_mask.tif", f"{stem}_prob.tif"):
        _check_pyramid_readers(out / name, (row.width, row.height), 0.5)
    with openslide.OpenSlide(str(mask_path)) as os_mask:
        assert openslide.OpenSlide.detect_format(str(mask_path)) == "generic-tiff"
        np.testing.assert_array_equal(np.asarray(os_mask.read_region((0, 0), 0, os_mask.dimensions))[..., 0], mask)
    prob = tifffile.imread(out / f"{stem}_prob.tif")
    assert prob.shape == mask.shape and prob[mask > 0].min() >= prob[mask == 0].max() - 1  # the cut-off splits them
    for name in (f"{stem}_heatmap.png", f"{stem}_overlay.png"):
        assert (out / name).stat().st_size > 0
    written = json.loads((out / f"{stem}_summary.json").read_text())
    assert written == summary and written["mpp"] == 0.5 and written["level_mpp"] == pytest.approx(1.0)
    assert written["classes"]["glomerulus"]["ftus"] == summary["ftus"] and written["thresholds"] == [0.5]
    assert written["models"][0]["pixel_size"] == 1.0
    stages = {"tissue", "read", "predict", "postprocess", "ftus", "mask_pyramid", "prob_pyramid", "pictures"}
    assert set(written["stage_seconds"]) == stages and min(written["stage_seconds"].values()) >= 0
    side_by_side = {"ftus", "mask_pyramid", "prob_pyramid"}  # written in three threads: their seconds overlap
    seconds = written["stage_seconds"]
    in_turn = sum(v for k, v in seconds.items() if k not in side_by_side)
    assert in_turn + max(seconds[k] for k in side_by_side) <= written["seconds"] + 0.1

    collection = json.loads((out / f"{stem}.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    _check_valid_features(collection["features"])
    assert {f["properties"]["classification"]["name"] for f in collection["features"]} == {"glomerulus"}
    assert {f["properties"]["objectType"] for f in collection["features"]} == {"annotation"}
    table = pd.read_csv(out / f"{stem}_ftus.csv")
    assert len(table) == len(collection["features"])
    assert set(table["slide"]) == {stem} and set(table["class"]) == {"glomerulus"} and set(table["mpp"]) == {0.5}
    assert all(pd.api.types.is_integer_dtype(table[c]) for c in ("x0", "y0", "x1", "y1"))
    areas = [polygon_area([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon"
                          else f["geometry"]["coordinates"]) for f in collection["features"]]
    assert sum(areas) == pytest.approx((mask > 0).sum(), rel=0.02)
    assert table["area_um2"].sum() == pytest.approx(table["area_px"].sum() * 0.25)
    assert table["holes"].sum() == sum(len(r) - 1 for f in collection["features"]
                                       for r in ([f["geometry"]["coordinates"]] if f["geometry"]["type"] ==
                                                 "Polygon" else f["geometry"]["coordinates"]))

    # inference.predict on a region cut from level 0 agrees with the slide-wide mask there
    x0, y0, side = 400, 500, 1024
    data = tmp_path / "region"
    (data / "test_images").mkdir(parents=True)
    with open_slide(slide) as s:
        tifffile.imwrite(data / "test_images" / "1.tiff", s.read(0, x0, y0, side, side), photometric="rgb")
    pd.DataFrame([dict(id=1, organ="kidney", data_source="Hubmap", img_height=side, img_width=side,
                       pixel_size=0.5, tissue_thickness=10)]).to_csv(data / "test.csv", index=False)
    assert predict_main(["--data-dir", str(data), "--models", str(dark_run), "--out", str(tmp_path / "sub.csv"),
                         "--scale-mode", "pixel-size", "--device", "cpu"]) == 0
    rle = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)["rle"].iloc[0]
    region = mask[y0 : y0 + side, x0 : x0 + side] > 0
    assert region.mean() > 0.05
    assert dice(decode(rle, side, side).astype(bool), region) >= 0.99


@pytest.mark.slow
def test_wsi_resumes_after_interruption(demo_slides: Path, dark_run: Path, tmp_path: Path) -> None:
    row = pd.read_csv(demo_slides).iloc[1]
    slide = demo_slides.parent / row.slide  # generic pyramid, read through OpenSlide here
    out = tmp_path / "wsi"
    first = _run_wsi(slide, dark_run, out, "--reader", "openslide")
    stem = "slide01_prostate"
    before = tifffile.imread(out / f"{stem}_mask.tif")
    state_path = out / f"{stem}_work" / "state.json"
    state = json.loads(state_path.read_text())
    state["done"], state["finished"] = state["done"][:2], False  # as if stopped after two blocks
    state["predicted_windows"] = state["skipped_windows"] = state["blocks_without_tissue"] = 0
    state_path.write_text(json.dumps(state))
    (out / f"{stem}_mask.tif").unlink()
    again = _run_wsi(slide, dark_run, out, "--reader", "openslide")
    np.testing.assert_array_equal(tifffile.imread(out / f"{stem}_mask.tif"), before)
    assert again["ftus"] == first["ftus"]
    assert again["predicted_windows"] < first["predicted_windows"]  # finished blocks were not predicted again
    from inference.wsi.cli import main

    assert main(["--slide", str(slide), "--models", str(dark_run), "--out", str(out), "--block", "1024"]) == 2


def test_ftu_polygons_follow_blocks_and_holes() -> None:
    mask = np.zeros((300, 400), np.uint8)
    mask[20:280, 30:370] = 1  # one component spanning every block
    mask[100:150, 100:150] = 0  # a hole
    mask[120:130, 120:130] = 1  # an island inside the hole: its own FTU
    ftus = list(iter_ftus(mask, scale=(2.0, 2.0), block=64, halo=8))
    assert len(ftus) == 2
    big = max(ftus, key=lambda f: f.area_px)
    assert len(big.polygons) == 1 and len(big.polygons[0]) == 2  # outer ring + one hole
    assert big.area_px == pytest.approx(4 * (260 * 340 - 2500))
    assert polygon_area(big.polygons) == pytest.approx(big.area_px, rel=0.01)
    assert (big.x0, big.y0, big.x1, big.y1) == (60, 40, 740, 560)


def test_wsi_tiles_labels_and_folds(demo_slides: Path, tmp_path: Path) -> None:
    from data_prep.tileset import load_index, read_png
    from data_prep.wsi_tiles import build_wsi_tiles

    for annotation in ("mask", "geojson"):
        out = tmp_path / annotation
        index = build_wsi_tiles(demo_slides, out, size=64, mpps=(1.0, 2.0), tiles_per_slide=9, ratio=(2, 1),
                                centre=16, annotation=annotation)
        assert len(index) == 2 * 2 * 9
        assert index.groupby("image_id")["fold"].nunique().eq(1).all() and index["fold"].nunique() == 2
        assert sorted(index["reduce"].unique()) == [2, 4] and set(index["split"]) == {0}
        for row in index.itertuples():
            mask = read_png(out / row.mask_path, mask=True)
            assert set(np.unique(mask)) <= {0, {"kidney": 1, "prostate": 2}[row.organ]}
            assert mask[24:40, 24:40].any() == bool(re.search(r"_p\d+$", row.tile_id))  # labelled by the 16 px centre
            assert read_png(out / row.image_path).shape == (64, 64, 3)
        assert len(load_index(out)) == len(index)
        again = build_wsi_tiles(demo_slides, out, size=64, mpps=(1.0, 2.0), tiles_per_slide=9, ratio=(2, 1),
                                centre=16, annotation=annotation)
        pd.testing.assert_frame_equal(again, index)


@pytest.mark.slow
def test_wsi_tiles_train_wsi_end_to_end(demo_slides: Path, tmp_path: Path) -> None:
    from data_prep.wsi_tiles import main as tiles_main
    from inference.wsi.cli import main as wsi_main
    from train.fastai_unet import main as train_main

    tiles = tmp_path / "tiles"
    tiles_main(["--slides", str(demo_slides), "--out", str(tiles), "--size", "128", "--tile-mpp", "1.0",
                "--tiles-per-slide", "24", "--centre", "32"])
    # the demo recipe on the tile set's own tiles (slides have no competition-layout images for the crop
    # sampler or whole-image validation, so fold -1: train on every slide)
    config = tmp_path / "unet_r18_wsi.py"
    config.write_text(
        "from dataclasses import replace\n\nfrom train.configs.fastai.cpu.unet_r18_demo import config as demo\n\n"
        "config = replace(demo, sampler='tiles', tile_size=96, epochs=1, minutes=None)\n"
    )
    train_main(["--config", str(config), "--fold", "-1", "--tiles", str(tiles), "--out", str(tmp_path / "runs")])
    run = tmp_path / "runs" / "unet_r18_wsi"
    checkpoint = json.loads((run / "fold-1" / "config.json").read_text())
    assert checkpoint["pixel_size"] == pytest.approx(128 / 96)
    slide = demo_slides.parent / pd.read_csv(demo_slides)["slide"].iloc[0]
    out = tmp_path / "wsi"
    assert wsi_main(["--slide", str(slide), "--models", str(run), "--out", str(out), "--organ", "kidney",
                     "--device", "cpu"]) == 0
    assert json.loads((out / "slide00_kidney.geojson").read_text())["type"] == "FeatureCollection"
    assert tifffile.imread(out / "slide00_kidney_mask.tif").shape == (SIDE, pd.read_csv(demo_slides)["width"][0])
