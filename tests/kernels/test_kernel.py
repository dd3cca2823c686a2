"""kernels.build: the datasets and notebook it writes, and the notebook run offline over a fake /kaggle tree."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from checkpoints import make_smp_checkpoint, make_torchscript_checkpoint

from inference import predict
from kernels.build import KERNEL_PACKAGES, REPO, build, code_cells, imported_modules, pinned

# Every inference-side view runs in the notebook: flips, a second TTA ratio, stain TTA (Macenko + Reinhard, the
# reference shipped in the weights dataset) and AdaBN (the smp folds adapt; the traced TinyNet has no BatchNorm).
# Groups per data_source: per (source, organ) every one of the 6 demo rows would be read by AdaBN, and the killed-child
# test needs a row only the loop reads.
PREDICT_ARGS = ["--tta", "2", "--fill-holes", "--tta-scales", "1,1.25", "--stain-tta", "--adapt-bn",
                "--adapt-bn-windows", "8", "--adapt-bn-images", "2", "--adapt-bn-groups", "source",
                "--adapt-bn-min-images", "1"]


def make_wheel(folder: Path, name: str = "kernel_probe", version: str = "0.1") -> Path:
    """A minimal valid pure-Python wheel, so the notebook's offline pip install runs for real."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return path


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> dict[str, Path]:
    from inference.io import read_image
    from inference.stain import fit_reference

    root = tmp_path_factory.mktemp("kernel")
    train_images = sorted((demo_data / "train_images").glob("*.tiff"))[:4]
    reference = fit_reference([read_image(p) for p in train_images], pixels_per_image=20_000).save(root / "ref.json")
    predict_args = [*PREDICT_ARGS, "--stain-reference", str(reference)]
    for fold in (0, 1):
        make_smp_checkpoint(root / "outputs" / "unet" / f"fold{fold}", tile=64, seed=fold, fold=fold)
    make_torchscript_checkpoint(root / "outputs" / "tiny" / "fold0", tile=64)
    thresholds = root / "organs.json"
    thresholds.write_text(json.dumps({"kidney": 0.4, "lung": 0.2, "Hubmap": {"lung": 0.1}}))
    models = [root / "outputs" / "unet", root / "outputs" / "tiny" / "fold0"]
    paths = build(models, root / "dist", user="tester", wheels=str(make_wheel(root / "localwheels").parent),
                  thresholds=thresholds, predict_args=predict_args)
    return {"root": root, "thresholds": thresholds, **paths, "models": models, "predict_args": predict_args}


def test_datasets_and_metadata(kernel: dict[str, Path]) -> None:
    assert (kernel["code"] / "inference" / "predict.py").is_file()
    assert not list(kernel["code"].rglob("__pycache__"))
    assert not (kernel["code"] / "train").exists()
    shipped = sorted(p.relative_to(kernel["code"]) for p in kernel["code"].rglob("*.py"))
    assert shipped == sorted(p.relative_to(REPO) for p in imported_modules())
    assert sorted(p.relative_to(kernel["weights"]).as_posix() for p in kernel["weights"].rglob("config.json")) == [
        "tiny-fold0/config.json", "unet/fold0/config.json", "unet/fold1/config.json"]
    assert (kernel["weights"] / "thresholds.json").is_file()
    assert (kernel["weights"] / "files" / "ref.json").is_file()  # --stain-reference shipped for the stain TTA
    assert [p.name for p in kernel["wheels"].glob("*.whl")] == ["kernel_probe-0.1-py3-none-any.whl"]
    for name in ("code", "weights", "wheels"):
        meta = json.loads((kernel[name] / "dataset-metadata.json").read_text())
        assert meta["id"] == f"tester/hubmap-ftu-{name}" and 6 <= len(meta["title"]) <= 50
    meta = json.loads((kernel["kernel"] / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == ["hubmap-organ-segmentation"]
    assert meta["dataset_sources"] == [f"tester/hubmap-ftu-{n}" for n in ("code", "weights", "wheels")]
    assert meta["code_file"] == "submission.ipynb"
    nb = json.loads((kernel["kernel"] / "submission.ipynb").read_text())
    assert nb["nbformat"] == 4 and any(c["cell_type"] == "markdown" for c in nb["cells"])
    assert "--no-index" in code_cells(kernel["kernel"] / "submission.ipynb")


def _fake_kaggle(kernel: dict[str, Path], demo_data: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The datasets and the competition folder under tmp_path/input, an empty working folder; and the script."""
    inputs, working = tmp_path / "input", tmp_path / "working"
    working.mkdir()
    for name in ("code", "weights", "wheels"):
        shutil.copytree(kernel[name], inputs / f"hubmap-ftu-{name}")
    competition = inputs / "hubmap-organ-segmentation"
    competition.mkdir()
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy(demo_data / name, competition / name)
    shutil.copytree(demo_data / "test_images", competition / "test_images")
    script = tmp_path / "notebook.py"
    script.write_text(code_cells(kernel["kernel"] / "submission.ipynb"))
    return inputs, working, script


def _run_notebook(inputs: Path, working: Path, script: Path, tmp_path: Path,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k not in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
    if env is not None and "KILL_ON_OPEN" not in env:
        env.pop("PYTHONPATH", None)
    env.update(KAGGLE_INPUT=str(inputs), KAGGLE_WORKING=str(working), PIP_TARGET=str(tmp_path / "site"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    # cwd outside the repo: `inference` must come from the code dataset, as on Kaggle
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def _direct(kernel: dict[str, Path], demo_data: Path, out: Path) -> pd.DataFrame:
    assert predict.main(["--data-dir", str(demo_data), "--out", str(out), "--models", *map(str, kernel["models"]),
                         "--thresholds", str(kernel["thresholds"]), *kernel["predict_args"]]) == 0
    return pd.read_csv(out, dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_notebook_offline_matches_direct_predict(kernel: dict[str, Path], demo_data: Path, tmp_path: Path) -> None:
    inputs, working, script = _fake_kaggle(kernel, demo_data, tmp_path)
    run = _run_notebook(inputs, working, script, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"inference package: {inputs / 'hubmap-ftu-code' / 'inference' / '__init__.py'}" in run.stdout
    assert (tmp_path / "site" / "kernel_probe" / "__init__.py").is_file()
    assert "prediction child pid" in run.stdout and "test row(s): time budget" in run.stdout
    assert "--adapt-bn: Hubmap: 2 member(s) adapted" in run.stdout + run.stderr  # the two smp folds
    _direct(kernel, demo_data, tmp_path / "direct.csv")
    assert (working / "submission.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()


@pytest.mark.mmseg
@pytest.mark.slow
def test_notebook_offline_predicts_a_segformer_run(segformer_run: Path, demo_data: Path, tmp_path: Path) -> None:
    """The CPU SegFormer (mmseg trainer, 40 iterations on demo tiles, exported to TorchScript) through the offline
    notebook: the kernel needs no mmcv / mmseg, and writes what inference.predict writes directly."""
    args = ["--tta", "2", "--tta-scales", "1,1.25"]
    paths = build([segformer_run], tmp_path / "dist", user="tester", wheels=str(make_wheel(tmp_path / "w").parent),
                  predict_args=args)
    kernel = {**paths, "models": [segformer_run], "predict_args": args}
    inputs, working, script = _fake_kaggle(kernel, demo_data, tmp_path)
    run = _run_notebook(inputs, working, script, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(list((inputs / "hubmap-ftu-weights").rglob("model.ts"))) == 1
    assert not (inputs / "hubmap-ftu-code" / "train").exists()
    out = tmp_path / "direct.csv"
    assert predict.main(["--data-dir", str(demo_data), "--out", str(out), "--models", str(segformer_run),
                         *args]) == 0
    assert (working / "submission.csv").read_bytes() == out.read_bytes()
    assert (pd.read_csv(out, keep_default_na=False)["rle"] != "").any()  # the trained model marks FTUs


@pytest.mark.slow
def test_a_killed_child_leaves_every_row(kernel: dict[str, Path], demo_data: Path, tmp_path: Path) -> None:
    """The child dies (SIGKILL) while reading an image in the loop: it is restarted, and every row is written."""
    from crash import kill_on_open_env

    from inference.engine.adapt_bn import drawn_rows

    test = pd.read_csv(demo_data / "test.csv", dtype=str)
    images = int(PREDICT_ARGS[PREDICT_ARGS.index("--adapt-bn-images") + 1])
    adabn = {n for rows in drawn_rows(test, images, grouping="source").values() for n in rows}
    # a row only the loop reads (one AdaBN reads is tests/inference/test_journal.py's), after two finished ones
    row = next(n for n in range(2, len(test)) if n not in adabn)
    victim = test["id"][row]
    inputs, working, script = _fake_kaggle(kernel, demo_data, tmp_path)
    env = kill_on_open_env(tmp_path / "hook", f"test_images/{victim}.tiff")
    env["PYTHONPATH"] = str(tmp_path / "hook")  # nothing from the repo: the child imports the code dataset
    run = _run_notebook(inputs, working, script, tmp_path, env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "hook" / "killed").is_file() and run.stdout.count("prediction child pid") == 2
    assert "died (exit status -9)" in run.stdout
    assert f"id {victim}: the previous run died while predicting this row" in run.stderr
    sub = pd.read_csv(working / "submission.csv", dtype=str, keep_default_na=False)
    direct = _direct(kernel, demo_data, tmp_path / "direct.csv")
    assert sub["id"].tolist() == test["id"].tolist()
    expected = direct["rle"].tolist()
    expected[row] = ""
    assert sub["rle"].tolist() == expected


def _damaged_test_csv(path: Path, long_row: int, broken_row: int) -> str:
    """Rewrite test.csv with a `comment` column: a 200 KB quoted field (commas inside) on long_row, a quote never
    closed in broken_row's organ; return the broken line's label ("line N")."""
    lines = path.read_text().splitlines()
    body = []
    for n, line in enumerate(lines[1:]):
        if n == broken_row:
            image_id, organ, rest = line.split(",", 2)
            line = f'{image_id},"{organ},{rest}'
        body.append(f"{line},\"{'tissue, ' * 25_000}\"" if n == long_row else f"{line},")
    path.write_text("\n".join([lines[0] + ",comment", *body]) + "\n")
    assert path.stat().st_size > 200_000
    return f"line {broken_row + 2}"


@pytest.mark.slow
def test_a_hung_child_and_a_damaged_test_csv_still_write_every_row_in_time(kernel: dict[str, Path], demo_data: Path,
                                                                          tmp_path: Path) -> None:
    """The notebook under a run-time limit from its settings (--limit-hours: 60 s of prediction plus the reserve),
    test.csv with a 200 KB field and a quote never closed, and a child that hangs for good opening row 1's image:
    the deadline kills the child, and submission.csv holds every row of test.csv in order before the limit, row 0
    as predicted, the rest empty."""
    from crash import kill_on_open_env

    from inference.engine.budget import KAGGLE_RESERVE_S

    limit_s, args = KAGGLE_RESERVE_S + 60.0, ["--tta", "2"]
    paths = build(kernel["models"], tmp_path / "dist", user="tester", wheels=str(make_wheel(tmp_path / "w").parent),
                  predict_args=args, time_budget_hours=0.0, limit_hours=limit_s / 3600.0)
    inputs, working, script = _fake_kaggle({**paths}, demo_data, tmp_path)
    test_csv = inputs / "hubmap-organ-segmentation" / "test.csv"
    ids = pd.read_csv(test_csv, dtype=str)["id"].tolist()
    broken = _damaged_test_csv(test_csv, long_row=3, broken_row=4)
    env = kill_on_open_env(tmp_path / "hook", f"test_images/{ids[1]}.tiff", hang=True)
    env["PYTHONPATH"] = str(tmp_path / "hook")  # nothing from the repo: the child imports the code dataset
    began = time.monotonic()
    run = _run_notebook(inputs, working, script, tmp_path, env)
    took = time.monotonic() - began
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert took < limit_s, f"the notebook took {took:.0f} s, over its {limit_s:.0f} s limit"
    assert (tmp_path / "hook" / "killed").is_file(), log[-4000:]  # the child did hang on row 1's image
    assert run.stdout.count("prediction child pid") == 1 and "killed at the deadline" in run.stderr
    assert f"{broken}: not readable as CSV" in run.stderr or f"{broken}: a quoted field runs over" in run.stderr
    assert f"{len(ids)} test row(s): no time budget" in run.stdout
    sub = pd.read_csv(working / "submission.csv", dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == ids
    out = tmp_path / "direct.csv"
    assert predict.main(["--data-dir", str(test_csv.parent), "--out", str(out), "--models",
                         *map(str, kernel["models"]), *args]) == 0
    assert sub["rle"].tolist() == [pd.read_csv(out, dtype=str, keep_default_na=False)["rle"][0]] + [""] * (len(ids) - 1)


def test_the_code_dataset_alone_imports_inference_predict(kernel: dict[str, Path], tmp_path: Path) -> None:
    probe = ("import sys, inference.predict, inference.stain; "
             "print(sorted(m for m in sys.modules if m.startswith('inference')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(kernel["code"])
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "inference.wsi" not in run.stdout and not (kernel["code"] / "inference" / "wsi").exists()
    assert not (kernel["code"] / "inference" / "overlay.py").exists()


def test_imported_modules_follows_function_local_imports() -> None:
    names = {p.relative_to(REPO).as_posix() for p in imported_modules()}
    assert "inference/stain.py" in names  # imported inside a function, only when --stain-reference is given
    assert {"inference/__init__.py", "inference/engine/__init__.py", "inference/journal.py"} <= names
    assert "inference/score.py" not in names and "inference/tune_thresholds.py" not in names


def test_the_wheels_dataset_ships_imagecodecs() -> None:
    assert any(p.startswith("imagecodecs==") for p in pinned(KERNEL_PACKAGES))


@pytest.mark.parametrize("args", [["--threshold", "nan"], ["--threshold", "1.5"], ["--window-batch", "0"],
                                  ["--time-budget", "0"], ["--weights", "0"]])
def test_build_validates_option_values(kernel: dict[str, Path], tmp_path: Path, args: list[str],
                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", predict_args=args)
    assert exc.value.code == 2 and f"argument {args[0]}" in capsys.readouterr().err


def test_build_caps_the_notebook_budget(kernel: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="time-budget-hours"):
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", time_budget_hours=10.0)
    paths = build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none",
                  predict_args=["--time-budget", "36000"])
    source = code_cells(paths["kernel"] / "submission.ipynb")
    assert "BUDGET_HOURS = 10.0" in source and "SCALE_BUDGET = False" in source and "36000" not in source
    assert "LIMIT_HOURS = 9.0" in source  # Kaggle's limit unless --limit-hours says otherwise
    with pytest.raises(ValueError, match="--limit-hours must leave more than the 120 s"):
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", limit_hours=0.01)
    with pytest.raises(ValueError, match=r"in \[0, 0\] \(the 0.2 h limit"):  # no budget fits under the overhead
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", limit_hours=0.2,
              time_budget_hours=0.1)


def test_build_rejects_bad_predict_args(kernel: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", predict_args=["--tta", "3"])


def test_build_without_wheels_lists_two_datasets(kernel: dict[str, Path], tmp_path: Path) -> None:
    paths = build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none")
    assert "wheels" not in paths
    meta = json.loads((paths["kernel"] / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["tester/hubmap-ftu-code", "tester/hubmap-ftu-weights"]


def test_wheel_pins_come_from_requirements(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# pins\nsegmentation-models-pytorch==0.6.0\ntimm==1.0.31  # encoders\n")
    assert pinned(("segmentation-models-pytorch", "timm", "other"), req) == [
        "segmentation-models-pytorch==0.6.0", "timm==1.0.31", "other"]


@pytest.mark.parametrize("args", [["--out", "/tmp/x.csv"], ["--limit", "1"], ["--models", "x"], ["--data-dir", "x"],
                                  ["--split", "train"], ["--out=/tmp/x.csv"], ["--folds", "folds.csv"]])
def test_build_rejects_options_the_notebook_owns(kernel: dict[str, Path], tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", predict_args=args)


def test_build_rejects_abbreviated_options(kernel: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # argparse would read --lim as --limit
        build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none", predict_args=["--lim", "1"])


def test_build_ships_every_file_an_argument_names(kernel: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    areas = tmp_path / "areas.json"
    areas.write_text(json.dumps({"kidney": 500}))
    paths = build(kernel["models"][1:], tmp_path / "dist", user="tester", wheels="none",
                  predict_args=["--min-area", str(areas), f"--thresholds={kernel['thresholds']}", "--tta", "2"])
    assert json.loads((paths["weights"] / "files" / "areas.json").read_text()) == {"kidney": 500}
    assert (paths["weights"] / "files" / "organs.json").is_file()
    source = code_cells(paths["kernel"] / "submission.ipynb")
    assert "str(WEIGHTS / 'files/areas.json')" in source and "str(WEIGHTS / 'files/organs.json')" in source
    assert str(areas) not in source and str(tmp_path) not in source
    with pytest.raises(SystemExit):  # checked when --predict-args are parsed, exit 2 naming the file
        build(kernel["models"][1:], tmp_path / "dist2", user="tester", wheels="none",
              predict_args=["--min-area", str(tmp_path / "nope.json")])
    assert "nope.json" in capsys.readouterr().err


def test_notebook_records_traced_torch_versions_and_a_time_budget(kernel: dict[str, Path]) -> None:
    import torch

    assert (kernel["weights"] / "tiny-fold0" / "model.ts.torch_version").read_text() == torch.__version__
    source = code_cells(kernel["kernel"] / "submission.ipynb")
    assert f"TRACED_WITH = {{'tiny-fold0/model.ts': '{torch.__version__}'}}" in source
    assert "BUDGET_HOURS = 8.5" in source and "HIDDEN_IMAGES = 550" in source and "SCALE_BUDGET = True" in source


def test_older_torch_than_the_trace_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from inference.engine.predictor import load_predictor

    folder = make_torchscript_checkpoint(tmp_path / "run" / "fold0", tile=32)
    (folder / "model.ts.torch_version").write_text("99.0.0")
    with caplog.at_level("WARNING"):
        load_predictor(folder)
    assert any("traced with torch 99.0.0" in r.getMessage() for r in caplog.records)
