"""Annotation import: the real LabelMe / ImageJ / mask files of ../shared/realdata, small written files pixel by
pixel, the three splits, appending, and a clear error for each hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from data_prep.import_annotations import (
    AnnotationError,
    Item,
    Meta,
    image_size,
    import_items,
    main,
    pair_files,
    rasterise,
    read_annotation,
    read_imagej,
    read_labelme,
)
from inference.rle import decode
from inference.tables import load_solution, load_test, load_train

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
PAS = Meta(organ="kidney", data_source="Hubmap", stain="PAS", pixel_size=0.5)


@pytest.fixture(scope="module")
def realdata() -> Path:
    """../shared/realdata; skipped where that folder is absent."""
    if not (REALDATA / "kidney_pas_hubmap").is_dir():
        pytest.skip(f"real annotated images not found at {REALDATA} (../shared is absent)")
    return REALDATA


def _image(path: Path, height: int = 40, width: int = 50) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _labelme(path: Path, shapes: list[dict], height: int = 40, width: int = 50) -> Path:
    path.write_text(json.dumps({"version": "4.5.6", "shapes": shapes, "imagePath": path.with_suffix(".png").name,
                                "imageData": None, "imageHeight": height, "imageWidth": width}))
    return path


def _poly(points: list, label: str = "Glomeruli", kind: str = "polygon") -> dict:
    return {"label": label, "points": points, "shape_type": kind, "group_id": None, "flags": {}}


def _mask_of(rows: pd.DataFrame, image_id: int) -> np.ndarray:
    r = rows.set_index("id").loc[image_id]
    return decode(r["rle"], int(r["img_height"]), int(r["img_width"]))


# ------------------------------------------------------------------------------------------------ real files

def test_every_pas_labelme_file_counts_245_glomeruli_over_58_images(realdata: Path) -> None:
    files = sorted((realdata / "kidney_pas_hubmap").glob("*.json"))
    counts = [len(read_labelme(f, ["Glomeruli"])[0]) for f in files]
    assert len(files) == 58 and sum(counts) == 245
    items = pair_files([realdata / "kidney_pas_hubmap"])
    assert len(items) == 58 and all(it.annotation.suffix == ".json" for it in items)
    # every file passes every check (size, points, area) against its image's size, without writing anything
    assert sum(read_annotation(it, *image_size(it.image), ["Glomeruli"]).ftus for it in items) == 245


def test_pas_tiles_import_as_train_rows_whose_rle_is_the_rasterised_mask(realdata: Path, tmp_path: Path) -> None:
    items = pair_files([realdata / "kidney_pas_hubmap"])[:3]
    rows = import_items(items, tmp_path, "train", PAS, labels=["Glomeruli"], progress=False)
    train = load_train(tmp_path / "train.csv")
    assert list(train["id"]) == [1, 2, 3]
    assert list(train["source_file"]) == [it.source_file for it in items]
    assert (train["stain"] == "PAS").all() and (train["pixel_size"] == 0.5).all()
    assert (train["tissue_thickness"] == 10).all()  # the organ's Hubmap value
    for item, r in zip(items, train.itertuples(), strict=True):
        shapes, _, _ = read_labelme(item.annotation, ["Glomeruli"])
        expected = rasterise(shapes, 1200, 1600, item.annotation)
        assert np.array_equal(decode(r.rle, r.img_height, r.img_width), expected)
        image = tifffile.imread(tmp_path / "train_images" / f"{r.id}.tiff")
        assert image.shape == (1200, 1600, 3) and image.dtype == np.uint8
        assert np.array_equal(image, np.asarray(Image.open(item.image).convert("RGB")))
    assert rows["ftus"].sum() == sum(len(read_labelme(it.annotation)[0]) for it in items)


def test_every_dab_imagej_set_imports_with_35_glomeruli_over_5_images(realdata: Path, tmp_path: Path) -> None:
    items = pair_files([realdata / "kidney_ihc_dab"])
    assert len(items) == 5 and all(it.annotation.name.endswith(".roi.zip") for it in items)
    rows = import_items(items, tmp_path, "train", Meta("kidney", "HPA", "DAB", 0.662), progress=False)
    assert rows["ftus"].sum() == 35 and len(rows) == 5
    train = load_train(tmp_path / "train.csv")
    for r in train.itertuples():
        mask = decode(r.rle, r.img_height, r.img_width)
        assert (r.img_height, r.img_width) == (1018, 1920)
        assert tifffile.imread(tmp_path / "train_images" / f"{r.id}.tiff").shape == (1018, 1920, 3)
        # every ROI of the set is one separate glomerulus of the mask
        rois = len(read_imagej(realdata / "kidney_ihc_dab" / Path(r.source_file).name.replace(".jpg", ".roi.zip")))
        assert cv2.connectedComponents(mask, connectivity=8)[0] - 1 == rois


def test_glas_masks_pair_by_suffix_and_import(realdata: Path, tmp_path: Path) -> None:
    items = pair_files([realdata / "glas"], mask_suffix="_anno")
    stems = [it.image.stem for it in items]
    assert len(items) == 105 and sum(s.startswith("train_") for s in stems) == 85
    assert sum(s.startswith("testB_") for s in stems) == 20
    assert all(it.annotation.name == f"{it.image.stem}_anno.png" for it in items)
    assert all(read_annotation(it, *image_size(it.image)).ftus > 0 for it in items)  # every mask fits its image
    chosen = [it for it in items if it.image.stem in ("train_1", "train_2", "testB_1")]
    rows = import_items(chosen, tmp_path, "test", Meta("largeintestine", "Hubmap", "H&E", 0.62), progress=False)
    solution = load_solution(tmp_path / "test_solution.csv")
    for item, r in zip(chosen, rows.itertuples(), strict=True):
        anno = np.asarray(Image.open(item.annotation))
        assert np.array_equal(_mask_of(solution, r.id), (anno > 0).astype(np.uint8))
        assert r.ftus == cv2.connectedComponents((anno > 0).astype(np.uint8), connectivity=8)[0] - 1 > 0


# ----------------------------------------------------------------------------------------- small written files

def test_labelme_polygon_rectangle_and_circle_pixels(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [
        _poly([[2, 2], [6, 2], [6, 6], [2, 6]]),  # pixel-centre square: 5 x 5 pixels, boundary inside
        _poly([[20, 3], [24, 7]], kind="rectangle"),  # both corners inside, as LabelMe's own export
        _poly([[40, 20], [43, 20]], kind="circle"),
        _poly([[30, 30], [35, 30], [35, 35]], label="Tissue"),  # filtered out
    ])
    ann = read_annotation(Item(tmp_path / "a.png", tmp_path / "a.json"), 40, 50, labels=["glomeruli"])
    expected = np.zeros((40, 50), np.uint8)
    expected[2:7, 2:7] = 1
    expected[3:8, 20:25] = 1
    cv2.fillPoly(expected, [np.round(np.array([40, 20]) + 3 * np.stack([np.cos(t), np.sin(t)], 1)).astype(np.int32)
                            for t in [np.linspace(0, 2 * np.pi, 96, endpoint=False)]], 1)
    assert np.array_equal(expected[17:24, 37:44], expected[17:24, 37:44][::-1, ::-1])  # a symmetric disc
    assert ann.ftus == 3
    assert np.array_equal(ann.mask, expected)


def test_imagej_rectangle_and_traced_outline_give_imagej_pixels(tmp_path: Path) -> None:
    roifile = pytest.importorskip("roifile")
    rect = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=2, top=3, right=5, bottom=7, name="r")
    traced = roifile.ImagejRoi.frompoints(np.array([[10, 10], [20, 10], [20, 20], [10, 20]]))
    roifile.roiwrite(tmp_path / "b.roi.zip", [rect, traced])
    _image(tmp_path / "b.png")
    (item,) = pair_files([tmp_path])
    assert item.annotation.name == "b.roi.zip"
    ann = read_annotation(item, 40, 50)
    expected = np.zeros((40, 50), np.uint8)
    expected[3:7, 2:5] = 1  # ImageJ's [left, right) x [top, bottom)
    expected[10:20, 10:20] = 1  # a corner outline from 10 to 20 encloses pixels 10..19
    assert ann.ftus == 2 and np.array_equal(ann.mask, expected)


def test_imagej_composite_roi_fills_even_odd_and_oval_is_inside_its_box(tmp_path: Path) -> None:
    roifile = pytest.importorskip("roifile")
    path = [0, 10, 10, 1, 30, 10, 1, 30, 30, 1, 10, 30, 4, 0, 15, 15, 1, 25, 15, 1, 25, 25, 1, 15, 25, 4]
    donut = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=10, top=10, right=30, bottom=30,
                              shape_roi_size=len(path), multi_coordinates=np.array(path, np.float32))
    oval = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.OVAL, left=34, top=4, right=44, bottom=14)
    roifile.roiwrite(tmp_path / "e.roi.zip", [donut, oval])
    ann = read_annotation(Item(tmp_path / "e.png", tmp_path / "e.roi.zip"), 40, 50)
    expected = np.zeros((40, 50), np.uint8)
    expected[10:30, 10:30] = 1
    expected[15:25, 15:25] = 0
    assert ann.ftus == 2 and np.array_equal(ann.mask[:, :32], expected[:, :32])
    disc = ann.mask[:, 32:]
    assert disc[4:14, 2:12].sum() == disc.sum() and 70 <= disc.sum() <= 90  # pi * 5 ** 2 = 78.5
    assert np.array_equal(disc[4:14, 2:12], disc[4:14, 2:12][::-1, ::-1])


def test_lzw_and_jpeg_compressed_tiff_images_import(tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(_image(tmp_path / "x.png")).convert("RGB"))
    src = tmp_path / "src"
    src.mkdir()
    for name, compression in (("lzw", "lzw"), ("jpg", "jpeg")):
        tifffile.imwrite(src / f"{name}.tif", rgb, photometric="rgb", compression=compression)
        _labelme(src / f"{name}.json", [_poly([[2, 2], [12, 2], [12, 12]])])
    rows = import_items(pair_files([src]), tmp_path / "data", "train", PAS, progress=False)
    assert list(rows["source_file"]) == ["src/jpg.tif", "src/lzw.tif"]
    assert np.array_equal(tifffile.imread(tmp_path / "data" / "train_images" / "2.tiff"), rgb)  # LZW: lossless
    jpeg = tifffile.imread(tmp_path / "data" / "train_images" / "1.tiff")
    assert jpeg.shape == (40, 50, 3) and jpeg.dtype == np.uint8


def test_geojson_hole_and_multipolygon_with_class_filter(tmp_path: Path) -> None:
    square = [[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]
    hole = [[15, 15], [25, 15], [25, 25], [15, 25], [15, 15]]
    features = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square, hole]},
         "properties": {"objectType": "annotation", "classification": {"name": "Glomeruli", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[40, 2], [45, 2], [45, 6], [40, 6], [40, 2]]], [[[40, 30], [44, 30], [44, 34], [40, 34], [40, 30]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Glomeruli"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}},
    ]}
    (tmp_path / "c.geojson").write_text(json.dumps(features))
    _image(tmp_path / "c.png")
    (item,) = pair_files([tmp_path])
    ann = read_annotation(item, 40, 50, labels=["Glomeruli"])
    # pixel-corner coordinates, as QuPath's: the square 10..30 encloses pixels 10..29, the hole 15..24
    expected = np.zeros((40, 50), np.uint8)
    expected[10:30, 10:30] = 1
    expected[15:25, 15:25] = 0
    expected[2:6, 40:45] = 1
    expected[30:34, 40:44] = 1
    assert ann.ftus == 3  # the polygon with a hole and the two parts of the MultiPolygon
    assert np.array_equal(ann.mask, expected)
    # a bare list of features and a single Feature read the same
    (tmp_path / "c.geojson").write_text(json.dumps(features["features"][:1]))
    assert read_annotation(item, 40, 50).ftus == 1
    (tmp_path / "c.geojson").write_text(json.dumps(features["features"][0]))
    assert read_annotation(item, 40, 50).mask.sum() == 20 * 20 - 10 * 10


def test_instance_mask_counts_ids_and_binary_mask_counts_components(tmp_path: Path) -> None:
    ids = np.zeros((40, 50), np.uint16)
    ids[5:10, 5:10], ids[10:15, 5:10], ids[30:35, 30:40] = 1, 2, 7  # 1 and 2 touch
    Image.fromarray(ids).save(tmp_path / "d_mask.png")
    _image(tmp_path / "d.png")
    (item,) = pair_files([tmp_path], mask_suffix="_mask")
    ann = read_annotation(item, 40, 50)
    assert ann.ftus == 3 and np.array_equal(ann.mask, (ids > 0).astype(np.uint8))
    Image.fromarray(((ids > 0) * 255).astype(np.uint8)).save(tmp_path / "d_mask.png")
    assert read_annotation(item, 40, 50).ftus == 2  # binary: touching instances merge


# ----------------------------------------------------------------------------------- splits, ids, appending

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three small LabelMe-annotated PNGs in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    for k, name in enumerate(("b", "a", "c")):
        _image(src / f"{name}.png")
        _labelme(src / f"{name}.json", [_poly([[2 + k, 2], [12, 2], [12, 12], [2, 12]])])
    return src


def test_ids_number_by_file_name_and_appending_is_idempotent(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    items = pair_files([folder])
    import_items(items[:2], out, "train", PAS, progress=False)
    first = load_train(out / "train.csv")
    assert list(first["source_file"]) == ["src/a.png", "src/b.png"] and list(first["id"]) == [1, 2]
    import_items(items, out, "train", PAS, progress=False)  # a re-run with one image more
    train = load_train(out / "train.csv")
    assert list(train["id"]) == [1, 2, 3] and train["source_file"].iloc[2] == "src/c.png"
    before = (out / "train.csv").read_bytes(), (out / "train_images" / "3.tiff").read_bytes()
    import_items(items, out, "train", PAS, progress=False)
    assert ((out / "train.csv").read_bytes(), (out / "train_images" / "3.tiff").read_bytes()) == before
    with pytest.raises(AnnotationError, match="already imported into train as id 1"):
        import_items(items[:1], out, "test", PAS, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    _image(other / "9.png")
    _labelme(other / "9.json", [_poly([[2, 2], [12, 2], [12, 12]])])
    with pytest.raises(AnnotationError, match="id 2 is already used in train by src/b.png"):
        import_items([Item(other / "9.png", other / "9.json", id=2)], out, "train", PAS, progress=False)
    rows = import_items(pair_files([other]), out, "test", PAS, ids="stem", progress=False)
    assert list(rows["id"]) == [9]


def test_test_split_and_images_only_tables(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    import_items(pair_files([folder]), out, "test", PAS, progress=False)
    test, solution = load_test(out / "test.csv"), load_solution(out / "test_solution.csv")
    assert list(test["id"]) == list(solution["id"]) == [1, 2, 3]
    assert list(pd.read_csv(out / "sample_submission.csv").columns) == ["id", "rle"]
    assert "rle" not in test.columns and (test_image := out / "test_images" / "1.tiff").is_file()
    assert tifffile.imread(test_image).shape == (40, 50, 3)
    expected = read_annotation(Item(folder / "a.png", folder / "a.json"), 40, 50).mask
    assert expected[2:13, 3:13].all() and np.array_equal(_mask_of(solution, 1), expected)  # id 1 is a.png
    import_items(pair_files([folder], images_only=True), out / "t", "targets", PAS, progress=False)
    targets = pd.read_csv(out / "t" / "targets" / "targets.csv")
    assert list(targets.columns[:6]) == ["id", "organ", "data_source", "img_height", "img_width", "pixel_size"]
    assert "rle" not in targets.columns and (out / "t" / "targets" / "3.tiff").is_file()
    from train.pseudo_label import image_table

    table = image_table(out / "t" / "targets", out / "t" / "targets" / "targets.csv", None, "Hubmap")
    assert list(table["id"]) == ["1", "2", "3"] and (table["organ"] == "kidney").all()


def test_table_overrides_metadata_per_image(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("file,organ,data_source,pixel_size,stain\nb.png,spleen,HPA,0.4,DAB\nc,,,,\n")
    rows = import_items(pair_files([folder]), tmp_path / "data", "train", PAS, table=table, progress=False)
    by_file = rows.set_index("source_file")
    assert by_file.loc["src/b.png", ["organ", "data_source", "pixel_size", "stain"]].tolist() == \
        ["spleen", "HPA", 0.4, "DAB"]
    assert by_file.loc["src/c.png", ["organ", "pixel_size", "stain"]].tolist() == ["kidney", 0.5, "PAS"]


# ------------------------------------------------------------------------------------------- hostile inputs

def test_labelme_size_mismatch_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly([[2, 2], [12, 2], [12, 12]])], height=80, width=100)
    with pytest.raises(AnnotationError, match=r"a\.json: LabelMe imageHeight x imageWidth 80x100 differ"):
        import_items(pair_files([tmp_path]), tmp_path / "out", "train", PAS, progress=False)
    assert not (tmp_path / "out" / "train.csv").exists()  # nothing written


def test_mask_size_mismatch_is_an_error(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(tmp_path / "a_anno.png")
    with pytest.raises(AnnotationError, match=r"a_anno\.png: mask is 20x20 px but the image .* is 50x40"):
        import_items(pair_files([tmp_path], mask_suffix="_anno"), tmp_path / "out", "train", PAS, progress=False)


@pytest.mark.parametrize(("points", "message"), [
    ([[2, 2], [12, 12]], "fewer than 3 distinct points"),
    ([[2, 2], [12, 12], [2, 2]], "fewer than 3 distinct points"),
    ([[2, 2], [6, 6], [12, 12]], "zero area"),
    ([[2, 2], [12, 2], [12, 140]], r"points up to 101\.0 px outside the 50x40 image"),
])
def test_degenerate_or_far_outside_polygons_are_errors(tmp_path: Path, points: list, message: str) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly(points)])
    with pytest.raises(AnnotationError, match=message):
        read_annotation(Item(tmp_path / "a.png", tmp_path / "a.json"), 40, 50)


def test_line_roi_is_not_an_area(tmp_path: Path) -> None:
    roifile = pytest.importorskip("roifile")
    line = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.LINE, x1=2, y1=2, x2=20, y2=20, name="cut")
    roifile.roiwrite(tmp_path / "a.roi", line)
    with pytest.raises(AnnotationError, match=r"a\.roi: ROI 0 \(cut, line\) is not an area"):
        read_annotation(Item(tmp_path / "a.png", tmp_path / "a.roi"), 40, 50)


def test_geojson_point_is_not_an_area_and_two_annotations_for_one_image_are_ambiguous(tmp_path: Path) -> None:
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]},
             "properties": {"classification": {"name": "Glomeruli"}}}
    (tmp_path / "a.geojson").write_text(json.dumps([point]))
    with pytest.raises(AnnotationError, match=r"a\.geojson: feature 0 \(label 'Glomeruli'\) is a Point, not an area"):
        read_annotation(Item(tmp_path / "a.png", tmp_path / "a.geojson"), 40, 50)
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly([[2, 2], [12, 2], [12, 12]])])
    with pytest.raises(AnnotationError, match=r"a\.png: several annotation files match it"):
        pair_files([tmp_path])
    assert pair_files([tmp_path], fmt="labelme", skip_unpaired=True)[0].annotation.name == "a.json"


def test_points_just_outside_are_clipped(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly([[-1.5, -1], [50.5, -1], [50.5, 10], [-1.5, 10]])])
    mask = read_annotation(Item(tmp_path / "a.png", tmp_path / "a.json"), 40, 50).mask
    assert mask[:11].all() and not mask[11:].any()


def test_empty_after_label_filter_is_an_error_unless_allowed(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly([[2, 2], [12, 2], [12, 12]], label="Tissue")])
    item = Item(tmp_path / "a.png", tmp_path / "a.json")
    with pytest.raises(AnnotationError, match=r"no FTU after --labels \['Glomeruli'\] \(labels in the file: "
                                              r"\['Tissue'\]\)"):
        read_annotation(item, 40, 50, labels=["Glomeruli"])
    assert read_annotation(item, 40, 50, labels=["Glomeruli"], allow_empty=True).mask.sum() == 0


def test_unpaired_files_are_errors_or_skipped(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _labelme(tmp_path / "a.json", [_poly([[2, 2], [12, 2], [12, 12]])])
    _labelme(tmp_path / "orphan.json", [_poly([[2, 2], [12, 2], [12, 12]])])
    _image(tmp_path / "lonely.png")
    with pytest.raises(AnnotationError) as err:
        pair_files([tmp_path])
    assert "orphan.json: annotation without an image" in str(err.value)
    assert "lonely.png: no annotation file found" in str(err.value)
    assert [it.image.name for it in pair_files([tmp_path], skip_unpaired=True)] == ["a.png"]


def test_unknown_organ_and_missing_source_are_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="unknown organ 'liver'"):
        import_items(pair_files([folder]), tmp_path / "o", "train", Meta("liver", "HPA"), progress=False)
    with pytest.raises(AnnotationError, match="no data source: pass --data-source"):
        import_items(pair_files([folder]), tmp_path / "o", "train", Meta("kidney"), progress=False)


def test_cli_imports_and_reports_errors(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--images", str(folder), "--out", str(tmp_path / "d"), "--organ", "kidney", "--data-source", "Hubmap",
          "--pixel-size", "0.5", "--stain", "PAS"])
    assert "3 image(s) imported" in capsys.readouterr().out
    assert len(load_train(tmp_path / "d" / "train.csv")) == 3
    _labelme(folder / "a.json", [_poly([[2, 2], [12, 12]])])
    with pytest.raises(SystemExit):
        main(["--images", str(folder), "--out", str(tmp_path / "e"), "--organ", "kidney", "--data-source", "HPA"])
    assert "fewer than 3 distinct points" in capsys.readouterr().err
