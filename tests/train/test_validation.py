"""Validation through the submission path (kernel_validation) and the tile levels a tile-level valid_loss uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from inference.checkpoint import CheckpointConfig
from inference.engine.ensemble import Member
from inference.engine.predictor import Predictor
from inference.io import write_image
from inference.rle import encode
from inference.tables import load_train
from train.validation import kernel_validation, validation_tiles

MEAN, STD = 0.485, 0.229  # ImageNet red channel


class RedIsFTU(nn.Module):
    """A model whose FTU logit is high exactly where the red channel is bright (sign flips it)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1] * STD + MEAN
        return self.sign * (red - 0.5) * 40.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three train images (kidney HPA, lung HPA, spleen Hubmap) whose red channel is the FTU mask."""
    root = tmp_path_factory.mktemp("validation_data")
    (root / "train_images").mkdir()
    rows = []
    for image_id, organ, source, (h, w) in [(1, "kidney", "HPA", (90, 120)), (2, "lung", "HPA", (100, 100)),
                                            (3, "spleen", "Hubmap", (80, 96))]:
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 3 : w // 2 + 5] = 1
        image = np.full((h, w, 3), 90, np.uint8)
        image[..., 0] = mask * 255
        write_image(root / "train_images" / f"{image_id}.tiff", image)
        rows.append([image_id, organ, source, h, w, 0.4, 4, encode(mask), 50, "Male"])
    columns = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex".split(",")
    pd.DataFrame(rows, columns=columns).to_csv(root / "train.csv", index=False)
    return root


def _members(sign: float) -> list[Member]:
    config = CheckpointConfig(name="red", fold=0, framework="smp", task="binary", classes=["ftu"], tile_size=64,
                              pixel_size=0.4)
    return [Member(Predictor(config, RedIsFTU(sign), "cpu"))]


def test_perfect_model_scores_one_per_organ_and_source(dataset: Path) -> None:
    table = load_train(dataset / "train.csv")
    seen = []
    result = kernel_validation(_members(1.0), table, dataset / "train_images", on_image=seen.append, progress=False)
    assert result["dice"] == pytest.approx(1.0) and result["n"] == 3
    assert result["per_organ"] == pytest.approx({"kidney": 1.0, "lung": 1.0, "spleen": 1.0})
    assert result["per_data_source"] == pytest.approx({"HPA": 1.0, "Hubmap": 1.0})
    assert set(result["per_organ_source"]) == {"kidney/HPA", "lung/HPA", "spleen/Hubmap"}
    assert [(im.image_id, im.probability.shape) for im in seen] == [(1, (90, 120)), (2, (100, 100)), (3, (80, 96))]


def test_inverted_model_scores_zero_and_bad_images_fail_loudly(dataset: Path) -> None:
    table = load_train(dataset / "train.csv")
    assert kernel_validation(_members(-1.0), table, dataset / "train_images", progress=False)["dice"] == 0.0
    wrong = table.assign(img_height=table["img_height"] + 1)
    with pytest.raises(ValueError, match="train.csv says"):
        kernel_validation(_members(1.0), wrong, dataset / "train_images", progress=False)
    with pytest.raises(Exception, match="4"):
        kernel_validation(_members(1.0), table.assign(id=4), dataset / "train_images", progress=False)


def test_validation_tiles_pick_one_level_per_image() -> None:
    rows = []
    for image_id in (1, 2):
        rows += [dict(image_id=image_id, source="original", split=n, reduce=0) for n in (1, 2, 2, 2, 2)]
        rows += [dict(image_id=image_id, source="original", split=0, reduce=r) for r in (2, 4)]
    rows.append(dict(image_id=1, source="lpb", split=2, reduce=0))
    index = pd.DataFrame(rows)
    assert list(validation_tiles(index)["split"]) == [2] * 8  # finest split, LPB blends left out
    assert list(validation_tiles(index, 1)["split"]) == [1, 1]
    assert list(validation_tiles(index, 0)["reduce"]) == [2, 2]  # the finest reduce
    with pytest.raises(ValueError, match="no tiles at split=3"):
        validation_tiles(index, 3)


def test_validation_under_stain_tta_is_what_the_kernel_predicts(demo_data: Path, tmp_path: Path) -> None:
    """--stain-tta keeps the image as read beside its stain views: validation must not normalise it first."""
    from checkpoints import make_smp_checkpoint

    from inference.io import read_image
    from inference.predict import build_parser, load_members, main, options_from_args
    from inference.stain import fit_reference

    images = sorted((demo_data / "train_images").glob("*.tiff"))[:4]
    reference = fit_reference([read_image(p) for p in images], pixels_per_image=20_000).save(tmp_path / "ref.json")
    folder = make_smp_checkpoint(tmp_path / "run" / "fold0", tile=64)
    argv = ["--data-dir", str(demo_data), "--split", "train", "--models", str(folder), "--out", str(tmp_path / "s.csv"),
            "--stain-reference", str(reference), "--stain-tta", "macenko", "--save-probs", str(tmp_path / "probs"),
            "--save-probs-max-side", "100000", "--limit", "2"]
    assert main(argv) == 0
    args = build_parser().parse_args(argv)
    members = load_members(args.models, args.weights, args.device, args.batch_size, args.blend)
    seen: list = []
    kernel_validation(members, load_train(demo_data / "train.csv").head(2), demo_data / "train_images",
                      options_from_args(args), on_image=seen.append, progress=False)
    assert len(seen) == 2
    for image in seen:
        kernel = np.load(tmp_path / "probs" / f"{image.image_id}.npy").astype(np.float32)
        assert np.allclose(kernel, image.probability.astype(np.float16).astype(np.float32), atol=2e-3)
