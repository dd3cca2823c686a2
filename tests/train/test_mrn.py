"""MRN: model shapes, the context view the sliding window builds, train -> TorchScript -> inference.wsi/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from inference.engine.sliding import sliding_window
from inference.rle import decode
from train.models.mrn import MRN


@pytest.mark.parametrize(("upsampling", "context"), [("transpose", 2), ("bilinear", 4)])
def test_mrn_forward_shape(upsampling: str, context: int) -> None:
    model = MRN("tu-resnet18", context=context, upsampling=upsampling).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 6, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="context"):
        MRN("tu-resnet18", context=1)


def test_sliding_window_appends_the_centred_context_view() -> None:
    image = torch.arange(3 * 64 * 64, dtype=torch.float32).reshape(3, 64, 64).remainder(251).to(torch.uint8)
    seen: list[torch.Tensor] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch)
        return torch.zeros(batch.shape[0], 1, 16, 16)

    sliding_window(image, forward, tile=16, stride=16, out_channels=1, batch_size=64, context=2)
    batch = torch.cat(seen)
    assert batch.shape[1] == 6
    # the window at (y, x) = (16, 16) is the 6th of a 4 x 4 grid; its context is the 32 px square centred on it
    view = batch[5, 3:].float()
    expected = torch.nn.functional.avg_pool2d(image[None, :, 8:40, 8:40].float(), 2)[0].round()
    assert torch.equal(view, expected)
    assert torch.equal(batch[5, :3], image[:, 16:32, 16:32])


@pytest.mark.slow
def test_mrn_trains_exports_and_predicts_slides(tmp_path: Path) -> None:
    from data_prep.make_demo import make_slides
    from data_prep.wsi_tiles import build_wsi_tiles
    from inference.predict import main as predict_main
    from inference.wsi.cli import main as wsi_main
    from inference.wsi.reader import open_slide
    from train.mrn_wsi_tiles import train_mrn

    slides = make_slides(tmp_path / "slides", 2, seed=1, side=1536)
    tiles = tmp_path / "tiles"
    build_wsi_tiles(slides, tiles, size=64, mpps=(2.0,), tiles_per_slide=12, centre=16, context=2)
    assert len(list((tiles / "context").glob("*.png"))) == 24
    folder = train_mrn(tiles, fold=0, out=tmp_path / "runs", epochs=1, bs=8)
    config = json.loads((folder / "config.json").read_text())
    assert config["framework"] == "torchscript" and config["context"] == 2 and config["arch"] == "MRN"
    row = pd.read_csv(slides).iloc[0]
    slide = slides.parent / row.slide
    out = tmp_path / "wsi"
    assert wsi_main(["--slide", str(slide), "--models", str(folder.parent), "--out", str(out), "--device", "cpu",
                     "--block", "512"]) == 0
    mask = tifffile.imread(out / f"{row.slide_id}_mask.tif")
    assert mask.shape == (row.height, row.width)
    data = tmp_path / "region"
    (data / "test_images").mkdir(parents=True)
    with open_slide(slide) as s:
        tifffile.imwrite(data / "test_images" / "1.tiff", s.read(0, 0, 0, 512, 512), photometric="rgb")
    pd.DataFrame([dict(id=1, organ=row.organ, data_source="Hubmap", img_height=512, img_width=512, pixel_size=0.5,
                       tissue_thickness=10)]).to_csv(data / "test.csv", index=False)
    assert predict_main(["--data-dir", str(data), "--models", str(folder.parent), "--out", str(tmp_path / "s.csv"),
                         "--scale-mode", "pixel-size", "--device", "cpu"]) == 0
    rows = pd.read_csv(tmp_path / "s.csv", keep_default_na=False)
    assert len(rows) == 1
    assert np.isin(np.unique(mask), [0, 255]).all()
    # the same MRN on the same pixels agrees with itself through both paths (context views included), away from
    # the region's border, where inference.predict reflects and the slide has real tissue beyond
    flat = decode(rows.loc[0, "rle"], 512, 512) > 0
    inner = np.s_[64:448, 64:448]
    assert ((mask[:512, :512] > 0)[inner] == flat[inner]).mean() > 0.98
