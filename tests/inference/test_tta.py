"""Multi-scale and stain TTA views, their time-budget levels, and the organ-from-csv default, on demo data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import ColourNet, ConstantNet, make_smp_checkpoint, make_torchscript_checkpoint
from torchstain.numpy.normalizers import NumpyReinhardNormalizer

from inference import predict
from inference.checkpoint import CheckpointConfig
from inference.engine.budget import degradation_levels
from inference.engine.ensemble import EnsembleOptions, Member, member_windows, predict_image
from inference.engine.predictor import Predictor
from inference.engine.tta import ViewArgumentError, parse_scales, parse_stain_methods, predict_scales
from inference.io import read_image
from inference.organs import class_index
from inference.score import score
from inference.stain import StainReference, fit_reference, load_reference, reinhard_normalise
from inference.tables import load_solution, load_submission
from inference.tiling import scaled_size


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tta_runs")
    return {"binary": make_smp_checkpoint(root / "unet" / "fold0", tile=64, seed=3),
            "multiclass": make_torchscript_checkpoint(root / "tiny" / "fold0", tile=64)}


@pytest.fixture(scope="module")
def reference(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Macenko + Reinhard reference fitted on the demo train images (HPA style)."""
    images = [read_image(p) for p in sorted((demo_data / "train_images").glob("*.tiff"))[:4]]
    return fit_reference(images, pixels_per_image=20_000).save(tmp_path_factory.mktemp("ref") / "ref.json")


def _predict(demo_data: Path, out: Path, models: list[Path], *extra: str) -> tuple[bytes, dict[str, bytes]]:
    probs = out.with_suffix("")
    assert predict.main(["--data-dir", str(demo_data), "--models", *map(str, models), "--out", str(out),
                         "--save-probs", str(probs), *extra]) == 0
    return out.read_bytes(), {p.name: p.read_bytes() for p in sorted(probs.glob("*.npy"))}


@pytest.mark.slow
def test_tta_scales_1_is_byte_for_byte_todays_output(demo_data: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    models = [runs["binary"], runs["multiclass"]]
    for tta in ("0", "2"):
        plain = _predict(demo_data, tmp_path / f"plain{tta}.csv", models, "--tta", tta)
        ones = _predict(demo_data, tmp_path / f"ones{tta}.csv", models, "--tta", tta, "--tta-scales", "1")
        assert plain[0] == ones[0] and plain[1] == ones[1] and len(plain[1]) == 6
    multi = _predict(demo_data, tmp_path / "multi.csv", models, "--tta", "2", "--tta-scales", "0.8,1,1.2")
    assert multi[1] != plain[1] and multi[1].keys() == plain[1].keys()


def test_predict_scales_averages_maps_resized_to_the_working_size() -> None:
    cfg = CheckpointConfig(name="c", fold=0, framework="torchscript", task="binary", classes=["ftu"], tile_size=16,
                           weights="model.ts")
    predictor = Predictor(cfg, ConstantNet([math.log(0.3 / 0.7)]))
    image = np.zeros((40, 30, 3), np.uint8)
    probs = predict_scales(predictor, image, (40, 30), 2, (0.5, 1.0, 1.5))
    assert probs.shape == (1, 40, 30) and np.allclose(probs, 0.3, atol=1e-5)
    assert scaled_size(40, 30, 1.5) == (60, 45) and scaled_size(40, 30, 1.5, max_side=48) == (48, 36)


def test_scale_and_method_parsing() -> None:
    assert parse_scales("0.8, 1,1.2") == (0.8, 1.0, 1.2)
    for bad in ("", "0", "-1", "x", "1,1", "9"):
        with pytest.raises(ViewArgumentError):
            parse_scales(bad)
    assert parse_stain_methods("Reinhard,macenko,reinhard") == ("reinhard", "macenko")
    with pytest.raises(ValueError, match="must be among"):
        parse_stain_methods("vahadane")


def test_bad_view_options_exit_2(demo_data: Path, runs: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    base = ["--data-dir", str(demo_data), "--models", str(runs["binary"]), "--out", str(tmp_path / "s.csv")]
    with pytest.raises(SystemExit) as exc:
        predict.main([*base, "--tta-scales", "0.8,x"])
    assert exc.value.code == 2 and "comma-separated ratios" in capsys.readouterr().err
    assert predict.main([*base, "--stain-tta"]) == 2
    assert "--stain-tta needs --stain-reference" in capsys.readouterr().err
    # torchstain's H&E default holds Macenko vectors only
    assert predict.main([*base, "--stain-tta", "reinhard", "--stain-reference", "macenko"]) == 2
    assert "no Reinhard statistics" in capsys.readouterr().err


def test_budget_drops_stain_then_scales_before_flips() -> None:
    levels = degradation_levels(4, [1.0, 1.0], tta_scales=(0.8, 1.0, 1.2), stain=("macenko", "reinhard"))
    changes = [level.change for level in levels]
    assert changes[:6] == ["full settings", "stain TTA (macenko+reinhard)", "TTA scale x1.2", "TTA scale x0.8",
                           "TTA 4 -> 2 views", "TTA 2 -> 0 views"]
    full = 3 * (0.64 + 1 + 1.44) * 4
    assert levels[1].cost == pytest.approx((0.64 + 1 + 1.44) * 4 / full)
    assert levels[3].cost == pytest.approx(4 / full) and levels[3].tta_scales == (1.0,) and levels[3].stain == ()
    assert [lv.cost for lv in levels] == sorted((lv.cost for lv in levels), reverse=True)
    # no views beyond flips: exactly the levels of before
    old = degradation_levels(8, [1.0, 0.5, 2.0])
    assert degradation_levels(8, [1.0, 0.5, 2.0], tta_scales=(1.0,), stain=()) == old
    assert [lv.cost for lv in old[:4]] == [1.0, 0.5, 0.25, 0.125]


def test_reinhard_matches_torchstain(demo_data: Path, reference: Path) -> None:
    ref = load_reference(reference)
    assert ref.has_reinhard and ref.lab_std.shape == (3,)
    image = read_image(sorted((demo_data / "test_images").glob("*.tiff"))[0])
    ours = reinhard_normalise(image, ref)
    theirs = NumpyReinhardNormalizer()
    theirs.target_means, theirs.target_stds = ref.lab_mean, ref.lab_std
    assert np.abs(ours.astype(int) - theirs.normalize(image).astype(int)).max() <= 2
    blank = np.full((32, 32, 3), 240, np.uint8)
    assert reinhard_normalise(blank, ref) is blank  # a flat image comes back unchanged
    with pytest.raises(ValueError, match="no Reinhard"):
        reinhard_normalise(image, StainReference(ref.stain_matrix, ref.max_concentrations))


@pytest.mark.slow
def test_stain_tta_averages_the_normalised_views(demo_data: Path, runs: dict[str, Path], reference: Path,
                                                 tmp_path: Path) -> None:
    models = [runs["binary"]]
    plain = _predict(demo_data, tmp_path / "plain.csv", models)
    _predict(demo_data, tmp_path / "stain.csv", models, "--stain-tta", "--stain-reference", str(reference))
    _predict(demo_data, tmp_path / "mac.csv", models, "--stain-tta", "macenko", "--stain-reference", str(reference))
    _predict(demo_data, tmp_path / "norm.csv", models, "--stain-reference", str(reference))
    name = sorted(plain[1])[0]
    maps = {k: np.load(tmp_path / k / name).astype(np.float32) for k in ("plain", "mac", "norm", "stain")}
    # two views (as is, Macenko) average to the mean of the two single-view maps (float16 storage)
    assert np.allclose(maps["mac"], (maps["plain"] + maps["norm"]) / 2, atol=2e-3)
    assert not np.allclose(maps["stain"], maps["mac"], atol=1e-3)


def test_organ_from_csv_is_the_default(demo_data: Path) -> None:
    cfg = CheckpointConfig(name="m", fold=0, framework="torchscript", task="multiclass",
                           classes=["background", "kidney", "prostate", "largeintestine", "spleen", "lung"],
                           tile_size=32, weights="model.ts")
    members = [Member(Predictor(cfg, ColourNet(hot=class_index("lung"))))]
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20, 0] = 255
    options = predict.Options()
    assert options.organ_from == "csv"
    _, decision = predict.predict_one(image, "kidney", None, members, options)
    assert decision.class_index == class_index("kidney")
    _, decision = predict.predict_one(image, "kidney", None, members, predict.Options(organ_from="model"))
    assert decision.class_index == class_index("lung")
    _, decision = predict.predict_one(image, "liver", None, members, options)  # unknown organ: majority class
    assert decision.class_index == class_index("lung")
    parser = predict.build_parser()
    assert parser.parse_args(["--data-dir", "d", "--models", "m", "--use-organ"]).organ_from == "csv"
    assert parser.parse_args(["--data-dir", "d", "--models", "m", "--organ-from", "model"]).organ_from == "model"
    assert "--use-organ" not in parser.format_help()


def test_organ_from_csv_and_model_run_end_to_end(demo_data: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    solution = load_solution(demo_data / "test_solution.csv")
    for source in ("csv", "model"):
        out = tmp_path / f"{source}.csv"
        assert predict.main(["--data-dir", str(demo_data), "--models", str(runs["multiclass"]), "--out", str(out),
                             "--organ-from", source]) == 0
        assert set(score(load_submission(out), solution)["per_image"]) == set(solution["id"])



class CountingNet(ConstantNet):
    """ConstantNet that counts the windows it is run on."""

    def __init__(self) -> None:
        super().__init__([0.0])
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return super().forward(x)


def test_member_windows_counts_every_ratio_flip_and_stain_view() -> None:
    """The time budget's cost unit: the windows predict_image really runs, at each ratio's own working size."""
    cfg = CheckpointConfig(name="c", fold=0, framework="torchscript", task="binary", classes=["ftu"], tile_size=32,
                           weights="model.ts")
    net = CountingNet()
    member = Member(Predictor(cfg, net))
    image = np.random.default_rng(0).integers(0, 256, (100, 70, 3), dtype=np.uint8)
    for tta, scales, views, max_side in [(0, (1.0,), 0, None), (2, (0.6, 1.0, 1.5), 1, None),
                                         (4, (1.0, 2.0), 2, 160), (8, (0.5,), 1, None)]:
        options = EnsembleOptions(scale_mode="none", tta=tta, tta_scales=scales, max_side=max_side)
        net.windows = 0
        predict_image(image, [member], "kidney", None, options, views=[image[:, ::-1].copy()] * views)
        assert net.windows == member_windows(member, 100, 70, None, options, views=1 + views) > 0
    single = member_windows(member, 100, 70, None, EnsembleOptions(scale_mode="none"))
    wide = member_windows(member, 100, 70, None, EnsembleOptions(scale_mode="none", tta_scales=(1.0, 2.0)))
    assert wide > single * (1 + 2 * 2) * 0.8  # x2 ratio: about 4x the windows of x1, not 2x
