"""The rehearsal's CI form: the smallest GPU config of each family through its command line at its real tile size,
train -> validate -> export -> predict -> kernels.build, and their two-family ensemble through the offline notebook."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")

from benchmarks import rehearse  # noqa: E402


def test_every_gpu_recipe_is_rehearsed() -> None:
    stems = {stem for _, stem in rehearse.gpu_configs()}
    assert {"unet_effb7_768", "unet_effv2_l_768", "unet_coat_lite_medium_768", "unet_convnext_large_768",
            "unet_mit_b5_1024", "unetpp_effb7_1024", "unet_resnest269_768", "upernet_convnext-b_768",
            "upernet_convnext-xl_768", "segformer_mit-b3_1024", "segformer_mit-b4_960", "segformer_mit-b5_960"} <= stems
    assert not {s for s in stems if "cpu" in s or "demo" in s or s.startswith(("unet_r18_", "unet_mnv3_", "mrn_"))}
    assert set(rehearse.CI_CONFIGS) <= stems


@pytest.mark.slow
@pytest.mark.mmseg
@pytest.mark.skipif(not os.environ.get("HUBMAP_REHEARSE"), reason=(
    "SegFormer-b3 at 1024 px timed out (10 min) on a loaded 2-core machine inside the suite; run it with "
    "HUBMAP_REHEARSE=1 make test, or make rehearse, until its CPU cost fits the suite"))
def test_ci_rehearsal_of_one_config_per_family(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "rehearsal.md"
    status = rehearse.main(["--ci", "--work", str(tmp_path / "work"), "--markdown", str(table),
                            "--timeout-minutes", "10"])
    text = table.read_text()
    assert status == 0, text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| fastai/") or line.startswith("| mmseg/")}
    assert set(rows) == {"fastai/unet_resnext50_512", "mmseg/segformer_mit-b3_1024"}
    for steps, _, _, validated, exported, predicted, kernel in rows.values():
        assert steps == "1" and validated.startswith("Dice ") and exported in ("model.pth", "model.ts")
        assert predicted.startswith("1/1") and kernel.startswith("built; ensemble notebook: 1 rows")
