"""SegFormer in the mmseg trainer: the CPU config trains on demo data for a fixed number of iterations (the session
fixture segformer_run) as a binary (FTU / background) model, averages its 2 best validations' weights, exports one
FTU logit to TorchScript, and predicts through inference.predict like a fastai checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import SEGFORMER_ITERS, SEGFORMER_SIDE, SEGFORMER_VAL_INTERVAL, segformer_tile_options

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from inference.checkpoint import CheckpointConfig  # noqa: E402
from inference.engine.predictor import load_predictor  # noqa: E402
from train.export import SegmentorLogits, max_abs_difference  # noqa: E402
from train.mmseg_ext.checkpoint import load_segmentor  # noqa: E402
from train.mmseg_train import ARTIFACTS, main  # noqa: E402

pytestmark = [pytest.mark.mmseg, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[2] / "train" / "configs" / "mmseg" / "segformer_mit-b0_cpu.py"
SIDE = SEGFORMER_SIDE


def test_segformer_writes_a_binary_checkpoint(segformer_run: Path) -> None:
    assert all((segformer_run / name).is_file() for name in ARTIFACTS)
    config = CheckpointConfig.load(segformer_run)
    assert (config.task, config.classes, config.tile_size) == ("binary", ["ftu"], SIDE)
    assert config.arch == "EncoderDecoder/SegformerHead" and config.encoder.startswith("MixVisionTransformer")
    scripted = torch.jit.load(str(segformer_run / "model.ts"))
    x = torch.randn(2, 3, SIDE, SIDE)
    assert scripted(x).shape == (2, 1, SIDE, SIDE)  # one FTU logit: the kernel's sigmoid is the 2-class softmax
    segmentor, _ = load_segmentor(segformer_run / "mmseg_config.py", segformer_run / "best.pth")
    assert max_abs_difference(SegmentorLogits(segmentor).eval(), scripted, x) < 1e-4
    with torch.no_grad():
        two = segmentor.decode_head(segmentor.backbone(x))
        one = SegmentorLogits(segmentor)(x)
    softmax_ftu = torch.nn.functional.interpolate(two, size=(SIDE, SIDE), mode="bilinear").softmax(1)[:, 1:2]
    assert torch.allclose(one.sigmoid(), softmax_ftu, atol=1e-5)
    # the kernel loads it as a binary member: no majority-class rule
    predictor = load_predictor(segformer_run, torch.device("cpu"))
    assert not predictor.multiclass and predictor.channels == 1


def test_segformer_averages_its_best_validations(segformer_run: Path) -> None:
    """Under the iteration cap both validations happen, both are averaged, and the best checkpoint is the better."""
    metrics = json.loads((segformer_run / "metrics.json").read_text())
    averaged = metrics["averaged"]
    validations = list(range(SEGFORMER_VAL_INTERVAL, SEGFORMER_ITERS + 1, SEGFORMER_VAL_INTERVAL))
    assert averaged["k"] == 2 and averaged["by"] == "dice" and averaged["steps"] == validations
    assert metrics["trained_iters"] == SEGFORMER_ITERS
    assert metrics["best_checkpoint_dice"] == max(averaged["scores"])
    assert metrics["iter"] == validations[averaged["scores"].index(max(averaged["scores"]))]
    assert metrics["checkpoint"] == f"best_dice_iter_{metrics['iter']}.pth"
    # the averaged model is validated again: its own Dice, one per validation image, from the same images
    assert metrics["dice"] == pytest.approx(sum(metrics["per_image"].values()) / len(metrics["per_image"]))
    train_record = CheckpointConfig.load(segformer_run).train
    assert train_record["average_k"] == 2 and train_record["average_by"] == "dice"


def test_segformer_validation_is_what_inference_predict_scores(segformer_run: Path, demo_data: Path, tmp_path: Path) -> None:
    from inference.predict import main as predict_main
    from inference.score import score
    from inference.tables import load_submission, load_test, load_train

    metrics = json.loads((segformer_run / "metrics.json").read_text())
    out = tmp_path / "train_predictions.csv"
    common = ["--data-dir", str(demo_data), "--models", str(segformer_run), "--device", "cpu"]
    assert predict_main([*common, "--split", "train", "--out", str(out)]) == 0
    ids = {int(i) for i in metrics["per_image"]}
    submission, truth = load_submission(out), load_train(demo_data / "train.csv")
    result = score(submission[submission["id"].isin(ids)], truth[truth["id"].isin(ids)])
    assert result["dice"] == pytest.approx(metrics["dice"], abs=1e-3)  # the averaged model's Dice, recomputed
    test_out = tmp_path / "submission.csv"
    assert predict_main([*common, "--out", str(test_out)]) == 0
    assert list(load_submission(test_out)["id"]) == list(load_test(demo_data / "test.csv")["id"])


def test_last_k_averaging_at_fold_minus_one_under_a_budget(demo_tiles: Path, tmp_path: Path, fake_clock: None) -> None:
    """No validation to rank by: the last 2 checkpoint intervals of a budgeted run (rescaled by --minutes; on the
    fake clock an iteration costs 1 s whatever the machine's load)."""
    demo = CONFIG.with_name("segformer_mit-b0_demo.py")
    options = [*segformer_tile_options(SIDE), "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
               "average_k=2", "average_by=last"]
    main(["--config", str(demo), "--fold", "-1", "--tiles", str(demo_tiles), "--work-dir", str(tmp_path),
          "--minutes", "0.3", "--cfg-options", *options])
    run = tmp_path / demo.stem / "fold-1"
    metrics = json.loads((run / "metrics.json").read_text())
    averaged = metrics["averaged"]
    assert averaged["by"] == "last" and len(averaged["steps"]) == 2 and averaged["scores"] == [None, None]
    assert averaged["steps"][-1] == metrics["trained_iters"] and averaged["steps"][0] < averaged["steps"][1]
    assert metrics["dice"] is None and (run / "model.ts").is_file()
