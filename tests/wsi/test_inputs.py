"""Whole-slide inputs and FTU outputs: reader routing, compressed and strip TIFFs, pixel-size checks, level choice,
valid polygons, post-processing, QuPath GeoJSON forms."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from inference.engine.postprocess import postprocess
from inference.io import ImageReadError
from inference.wsi.polygons import iter_ftus, polygon_area, write_ftus
from inference.wsi.reader import open_slide, route, write_pyramid


def _image(h: int = 700, w: int = 900, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture (compresses and survives JPEG with small errors)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 50 + 2, w // 50 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_routing_vendor_tiffs_to_openslide_and_generic_to_tifffile(tmp_path: Path, caplog) -> None:
    image = _image(1024, 1024)
    aperio = tmp_path / "aperio.tif"
    tifffile.imwrite(aperio, image, tile=(256, 256), photometric="rgb", compression="jpeg",
                     description="Aperio Image Library v12.0.0\n1024x1024 -> 1024x1024 - |AppMag = 20|MPP = 0.4990",
                     metadata=None)  # tifffile's own JSON description would hide Aperio's from OpenSlide
    assert route(aperio) == "openslide"
    with open_slide(aperio) as slide:
        assert slide.reader == "openslide" and slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"
    power_only = tmp_path / "power.tif"
    tifffile.imwrite(power_only, image, tile=(256, 256), photometric="rgb",
                     description="Aperio Image Library v12.0.0\n1024x1024 -> 1024x1024 - |AppMag = 40", metadata=None)
    with caplog.at_level(logging.WARNING), open_slide(power_only) as slide:
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "objective power"
    assert "objective power 40x" in caplog.text
    generic = tmp_path / "generic.tif"
    write_pyramid(generic, [image], 1024, 1024, mpp=0.5, min_side=256)
    ome = tmp_path / "slide.ome.tif"
    write_pyramid(ome, [image], 1024, 1024, mpp=0.5, layout="subifds", min_side=256)
    assert route(generic) == "tifffile" and route(ome) == "tifffile"
    for path in (generic, ome):
        with open_slide(path) as slide:
            assert slide.reader == "tifffile" and len(slide.dimensions) == 3 and slide.mpp == pytest.approx(0.5)
            np.testing.assert_array_equal(slide.read(0, 100, 200, 300, 150), image[200:350, 100:400])


def test_lzw_and_jpeg_tiles_read_and_a_broken_tile_is_one_line(tmp_path: Path, dark_run: Path, capfd) -> None:
    image = _image(1024, 1024)
    for compression in ("lzw", "jpeg"):
        path = tmp_path / f"{compression}.ome.tif"
        with tifffile.TiffWriter(path, ome=True) as tif:
            tif.write(image, tile=(256, 256), compression=compression, photometric="rgb", subifds=1,
                      resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
            tif.write(image[::2, ::2], tile=(256, 256), compression=compression, photometric="rgb", subfiletype=1)
        with open_slide(path) as slide:
            assert slide.dimensions == [(1024, 1024), (512, 512)] and slide.mpp == pytest.approx(0.5)
            region = slide.read(0, 300, 200, 400, 500).astype(int)
            error = np.abs(region - image[200:700, 300:700]).mean()
            assert error == 0 if compression == "lzw" else error < 3
    broken = tmp_path / "broken.tif"
    data = bytearray((tmp_path / "jpeg.ome.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "jpeg.ome.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    data[offset + 10 : offset + count - 10] = bytes(count - 20)
    broken.write_bytes(bytes(data))
    with open_slide(broken) as slide, pytest.raises(ImageReadError, match=r"cannot decode tile 5 of level 0 \(JPEG\)"):
        slide.read(0, 0, 0, 1024, 1024)
    capfd.readouterr()
    from inference.wsi.cli import main

    assert main(["--slide", str(broken), "--models", str(dark_run), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--block", "512"]) == 2
    err = capfd.readouterr().err
    assert "error: " in err and "cannot decode tile" in err
    assert "Traceback" not in err and "Task was destroyed" not in err and "asyncio" not in err


def test_strip_tiffs_read_raw_or_converted_once(tmp_path: Path, caplog) -> None:
    image = _image(1500, 1100)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with tifffile.TiffFile(plain) as tif:
        assert not tif.pages[0].is_tiled and len(tif.pages[0].dataoffsets) == 1  # tifffile's default: one strip
    with open_slide(plain) as slide:
        assert slide._raw(slide._pages[0], 0, 0, 1, 1) is not None  # read row by row, no conversion
        np.testing.assert_array_equal(slide.read(0, 1000, 1400, 200, 200)[:100, :100], image[1400:, 1000:])
        assert slide.mpp == pytest.approx(0.5) and slide.path == plain
    packed = tmp_path / "packed.tif"
    tifffile.imwrite(packed, image, photometric="rgb", compression="zlib", rowsperstrip=1500,
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    work = tmp_path / "work"
    with caplog.at_level(logging.WARNING), open_slide(packed, work=work) as slide:
        assert slide.path == packed and slide.mpp == pytest.approx(0.5) and len(slide.dimensions) == 2
        np.testing.assert_array_equal(slide.read(0, 0, 0, 1100, 1500), image)
    assert "converting once to a tiled pyramid" in caplog.text
    converted = list(work.glob("converted-*.tif"))
    assert len(converted) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING), open_slide(packed, work=work) as slide:
        assert slide.dimensions[0] == (1100, 1500)
    assert "converting" not in caplog.text and list(work.glob("converted-*.tif")) == converted  # once


def test_work_region_shrunk_band_by_band_equals_one_resize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A strip TIFF region read in bands of a few work rows and shrunk per band is the one-resize result, edges
    included (the level's last row and column repeated where its size is not a multiple of k)."""
    import inference.wsi.predict as wsi

    image = _image(1003, 1201, seed=3)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    k = 4
    padded = cv2.copyMakeBorder(image, 0, -1003 % k, 0, -1201 % k, cv2.BORDER_REPLICATE)
    whole = cv2.resize(padded, (padded.shape[1] // k, padded.shape[0] // k), interpolation=cv2.INTER_AREA)
    monkeypatch.setattr(wsi, "BAND_BYTES", 3 * 300 * k * 3 * k)  # 3 work rows of a 300-px-wide region per band
    with open_slide(path) as slide:
        assert wsi.WorkGrid.at(slide, 0, k).shape == whole.shape[:2]
        for region in ((0, 0, 301, 251), (200, 190, 301, 251), (17, 5, 90, 250)):
            x0, y0, x1, y1 = region
            np.testing.assert_array_equal(wsi.read_work_region(slide, wsi.WorkGrid.at(slide, 0, k), region),
                                          whole[y0:y1, x0:x1])


def test_pixel_size_checks_and_level_choice(tmp_path: Path, dark_run: Path, capsys) -> None:
    image = _image(1024, 1024)
    path = tmp_path / "p.tif"
    write_pyramid(path, [image], 1024, 1024, mpp=0.25, min_side=256)
    with open_slide(path) as slide:
        assert [round(slide.level_mpp(i), 3) for i in range(3)] == [0.25, 0.5, 1.0]
        assert slide.level_for(0.8) == 1  # the 0.5 level, downsampled, not the 1.0 level upsampled
        assert slide.level_for(1.0) == 2 and slide.level_for(0.95) == 2 and slide.level_for(0.1) == 0
    with pytest.raises(ImageReadError, match=r"1000 um/px from --mpp .*pass --mpp"):
        open_slide(path, mpp=1000)
    mm = tmp_path / "mm.tif"  # resolution tags written as if um were mm: 250 um/px
    tifffile.imwrite(mm, image, tile=(256, 256), photometric="rgb", resolution=(40, 40), resolutionunit="CENTIMETER")
    with pytest.raises(ImageReadError, match=r"pixel size 250 um/px from the file's metadata .*pass --mpp"):
        open_slide(mm)
    with open_slide(mm, mpp=0.5) as slide:
        assert slide.mpp == 0.5
    from inference.wsi.cli import main

    assert main(["--slide", str(mm), "--models", str(dark_run), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    assert "250 um/px" in capsys.readouterr().err


def _pinched_mask() -> np.ndarray:
    """Shapes whose pixels touch only at corners: a checkerboard patch, a diagonal chain, a bay closed at a corner."""
    mask = np.zeros((120, 160), np.uint8)
    mask[10:20, 10:20] = (np.indices((10, 10)).sum(0) % 2 == 0)
    for i in range(8):
        mask[40 + 4 * i : 44 + 4 * i, 10 + 4 * i : 14 + 4 * i] = 1  # blocks meeting corner to corner
    mask[60:100, 60:100] = 1
    mask[70:90, 70:90] = 0  # a hole ...
    mask[69, 69] = 0
    mask[60:69, 60:69] = 0
    mask[69, 69] = 0
    mask[10:50, 100:150] = 1
    mask[20:40, 110:140] = 0
    mask[40, 140:150] = 0
    mask[41:50, 141:150] = 0  # ... whose wall meets at a corner only
    return mask


def test_polygons_are_valid_where_pixels_touch_at_corners() -> None:
    import shapely

    mask = _pinched_mask()
    ftus = list(iter_ftus(mask, block=64, halo=8))
    count, _ = cv2.connectedComponents(mask, connectivity=8)
    assert len(ftus) == count - 1
    assert max(len(f.polygons) for f in ftus) > 1  # a corner contact splits an FTU into parts
    for ftu in ftus:
        multi = shapely.MultiPolygon([shapely.Polygon(r[0], r[1:]) for r in ftu.polygons])
        assert multi.is_valid, shapely.is_valid_reason(multi)
        for rings in ftu.polygons:
            for ring in rings:
                vertices = [tuple(v) for v in ring[:-1]]
                assert len(set(vertices)) == len(vertices)
        if ftu.area_px >= 100:  # a cut corner contact costs about half a pixel
            assert polygon_area(ftu.polygons) == pytest.approx(ftu.area_px, rel=0.05)
    assert sum(polygon_area(f.polygons) for f in ftus) == pytest.approx(mask.sum(), rel=0.02)
    # random blobs: the figure-8 rings the old tracer made about 5% of the time
    rng = np.random.default_rng(1)
    blobs = (cv2.GaussianBlur(rng.random((400, 400)).astype(np.float32), (0, 0), 3) > 0.515).astype(np.uint8)
    ftus = list(iter_ftus(blobs, block=128, halo=16))
    for ftu in ftus:
        assert shapely.MultiPolygon([shapely.Polygon(r[0], r[1:]) for r in ftu.polygons]).is_valid
    assert sum(polygon_area(f.polygons) for f in ftus) == pytest.approx(blobs.sum(), rel=0.02)


def test_write_ftus_classes_objects_and_columns(tmp_path: Path) -> None:
    mask = _pinched_mask()
    totals = write_ftus(iter_ftus(mask, scale=(2.0, 2.0)), tmp_path / "s.geojson", tmp_path / "s.csv", 0.25,
                        "spleen", slide="s", objects="detection")
    features = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert {json.dumps(f["properties"]["classification"]) for f in features} == {
        json.dumps({"name": "white pulp", "color": [200, 120, 220]})}
    assert len({f["id"] for f in features}) == len(features)
    table = pd.read_csv(tmp_path / "s.csv")
    assert list(table.columns[:3]) == ["slide", "ftu_id", "class"] and set(table["mpp"]) == {0.25}
    assert totals["ftus"] == len(table) == len(features) and (table["x1"] > table["x0"]).all()
    assert table["area_um2"].sum() == pytest.approx(4 * mask.sum() * 0.0625)


def test_clean_mask_is_postprocess_per_component(tmp_path: Path) -> None:
    from inference.wsi.predict import WorkState, WsiOptions, clean_mask

    rng = np.random.default_rng(2)
    mask = (cv2.GaussianBlur(rng.random((1100, 1300)).astype(np.float32), (0, 0), 4) > 0.51).astype(np.uint8)
    mask[200:600, 200:600] = 1
    mask[300:500, 300:500] = 0
    mask[380:400, 380:400] = 1  # an island in a hole: covered once the hole is filled
    work = WorkState(tmp_path / "S_work", {"test": 1}, mask.shape, overwrite=False)
    work.mask[:] = mask
    for options, areas in ((WsiOptions(organ="kidney", fill_holes=True, min_area_um2={"kidney": 300.0}),
                            {"kidney": 300.0}), (WsiOptions(min_area_um2=dict.fromkeys(("kidney", "lung"), 50.0)),
                                                 {"FTU": 50.0})):
        work.state["cleaned"] = False
        clean = np.asarray(clean_mask(work, options, options.organ or "FTU", 0.8)[:])
        expected = postprocess(mask.astype(bool), options.organ or "FTU", 0.8, options.fill_holes, areas)
        np.testing.assert_array_equal(clean.astype(bool), expected)
        assert 0 < clean.sum() and (clean.sum() != mask.sum())


def test_wsi_tiles_reads_every_qupath_geojson_form(tmp_path: Path) -> None:
    from data_prep.tileset import TileSetError
    from data_prep.wsi_tiles import geojson_geometries

    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    two = {"type": "MultiPolygon", "coordinates": [square["coordinates"], square["coordinates"]]}

    def feature(geometry: dict, name: str | None) -> dict:
        properties = {"objectType": "annotation"}
        if name:
            properties["classification"] = {"name": name, "color": [255, 0, 0]}
        return {"type": "Feature", "geometry": geometry, "properties": properties}

    features = [feature(square, "glomerulus"), feature(two, "Tumor"), feature(square, None)]
    forms = [{"type": "FeatureCollection", "features": features}, features]
    for form in forms:
        assert len(geojson_geometries(form)) == 3
        assert geojson_geometries(form, ("glomerulus",)) == [square]
        assert geojson_geometries(form, ("Tumor", "glomerulus")) == [square, two]
    assert geojson_geometries(features[1]) == [two]  # one Feature
    assert geojson_geometries(square) == [square] and geojson_geometries([square, two]) == [square, two]
    assert geojson_geometries({"type": "GeometryCollection", "geometries": [square, two]}) == [square, two]
    legacy = {"type": "Feature", "geometry": square, "properties": {"classification": "gland"}}
    assert geojson_geometries([legacy], ("gland",)) == [square]
    with pytest.raises(TileSetError, match="bare Polygon"):
        geojson_geometries(square, ("glomerulus",))
    with pytest.raises(TileSetError, match="unknown GeoJSON type"):
        geojson_geometries({"type": "Circle"})


def test_wsi_tiles_array_geojson_and_classes(demo_slides: Path, tmp_path: Path) -> None:
    from data_prep.wsi_tiles import build_wsi_tiles

    table = pd.read_csv(demo_slides)
    base = demo_slides.parent
    copy = tmp_path / "slides"
    copy.mkdir()
    for row in table.itertuples():
        collection = json.loads((base / row.geojson).read_text())
        (copy / row.geojson).write_text(json.dumps(collection["features"]))  # QuPath's plain array of features
    table["slide"] = [str(base / s) for s in table["slide"]]
    table.to_csv(copy / "slides.csv", index=False)
    index = build_wsi_tiles(copy / "slides.csv", tmp_path / "tiles", size=64, mpps=(2.0,), tiles_per_slide=6,
                            centre=16, annotation="geojson", classes=("glomerulus",))
    positives = index[index["tile_id"].str.contains(r"_p\d+$")]
    assert set(positives["organ"]) == {"kidney"}  # prostate's glands were filtered out
    assert (index[index["organ"] == "kidney"]["tile_id"].str.contains("_p")).any()


@pytest.mark.slow
def test_fine_level_is_shrunk_before_prediction(
    demo_slides: Path, dark_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A level 2x finer than the model (OpenSlide sees level 0 only of an OME pyramid) is area-shrunk first."""
    import inference.wsi.predict as wsi
    from inference.metric import dice
    from inference.wsi.cli import main

    slide = demo_slides.parent / pd.read_csv(demo_slides)["slide"][0]
    masks, summaries = [], []
    for name, factor in (("shrunk", wsi.PREDOWNSAMPLE), ("full", 1e9)):
        monkeypatch.setattr(wsi, "PREDOWNSAMPLE", factor)
        out = tmp_path / name
        assert main(["--slide", str(slide), "--models", str(dark_run), "--out", str(out), "--block", "512",
                         "--device", "cpu", "--reader", "openslide"]) == 0
        summary = json.loads((out / "slide00_kidney_summary.json").read_text())
        assert summary["level"] == 0
        summaries.append(summary)
        masks.append(tifffile.imread(out / "slide00_kidney_mask.tif") > 0)
    assert masks[0].mean() > 0.05 and dice(masks[0], masks[1]) > 0.98
    # shrunk: the work arrays are at about the model's um/px (a whole factor k of level 0), not at level 0
    (w0, h0), k = summaries[1]["dimensions"], round(summaries[0]["work_mpp"] / summaries[0]["level_mpp"])
    assert k >= 2 and summaries[0]["work_mpp"] <= summaries[0]["model_mpp"]
    assert summaries[0]["work_dimensions"] == [-(-w0 // k), -(-h0 // k)]
    assert summaries[1]["work_dimensions"] == [w0, h0] and masks[0].shape == masks[1].shape == (h0, w0)
