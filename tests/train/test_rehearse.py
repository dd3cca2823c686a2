"""The rehearsal's CI form: the smallest GPU config of each family through its command line at its real tile size,
train -> validate -> export -> predict -> kernels.build, and their two-family ensemble through the offline notebook."""

from __future__ import annotations

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
