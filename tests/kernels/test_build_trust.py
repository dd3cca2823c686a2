"""kernels.build ships files from inside the checkpoint folders only: no symlink is followed, no --models path
that resolves elsewhere is packed, nothing is written outside weights/."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import ConstantNet, make_torchscript_checkpoint

from kernels.build import build

SECRET = "kaggle-api-key-0123456789"


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    make_torchscript_checkpoint(tmp_path / "outputs" / "tiny" / "fold0", ConstantNet([3.0]), tile=32, task="binary")
    (tmp_path / "secret.json").write_text(SECRET)
    return tmp_path / "outputs" / "tiny"


def _shipped(dist: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in dist.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("name", ["metrics.json", "config.json", "model.ts.torch_version", "model.ts"])
def test_a_symlinked_checkpoint_file_is_refused(run: Path, tmp_path: Path, name: str) -> None:
    target = run / "fold0" / name
    if target.exists():
        target.rename(run / "fold0" / f"{name}.real")
    target.symlink_to(tmp_path / "secret.json" if name != "config.json" else run / "fold0" / "config.json.real")
    with pytest.raises(ValueError, match="symlink"):
        build([run], tmp_path / "dist", user="tester", wheels="none")
    assert SECRET not in _shipped(tmp_path / "dist")


def test_a_models_path_that_leaves_its_folder_is_refused(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        build([run / "fold0" / ".."], tmp_path / "dist", user="tester", wheels="none")
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["code", "weights"]  # nothing beside them


def test_a_symlinked_run_or_fold_folder_is_refused(run: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(ValueError, match="resolves"):
        build([tmp_path / "link"], tmp_path / "dist", user="tester", wheels="none")
    (run / "fold1").symlink_to(run / "fold0")
    with pytest.raises(ValueError, match="resolves"):
        build([run], tmp_path / "dist2", user="tester", wheels="none")


def test_a_plain_run_still_builds(run: Path, tmp_path: Path) -> None:
    paths = build([run], tmp_path / "dist", user="tester", wheels="none")
    assert (paths["weights"] / "tiny" / "fold0" / "config.json").is_file()
