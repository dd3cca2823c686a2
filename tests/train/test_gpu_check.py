"""benchmarks/gpu_check.py --smoke: the GPU check's every part (training with the real step functions, export,
the 2-family x 5-fold kernel path) runs end to end on CPU with tiny configs."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
@pytest.mark.mmseg
def test_gpu_check_smoke_runs_every_part(tmp_path: Path, capsys) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    # a budget no shared machine exhausts: the test checks what runs, never how fast (parts are cut by time)
    assert main(["--smoke", "--work", str(tmp_path), "--budget-minutes", "600", "--train-seconds", "600"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["smoke"]
    trained = {row["config"]: row for row in result["train"]}
    assert set(trained) == {"unet_mit_b0_cpu", "upernet_convnext-demo", "segformer_mit-b0_demo"}
    for name, row in trained.items():
        assert row["iters"] == 3 and row["it_s"] > 0 and math.isfinite(row["loss_last"]), name
    # each model written as its trainer writes it, ready for the kernel
    assert (tmp_path / "unet_mit_b0_cpu" / "fold0" / "model.pth").is_file()
    assert (tmp_path / "segformer_mit-b0_demo" / "fold0" / "model.ts").is_file()
    flips = [row for row in result["kernel"] if row.get("tta") == "4 flips" and "s_per_image_5fold" in row]
    assert {row["size"] for row in flips} == {160, 240}
    for row in flips:
        assert row["s_per_image_5fold"] == pytest.approx(5 * row["s_measured"], abs=0.05)  # both rounded to 0.01 s
        assert row["hours_550"] == pytest.approx(row["s_per_image_5fold"] * 550 / 3600, abs=0.01)
    out = capsys.readouterr().out
    assert "| config | tile | batch | iters | it_s |" in out and "| size | organ | source | tta |" in out


def test_gpu_check_without_a_gpu_names_the_smoke_mode(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full check would run")
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu"])
    assert exit_info.value.code == 2 and "--smoke" in capsys.readouterr().err
