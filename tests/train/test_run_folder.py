"""train.run_folder: the flags, resume policy, atomic files, validation rows and scale rule both trainers share;
the fastai trainer's atomic, weights-only best.pth; the architecture table and --list."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from torch import nn

from data_prep.tileset import load_index
from train import run_folder
from train.fastai_callbacks import BestCheckpoint, load_learner_state
from train.fastai_data import split_rows
from train.models import architecture, exported_as_torchscript


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    run_folder.add_run_arguments(parser, config_help="c", weights_help="w")
    return parser


def test_shared_flags_and_old_spellings() -> None:
    base = ["--config", "c.py", "--fold", "0", "--tiles", "t"]
    args = _parser().parse_args(base)
    assert (args.out, args.encoder_weights, args.resume, args.overwrite, args.max_steps) == (
        Path("outputs"), None, True, False, None)
    old = _parser().parse_args([*base, "--work-dir", "o", "--backbone-weights", "None", "--resume"])
    assert (old.out, old.encoder_weights, old.resume) == (Path("o"), run_folder.RANDOM_WEIGHTS, True)
    new = _parser().parse_args([*base, "--no-resume", "--max-steps", "2", "--encoder-weights", "w.pth"])
    assert (new.resume, new.max_steps, new.encoder_weights) == (False, 2, "w.pth")
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--max-steps", "0"])
    usage = _parser().format_help()
    assert "--out" in usage and "--work-dir" not in usage and "--backbone-weights" not in usage


def test_both_trainers_take_the_same_flags(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
    from train import fastai_unet, mmseg_train

    flags = {}
    for module in (fastai_unet, mmseg_train):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        flags[module.__name__] = {w for w in capsys.readouterr().out.split() if w.startswith("--")}
    shared = {"--config", "--fold", "--tiles", "--out", "--data-dir", "--minutes", "--encoder-weights", "--no-resume",
              "--overwrite", "--max-steps"}
    assert shared <= flags["train.fastai_unet"] and shared <= flags["train.mmseg_train"]
    mm = mmseg_train.parse_args(["--config", "x.py", "--fold", "1", "--tiles", "t", "--work-dir", "o", "--resume",
                                 "--backbone-weights", "none"])
    assert (mm["out_root"], mm["resume"], mm["encoder_weights"]) == (Path("o"), True, run_folder.RANDOM_WEIGHTS)


def test_resume_policy(tmp_path: Path) -> None:
    folder = run_folder.run_dir(tmp_path, "run", 0)
    assert folder == tmp_path / "run" / "fold0"
    assert run_folder.prepare(folder) is None and not folder.exists()  # nothing there: a fresh run
    (folder / "checkpoints").mkdir(parents=True)
    assert run_folder.prepare(folder) is None and (folder / "checkpoints").is_dir()  # unfinished: resumed
    with pytest.raises(ValueError, match="launcher"):
        run_folder.prepare(folder, resume=False, launched=True)
    assert run_folder.prepare(folder, resume=False) is None and not folder.exists()  # --no-resume: started over
    run_folder.write_metrics(folder, {"dice": np.float32(0.5), "per_image": {1: 0.5}})
    assert run_folder.prepare(folder, resume=False) == {"dice": 0.5, "per_image": {"1": 0.5}}  # finished: kept
    assert run_folder.prepare(folder, overwrite=True) is None and not folder.exists()


def test_atomic_checkpoint_survives_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = run_folder.save_torch({"w": torch.ones(2)}, tmp_path / "best.pth")

    def torn_save(obj, handle, *args, **kwargs) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        run_folder.save_torch({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]  # no temporary file left behind


def _learner(folder: Path) -> Learner:
    items = [(torch.randn(2), torch.randn(1)) for _ in range(8)]
    dls = DataLoaders(DataLoader(items, bs=4), DataLoader(items, bs=4))
    return Learner(dls, nn.Linear(2, 1), loss_func=nn.MSELoss(), path=folder, model_dir="checkpoints")


def test_fastai_best_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while best.pth is written leaves the previous best.pth whole (fastai's Learner.save tears it)."""
    learn = _learner(tmp_path)
    tracker = BestCheckpoint(tmp_path, monitor="valid_loss", fname="best")
    tracker.learn = learn
    tracker._save("best")
    saved = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with torch.no_grad():
        learn.model.weight.add_(1.0)

    def killed(obj, file, *args, **kwargs) -> None:
        file.write(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        tracker._save("best")
    monkeypatch.undo()
    fresh = _learner(tmp_path)
    load_learner_state(fresh, tmp_path / "checkpoints" / "best.pth", tmp_path, with_opt=False)
    assert torch.equal(fresh.model.weight, saved["weight"])


def test_fastai_reloads_best_weights_only_and_inside_the_run(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    learn = _learner(run)
    torch.save({"model": learn.model.state_dict(), "opt": argparse.Namespace(step=1)}, run / "checkpoints" / "best.pth")
    with pytest.raises(pickle.UnpicklingError):  # an object in the file: the weights-only unpickler refuses it
        load_learner_state(learn, run / "checkpoints" / "best.pth", run, with_opt=False)
    torch.save(learn.model.state_dict(), elsewhere / "best.pth")
    (run / "checkpoints" / "linked.pth").symlink_to(elsewhere / "best.pth")
    with pytest.raises(ValueError, match="outside the run folder"):
        load_learner_state(learn, run / "checkpoints" / "linked.pth", run, with_opt=False)


def test_validation_rows_keep_order_and_name_missing_images(demo_data: Path) -> None:
    ids = pd.read_csv(demo_data / "train.csv")["id"].astype(str).tolist()[::-1][:3]
    rows, image_dir = run_folder.validation_rows(demo_data, [int(i) for i in ids])
    assert rows["id"].tolist() == ids and image_dir == demo_data / "train_images"
    with pytest.raises(ValueError, match="not in .*train.csv"):
        run_folder.validation_rows(demo_data, [*ids, "999999"])
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        run_folder.resolve_data_dir(None, demo_data)  # a folder without tiles.json records no data folder


def test_one_scale_rule_for_tiles_and_crops(demo_tiles: Path) -> None:
    from train.configs.fastai.base import load_config

    index = load_index(demo_tiles)
    tiles = index[(index["fold"] != 0) & (index["source"] != "scaled")]
    original = tiles[tiles["source"] == "original"]
    finest = float(np.median(original.loc[original["split"] == 2, "tile_pixel_size"]))
    assert run_folder.inference_scale(tiles, demo_tiles, 128) == (2.0, pytest.approx(finest))
    # tiles resized on load to 64 px: each model pixel covers twice the tile's um
    assert run_folder.inference_scale(tiles, demo_tiles, 64)[1] == pytest.approx(2 * finest)
    assert run_folder.inference_scale(tiles, demo_tiles, 128, reduce_k=1.0)[1] == pytest.approx(
        float(np.median(original.loc[original["split"] == 1, "tile_pixel_size"])))
    cfg = load_config("unet_r18_demo")[1]
    crops, _ = split_rows(index, 0, cfg)
    reduce_k, pixel_size = run_folder.inference_scale(crops, demo_tiles, 64, pixel_size=0.8)
    assert pixel_size == 0.8 and reduce_k == pytest.approx(250 / 64, rel=0.05)


def test_smoke_record_marks_the_folder(tmp_path: Path) -> None:
    assert run_folder.smoke_record(None) == {} and not run_folder.is_smoke(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": run_folder.smoke_record(2)}))
    assert run_folder.is_smoke(tmp_path)


def test_architecture_table() -> None:
    from train.configs.fastai.base import FastaiConfig

    assert architecture("MRN").torchscript and architecture("MRN").context_view
    assert not architecture("Unet").torchscript and not architecture("UnetPlusPlus").context_view
    assert exported_as_torchscript(FastaiConfig(encoder="tu-coat_lite_medium", tile_size=64))
    assert not exported_as_torchscript(FastaiConfig(tile_size=64))
    with pytest.raises(ValueError, match="needs context 1"):
        FastaiConfig(arch="Unet", context=2)


def test_list_shows_every_experiment_by_group_with_its_summary(capsys: pytest.CaptureFixture) -> None:
    from train import fastai_unet
    from train.configs.fastai.base import GROUPS, experiment_names

    fastai_unet.main(["--list"])
    lines = capsys.readouterr().out.splitlines()
    headings = [i for i, line in enumerate(lines) if line and not line.startswith(" ")]
    assert [lines[i].split()[0] for i in headings] == [f"{g}/" for g in GROUPS]
    for group, start, end in zip(GROUPS, headings, [*headings[1:], len(lines)], strict=True):
        assert [line.split()[0] for line in lines[start + 1:end] if line] == experiment_names(group)
    effb7 = next(line for line in lines if line.startswith("  unet_effb7_768 "))
    assert "EfficientNet-B7" in effb7 and lines.index(effb7) < headings[1]  # under recipes/
