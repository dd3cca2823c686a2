"""Pseudo-labels end to end on demo data: ensemble prediction -> competition-layout train set with an ignore band
-> tile set --extra-data -> training-only rows for both trainers, whose losses never see the band."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkpoints import make_smp_checkpoint

from data_prep.tiles import build_tiles
from data_prep.tileset import EXTRA_FOLD, IGNORE_INDEX, TileSetError, read_png
from inference.rle import decode
from inference.tables import load_train
from train.configs.fastai.base import FastaiConfig
from train.fastai_data import split_rows
from train.mmseg_ext.dataset import check_ignore_index, fold_rows
from train.pseudo_label import image_table, main, pseudo_label, run_pseudo_labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints of constant output: p = sigmoid(2) = 0.88 (sure) and p = sigmoid(-2) = 0.12 (against)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        name: make_smp_checkpoint(root / name / "fold0", tile=64, logit=logit, pixel_size=3.2).parent
        for name, logit in (("sure", 2.0), ("against", -2.0))
    }


def test_thresholds_split_probabilities_into_ftu_band_and_background() -> None:
    p = np.array([[0.1, 0.2, 0.3], [0.59, 0.6, 0.9]], np.float32)
    ftu, band = pseudo_label(p, 0.2, 0.6)
    assert ftu.tolist() == [[False, False, False], [False, True, True]]
    assert band.tolist() == [[False, False, True], [True, False, False]]
    with pytest.raises(ValueError, match="low <= high"):
        pseudo_label(p, 0.7, 0.6)


@pytest.mark.slow
def test_pseudo_labels_end_to_end_into_training_only_rows(
    runs: dict[str, Path], demo_data: Path, demo_folds: Path, tmp_path: Path
) -> None:
    targets = demo_data / "targets"
    run_pseudo_labels(targets, [runs["sure"]], tmp_path / "sure", device="cpu")
    # Two members averaging to p = 0.5: every pixel falls in the band between 0.2 and 0.6.
    run_pseudo_labels(targets, [runs["sure"], runs["against"]], tmp_path / "unsure", device="cpu")
    table = pd.read_csv(targets / "images.csv")
    for out in (tmp_path / "sure", tmp_path / "unsure"):
        train = load_train(out / "train.csv")  # the competition layout the tile builder reads
        assert train["id"].tolist() == table["id"].tolist() and train["organ"].tolist() == table["organ"].tolist()
        assert (train["pseudo"] == 1).all() and (train["data_source"] == "Hubmap").all()
        assert np.allclose(train["pixel_size"], table["pixel_size"])
        for row in train.itertuples():
            assert (out / "train_images" / f"{row.id}.tiff").is_file()
    sure_train, unsure_train = load_train(tmp_path / "sure" / "train.csv"), load_train(tmp_path / "unsure" / "train.csv")
    row = sure_train.iloc[0]
    assert decode(row["rle"], row["img_height"], row["img_width"]).all() and sure_train["ignore_fraction"].eq(0).all()
    row = unsure_train.iloc[0]
    assert not decode(row["rle"], row["img_height"], row["img_width"]).any()
    assert decode(row["ignore_rle"], row["img_height"], row["img_width"]).all()

    tiles = tmp_path / "tiles"
    index = build_tiles(demo_data, demo_folds, tiles, size=64, splits=(1, 2), workers=1, scaled=(0.8,),
                        extra_data=[tmp_path / "unsure"])  # fmt: skip
    extra = index[index["source"] == "extra"]
    assert set(extra["image_id"]) == set(table["id"]) and (extra["fold"] == EXTRA_FOLD).all()
    assert (extra["fg_fraction"] == 0).all()  # the band is not foreground
    masks = [read_png(tiles / p, mask=True) for p in extra["mask_path"]]
    assert all(set(np.unique(m)) <= {0, IGNORE_INDEX} and (m == IGNORE_INDEX).any() for m in masks)
    for fold in [*sorted(int(f) for f in index["fold"].unique() if f >= 0), -1]:
        for sampler in ("crops", "tiles"):
            cfg = FastaiConfig(encoder_weights=None, tile_size=64, pixel_size=0.8, sampler=sampler)
            train, valid = split_rows(index, fold, cfg)
            assert set(train.loc[train["source"] == "extra", "image_id"]) == set(table["id"])
            assert not valid["source"].eq("extra").any()
            off = FastaiConfig(encoder_weights=None, tile_size=64, pixel_size=0.8, sampler=sampler,
                               use_extra_data=False)  # fmt: skip
            assert not split_rows(index, fold, off)[0]["source"].eq("extra").any()
        mmseg_train = fold_rows(index, fold, "train")
        assert set(mmseg_train.loc[mmseg_train["source"] == "extra", "image_id"]) == set(table["id"])
        assert (mmseg_train.loc[mmseg_train["source"] == "extra", "split"] > 0).all()  # tiles, not whole images
        if fold != -1:
            assert not fold_rows(index, fold, "val")["source"].eq("extra").any()

    clash = tmp_path / "clash"
    shutil.copytree(tmp_path / "unsure", clash)
    pd.read_csv(demo_data / "train.csv").head(1).to_csv(clash / "train.csv", index=False)
    with pytest.raises(TileSetError, match="already in"):
        build_tiles(demo_data, demo_folds, tmp_path / "tiles2", size=64, splits=(1,), workers=1, extra_data=[clash])


def test_rerun_skips_done_images_and_other_settings_need_overwrite(
    runs: dict[str, Path], demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pseudo"
    first = run_pseudo_labels(demo_data / "targets", [runs["sure"]], out, device="cpu")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()}
    second = run_pseudo_labels(demo_data / "targets", [runs["sure"]], out, device="cpu")
    pd.testing.assert_frame_equal(first, second)
    assert {p: p.stat().st_mtime_ns for p in (out / "parts").iterdir()} == stamps
    with pytest.raises(ValueError, match="--overwrite"):
        run_pseudo_labels(demo_data / "targets", [runs["sure"]], out, low=0.1, device="cpu")
    third = run_pseudo_labels(demo_data / "targets", [runs["sure"]], out, low=0.1, device="cpu", overwrite=True)
    assert len(third) == len(first)


def test_organ_from_the_table_or_the_flag(demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for p in (demo_data / "targets").glob("*.tiff"):
        shutil.copy(p, images / p.name)
    table = image_table(images, None, "kidney", "Hubmap")  # no CSV: every image gets --organ
    assert (table["organ"] == "kidney").all() and np.allclose(table["pixel_size"], 0.5)
    from_csv = image_table(demo_data / "targets", None, None, "Hubmap")
    assert from_csv["organ"].tolist() == pd.read_csv(demo_data / "targets" / "images.csv")["organ"].tolist()
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(images), "--models", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--organ" in capsys.readouterr().err


def test_mmseg_configs_ignore_the_band() -> None:
    from mmengine.config import Config

    config = Path(__file__).resolve().parents[2] / "train" / "configs" / "mmseg" / "upernet_convnext-demo.py"
    cfg = Config.fromfile(str(config))
    check_ignore_index(cfg.model)  # mmseg's default ignore_index (255) is the tile masks' IGNORE_INDEX
    cfg.model.decode_head.ignore_index = 0
    with pytest.raises(ValueError, match="ignore_index"):
        check_ignore_index(cfg.model)


@pytest.mark.parametrize("name", ["bce_dice", "bce_lovasz", "lovasz"])
def test_loss_ignores_the_band_and_is_unchanged_without_one(name: str) -> None:
    import segmentation_models_pytorch as smp
    import torch
    from torch import nn

    from train.losses import SegmentationLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:10, 4:10] = 1.0
    loss = SegmentationLoss(name)
    region = (smp.losses.DiceLoss("binary", from_logits=True) if name.endswith("dice")
              else smp.losses.LovaszLoss("binary", per_image=False))  # fmt: skip
    plain = region(logits, target) + (nn.BCEWithLogitsLoss()(logits, target) if name.startswith("bce") else 0)
    assert torch.allclose(loss(logits, target), plain, atol=1e-6)  # no band: today's loss
    banded = target.clone()
    banded[:, :, 10:16, :] = IGNORE_INDEX
    value = loss(logits, banded)
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad[:, :, 10:16, :].abs().max() == 0  # the band sends no gradient
    assert logits.grad[:, :, :10, :].abs().max() > 0
    wild = logits.detach().clone()
    wild[:, :, 10:16, :] = 50.0  # whatever the model says inside the band costs nothing
    assert torch.allclose(loss(wild, banded), loss(logits.detach(), banded), atol=1e-6)


def test_crop_batches_carry_the_band_to_the_loss() -> None:
    from train.crops import CropSampler, CropSettings, ScaledImage, ftu_points
    from train.fastai_data import CropDataset

    mask = np.zeros((96, 96), np.uint8)
    mask[:, 0::3] = 1  # stripes, so that every crop holds FTU, band and background
    mask[:, 1::3] = IGNORE_INDEX
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    item = ScaledImage("1", "kidney", image, mask, ftu_points(mask, np.random.default_rng(0)))
    dataset = CropDataset(CropSampler([item], CropSettings(size=96, ftu_share=0.0)), n=4, augment="flips")
    targets = [dataset[i][1] for i in range(4)]
    assert all(set(t.unique().tolist()) == {0.0, 1.0, float(IGNORE_INDEX)} for t in targets)


@pytest.mark.slow
def test_teacher_sees_the_stain_views_and_the_student_the_image_as_read(
    runs: dict[str, Path], demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.io import read_image
    from inference.stain import fit_reference

    train_images = sorted((demo_data / "train_images").glob("*.tiff"))[:4]
    ref = fit_reference([read_image(p) for p in train_images], pixels_per_image=20_000).save(tmp_path / "ref.json")
    out = tmp_path / "pseudo"
    main(["--images", str(demo_data / "targets"), "--models", str(runs["sure"]), "--out", str(out),
          "--stain-reference", str(ref), "--stain-tta", "--device", "cpu"])
    settings = json.loads((out / "pseudo_label.json").read_text())
    assert settings["stain_reference"] == str(ref) and settings["stain_tta"] == ["macenko", "reinhard"]
    for p in (demo_data / "targets").glob("*.tiff"):  # written as read, not normalised
        assert np.array_equal(read_image(out / "train_images" / p.name), read_image(p))
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(demo_data / "targets"), "--models", str(runs["sure"]), "--out", str(tmp_path / "x"),
              "--stain-tta"])
    assert exit_info.value.code == 2 and "--stain-reference" in capsys.readouterr().err


def test_teacher_adapts_batchnorm_on_target_groups_it_never_trained_on(demo_data: Path, tmp_path: Path) -> None:
    """The teacher predicts as inference.predict does: AdaBN (--adapt-bn unseen by default) on the Hubmap targets of
    an HPA-trained member changes the labels, --adapt-bn off keeps them as trained, and each is recorded."""
    from inference.predict import Options

    teacher = make_smp_checkpoint(tmp_path / "hpa" / "fold0", tile=64, pixel_size=3.2, data_sources=["HPA"]).parent
    labels = {}
    for mode in ("off", "unseen"):
        out = tmp_path / mode
        options = Options(adapt_bn=mode, adapt_bn_min_images=1, adapt_bn_windows=4)
        train = run_pseudo_labels(demo_data / "targets", [teacher], out, low=0.0, high=0.5, options=options,
                                  device="cpu")
        labels[mode] = train["rle"].tolist()
        assert json.loads((out / "pseudo_label.json").read_text())["adapt_bn"] == mode
    assert labels["off"] != labels["unseen"]
    again = run_pseudo_labels(demo_data / "targets", [teacher], tmp_path / "again", low=0.0, high=0.5,
                              options=Options(adapt_bn="off"), device="cpu")
    assert again["rle"].tolist() == labels["off"]  # the adapted statistics were put back: nothing leaks
