"""Pack inference for an offline Kaggle notebook: code, weights and wheels datasets plus the kernel.

    python -m kernels.build --models outputs/RUN [outputs/RUN2 ...] --out dist/kaggle
        [--user KAGGLE_USER] [--competition hubmap-organ-segmentation] [--prefix hubmap-ftu]
        [--wheels download|none|DIR] [--packages PKG ...] [--python-version 3.11] [--thresholds organs.json]
        [--predict-args "--tta 4 --ensemble mean"] [--time-budget-hours 8.5] [--hidden-images 550]

Writes, each with the metadata file the kaggle CLI reads:
    OUT/code/      the inference package                            (dataset USER/PREFIX-code)
    OUT/weights/   RUN/fold<k>/ checkpoint folders (+ thresholds)   (dataset USER/PREFIX-weights)
    OUT/wheels/    wheels of what a Kaggle GPU image may lack        (dataset USER/PREFIX-wheels)
    OUT/kernel/    submission.ipynb + kernel-metadata.json           (kernel USER/PREFIX-submission)
--predict-args are checked against inference.predict's parser now (options spelled out in full), so a typo
fails here, not on Kaggle. Options the notebook sets itself (--out, --models, --data-dir) and options that would
truncate or redirect the submission (--limit, --split, --folds) are rejected. Every file an option names
(--thresholds, --min-area JSON) is copied into the weights dataset and the notebook reads it from there.
The code dataset holds exactly the modules of inference/ that inference.predict imports, module-level and
function-local alike (found by walking their ASTs; nothing is imported), so a module it never runs is never
shipped. Option values are validated as inference.predict validates them (ranges, files), so a bad
--threshold fails here with exit 2.
The notebook runs inference.predict in a child process (inference.predict.run_supervised) with a journal of
finished rows: if the child dies (out of memory, a crashing decoder) it is restarted after the row in progress,
which stays empty, and submission.csv is always written from the journal in test.csv order.
Its time budget is --time-budget-hours (default 8.5 h) for --hidden-images rows, scaled to the rows of the
test.csv it finds, and never more than Kaggle's 9 h minus the notebook's own overhead
(inference.engine.budget.kaggle_time_budget), minus the time spent before predicting; a --time-budget in
--predict-args replaces the scaled value (still capped). Every restart gets what is left.
TorchScript checkpoints carry the torch version they were traced with (model.ts.torch_version, written by
train.export); the notebook warns when its torch is older. TorchScript files are programs: ship only your own.
Re-running rewrites code/, weights/ and kernel/; downloaded wheels are kept and reused.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

from inference.checkpoint import CheckpointConfig
from inference.cli import HelpFormatter
from inference.engine.budget import KAGGLE_HOURS, KAGGLE_OVERHEAD_S, KAGGLE_RESERVE_S
from inference.engine.ensemble import bounded, positive_int
from inference.engine.models import TORCH_VERSION_SUFFIX, resolve_checkpoints, weights_path
from inference.predict import build_parser

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("submission.tmpl")
COMPETITION = "hubmap-organ-segmentation"
# Kaggle's GPU image has torch, torchvision, numpy, pandas, scipy, opencv, tifffile, tqdm and the
# pure-Python dependencies of these two; we ship them pinned so smp/timm encoders match training, and
# imagecodecs, without which tifffile reads no LZW- or JPEG-compressed TIFF.
KERNEL_PACKAGES = ("segmentation-models-pytorch", "timm", "torchstain", "imagecodecs")
# The notebook supplies these (or they would truncate / redirect the submission): never in --predict-args.
FORBIDDEN_PREDICT_ARGS = ("--out", "--models", "--data-dir", "--journal", "--split", "--limit", "--folds")
FILE_PREDICT_ARGS = ("--thresholds", "--min-area", "--stain-reference")  # options whose value may name a file to ship
TIME_BUDGET_HOURS = 8.5
MAX_BUDGET_HOURS = KAGGLE_HOURS - KAGGLE_OVERHEAD_S / 3600.0
HIDDEN_IMAGES = 550


def pinned(packages: tuple[str, ...], requirements: Path = REPO / "requirements.txt") -> list[str]:
    """'name==version' for each package as requirements.txt pins it (bare name where it is not pinned)."""
    pins = {}
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
            if m:
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return [f"{p}=={pins[p]}" if p in pins else p for p in packages]


def dataset_metadata(folder: Path, user: str, slug: str, title: str) -> None:
    """Write the dataset-metadata.json `kaggle datasets create -p folder` reads."""
    meta = {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def fresh(folder: Path) -> Path:
    """Empty a folder this builder owns (or create it)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def imported_modules(entry: str = "inference.predict", root: Path = REPO, package: str = "inference") -> list[Path]:
    """Source files of `package` that `entry` imports, transitively, module-level and function-local (AST walk).

    The packages on each module's dotted path come along (their __init__.py runs on import).
    """
    modules = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
               for f in (root / package).rglob("*.py")}
    if entry not in modules:
        raise ValueError(f"{entry} is not a module under {root / package}")
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it
        here = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(modules[name].read_text(), str(modules[name]))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in modules:  # `from pkg import name`: the module if it is one, else pkg
                    n = n.rpartition(".")[0]
                if n:
                    todo.append(n)
    return sorted(modules[n] for n in seen)


def copy_code(out: Path) -> list[Path]:
    """Copy the modules inference.predict imports (imported_modules) into the code dataset; return them."""
    files = imported_modules()
    for source in files:
        dest = out / source.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    return [f.relative_to(REPO) for f in files]


def copy_weights(models: list[Path], out: Path, traced: dict[str, str] | None = None, allow_smoke: bool = False
                 ) -> list[str]:
    """Copy each --models entry to out/<name>/ (a run keeps its fold*/ folders); return the names.

    A run folder outputs/RUN keeps the name RUN; a single checkpoint folder outputs/RUN/fold2
    becomes RUN-fold2, so inference.predict reads either the same way it does locally. `traced` is filled
    with weights-relative TorchScript path -> torch version it was traced with ("unknown" when not recorded).
    """
    runs = []
    for model in models:
        _check_real_folder(model, "--models")
        folders = resolve_checkpoints(model)
        single = folders == [model]
        run = f"{model.resolve().parent.name}-{model.name}" if single else model.name
        if run in runs:
            raise ValueError(f"two --models entries map to the same weights folder {run!r}; rename one run folder")
        runs.append(run)
        for folder in folders:
            _check_real_folder(folder, f"--models {model}: checkpoint folder")
            for name in ("config.json", "metrics.json"):
                _refuse_symlink(folder / name)
            config = CheckpointConfig.load(folder)
            for name in (config.weights, config.weights + TORCH_VERSION_SUFFIX):
                _refuse_symlink(folder / name)
            weights_path(config, folder)  # never ship a file from outside the checkpoint folder
            if (config.train or {}).get("smoke"):  # trainers' --max-steps: a pipeline check, not a model
                if not allow_smoke:
                    raise ValueError(f"{folder} is a smoke run (--max-steps, config.json train.smoke): not a trained "
                                     "model; pass --allow-smoke to pack it anyway (a rehearsal)")
                print(f"warning: {folder} is a smoke run (--max-steps), not a trained model", file=sys.stderr)
            dest = out / run if single else out / run / folder.name
            if not dest.resolve().is_relative_to(out.resolve()) or dest.resolve() == out.resolve():
                raise ValueError(f"--models {model}: would be copied to {dest.resolve()}, outside {out}")
            dest.mkdir(parents=True)
            side = config.weights + TORCH_VERSION_SUFFIX
            for name in ("config.json", config.weights, "metrics.json", side):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, dest / name)
            if config.framework == "torchscript" and traced is not None:
                key = (dest / config.weights).relative_to(out).as_posix()
                traced[key] = (folder / side).read_text().strip() if (folder / side).is_file() else "unknown"
                if traced[key] == "unknown":
                    print(f"warning: {folder / config.weights} has no {side}: the notebook cannot check its torch "
                          "version (re-export with train.export to record it)", file=sys.stderr)
    return runs


def _check_real_folder(path: Path, what: str) -> None:
    """Refuse a folder that is itself a symlink or is named through '..' (x/..): the weights dataset holds the
    folders named, copied under their own names inside weights/, and nothing from elsewhere."""
    if path.name in ("", ".", "..") or path.is_symlink():
        raise ValueError(f"{what} {path} resolves to {path.resolve()}, outside the folder it names (a symlink or "
                         "'..'); pass the real run or checkpoint folder")


def _refuse_symlink(path: Path) -> None:
    """A checkpoint file that is a symlink could ship any file of this machine (a key, a secret): refused."""
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink (to {path.resolve()}): kernels.build ships only real files from "
                         "inside the checkpoint folder; copy the file in its place")


def check_predict_args(predict_args: list[str]) -> argparse.Namespace:
    """Parse --predict-args as inference.predict would; reject options the notebook must own."""
    for token in predict_args:
        name = token.partition("=")[0]
        if name in FORBIDDEN_PREDICT_ARGS:
            raise ValueError(f"--predict-args must not contain {name}: the notebook sets --out, --models and "
                             f"--data-dir itself, and {', '.join(FORBIDDEN_PREDICT_ARGS[3:])} would truncate or "
                             "redirect the submission")
    sentinel = "@kernel-sentinel"
    parsed = build_parser(allow_abbrev=False).parse_args(["--data-dir", sentinel, "--models", sentinel,
                                                          *predict_args])
    return parsed


def ship_files(predict_args: list[str], weights: Path) -> list[str]:
    """Copy every file FILE_PREDICT_ARGS name into weights/files/ and point the arguments at @WEIGHTS/files/."""
    out, i = [], 0
    while i < len(predict_args):
        token = predict_args[i]
        name, eq, value = token.partition("=")
        if name in FILE_PREDICT_ARGS and (eq or i + 1 < len(predict_args)):
            if not eq:
                value = predict_args[i + 1]
                i += 1
            path = Path(value)
            if path.is_file():
                (weights / "files").mkdir(exist_ok=True)
                dest = weights / "files" / path.name
                n = 1
                while dest.exists():
                    dest = weights / "files" / f"{path.stem}_{n}{path.suffix}"
                    n += 1
                shutil.copy2(path, dest)
                value = f"@WEIGHTS/files/{dest.name}"
            elif not _literal_value(name, value):
                raise FileNotFoundError(f"--predict-args {name} {value}: file not found (it is shipped with the "
                                        "weights, so it must exist at build time)")
            out += [name, value]
        else:
            out.append(token)
        i += 1
    return out


def _literal_value(name: str, value: str) -> bool:
    """A value of a file option that is not a file: a --min-area number, or --stain-reference macenko."""
    return (name == "--min-area" and _is_number(value)) or (name == "--stain-reference" and value == "macenko")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fetch_wheels(
    spec: str, out: Path, python_version: str, platform: str, packages: tuple[str, ...] = KERNEL_PACKAGES
) -> list[Path]:
    """'none' -> no wheels; 'download' -> pip download the packages (pinned as requirements.txt); DIR -> copy."""
    if spec == "none":
        return []
    out.mkdir(parents=True, exist_ok=True)
    if spec == "download":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--platform", platform, "-d", str(out), *pinned(packages)]
        print("$", shlex.join(cmd))
        subprocess.run(cmd, check=True)
    else:
        source = Path(spec)
        found = sorted(source.glob("*.whl"))
        if not found:
            raise FileNotFoundError(f"--wheels {spec}: no .whl files there (use 'download' or 'none')")
        for whl in found:
            shutil.copy2(whl, out / whl.name)
    return sorted(out.glob("*.whl"))


def write_notebook(path: Path, cells_source: str) -> None:
    """Turn '# %%' / '# %% [markdown]' percent-format text into an nbformat 4 notebook."""
    cells = []
    for block in re.split(r"^# %%", cells_source, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        body = body.strip("\n")
        if header.strip() == "[markdown]":
            text = "\n".join(line.removeprefix("# ").removeprefix("#") for line in body.splitlines())
            cells.append({"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)})
        else:
            cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                          "source": body.splitlines(keepends=True)})
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1) + "\n")


def code_cells(notebook: Path) -> str:
    """The code cells of a notebook joined into one script (what the kernel test executes)."""
    nb = json.loads(notebook.read_text())
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code") + "\n"


def build(
    models: list[Path],
    out: Path,
    user: str,
    competition: str = COMPETITION,
    prefix: str = "hubmap-ftu",
    wheels: str = "download",
    python_version: str = "3.11",
    platform: str = "manylinux2014_x86_64",
    thresholds: Path | None = None,
    predict_args: list[str] | None = None,
    packages: tuple[str, ...] = KERNEL_PACKAGES,
    time_budget_hours: float = TIME_BUDGET_HOURS,
    hidden_images: int = HIDDEN_IMAGES,
    limit_hours: float = KAGGLE_HOURS,
    allow_smoke: bool = False,
) -> dict[str, Path]:
    """Write the three datasets and the kernel folder; return their paths by name.

    limit_hours: the competition's run-time limit for the notebook (Kaggle's 9 h here): the notebook kills the
    prediction KAGGLE_RESERVE_S before it, writes submission.csv from the journal, and caps the budget under it.
    """
    predict_args = list(predict_args or [])
    parsed = check_predict_args(predict_args)  # fail now on a typo or a forbidden option
    if thresholds is not None:
        if not thresholds.is_file():
            raise FileNotFoundError(f"--thresholds {thresholds} not found")
        if any(t.partition("=")[0] == "--thresholds" for t in predict_args):
            raise ValueError("thresholds given twice: with --thresholds FILE and inside --predict-args")
    if hidden_images < 1:
        raise ValueError(f"--hidden-images must be positive, got {hidden_images}")
    if not limit_hours * 3600.0 > KAGGLE_RESERVE_S:
        raise ValueError(f"--limit-hours must leave more than the {KAGGLE_RESERVE_S:g} s kept for writing "
                         f"submission.csv, got {limit_hours} h")
    max_budget = max(limit_hours - KAGGLE_OVERHEAD_S / 3600.0, 0.0)
    if not 0.0 <= time_budget_hours <= max_budget:
        raise ValueError(f"--time-budget-hours must be in [0, {max_budget:g}] (the {limit_hours:g} h limit minus "
                         f"the notebook's overhead), got {time_budget_hours}")
    scale_budget = True
    if parsed.time_budget is not None:  # a fixed budget: the notebook still caps it and splits it over restarts
        predict_args = _without_option(predict_args, "--time-budget")
        time_budget_hours, scale_budget = parsed.time_budget / 3600.0, False

    slugs = {name: f"{prefix}-{name}" for name in ("code", "weights", "wheels")}
    paths = {name: out / name for name in ("code", "weights", "wheels", "kernel")}

    fresh(paths["code"])
    copy_code(paths["code"])
    dataset_metadata(paths["code"], user, slugs["code"], f"{prefix} inference code")

    fresh(paths["weights"])
    traced: dict[str, str] = {}
    runs = copy_weights(models, paths["weights"], traced, allow_smoke)
    predict_args = ship_files(predict_args, paths["weights"])
    if thresholds is not None:
        shutil.copy2(thresholds, paths["weights"] / "thresholds.json")
        predict_args += ["--thresholds", "@WEIGHTS/thresholds.json"]
    dataset_metadata(paths["weights"], user, slugs["weights"], f"{prefix} weights")

    wheel_files = fetch_wheels(wheels, paths["wheels"], python_version, platform, packages)
    if wheel_files:
        dataset_metadata(paths["wheels"], user, slugs["wheels"], f"{prefix} wheels")

    fresh(paths["kernel"])
    source = Template(TEMPLATE.read_text()).substitute(
        built_from=" ".join(str(m) for m in models),
        code_slug=repr(slugs["code"]),
        weights_slug=repr(slugs["weights"]),
        wheels_slug=repr(slugs["wheels"]),
        competition=repr(competition),
        runs=repr(runs),
        predict_args=_predict_args_literal(predict_args),
        traced_with=repr(traced),
        budget_hours=repr(float(time_budget_hours)),
        scale_budget=repr(scale_budget),
        hidden_images=repr(int(hidden_images)),
        limit_hours=repr(float(limit_hours)),
    )
    write_notebook(paths["kernel"] / "submission.ipynb", source)
    sources = [f"{user}/{slugs['code']}", f"{user}/{slugs['weights']}"]
    if wheel_files:
        sources.append(f"{user}/{slugs['wheels']}")
    kernel_meta = {
        "id": f"{user}/{prefix}-submission",
        "title": f"{prefix}-submission",
        "code_file": "submission.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": sources,
        "competition_sources": [competition],
        "kernel_sources": [],
        "model_sources": [],
    }
    (paths["kernel"] / "kernel-metadata.json").write_text(json.dumps(kernel_meta, indent=2) + "\n")
    if not wheel_files:
        paths.pop("wheels")
    return paths


def _without_option(args: list[str], name: str) -> list[str]:
    """args without `name VALUE` / `name=VALUE`."""
    out, i = [], 0
    while i < len(args):
        if args[i] == name:
            i += 2
            continue
        if not args[i].startswith(name + "="):
            out.append(args[i])
        i += 1
    return out


def _predict_args_literal(args: list[str]) -> str:
    """Python list literal of predict arguments; '@WEIGHTS/x' becomes str(WEIGHTS / 'x') in the notebook."""
    items = [f"str(WEIGHTS / {a.removeprefix('@WEIGHTS/')!r})" if a.startswith("@WEIGHTS/") else repr(a) for a in args]
    return "[" + ", ".join(items) + "]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kernels.build", description=__doc__, formatter_class=HelpFormatter
    )
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="checkpoint or run folder(s)")
    ap.add_argument("--out", type=Path, default=Path("dist/kaggle"))
    ap.add_argument("--user", default=os.environ.get("KAGGLE_USERNAME"),
                    help="Kaggle user owning the datasets and kernel (default $KAGGLE_USERNAME)")
    ap.add_argument("--competition", default=COMPETITION)
    ap.add_argument("--prefix", default="hubmap-ftu", help="slug prefix of the datasets and the kernel")
    ap.add_argument("--wheels", default="download", help="download | none | DIR with .whl files")
    ap.add_argument("--packages", nargs="+", default=list(KERNEL_PACKAGES),
                    help="packages for --wheels download (pinned from requirements.txt when listed there)")
    ap.add_argument("--python-version", default="3.11", help="Python of the Kaggle image, for pip download")
    ap.add_argument("--platform", default="manylinux2014_x86_64", help="platform tag for pip download")
    ap.add_argument("--thresholds", type=Path, help="per-organ thresholds JSON shipped with the weights")
    ap.add_argument("--predict-args", default="", help='extra inference.predict options, e.g. "--tta 4"')
    ap.add_argument("--time-budget-hours", type=bounded(float, 0.0, MAX_BUDGET_HOURS), default=TIME_BUDGET_HOURS,
                    help="notebook --time-budget for --hidden-images rows, scaled to test.csv and capped at Kaggle's "
                         f"{KAGGLE_HOURS:g} h minus overhead (0: none; a --time-budget in --predict-args wins)")
    ap.add_argument("--hidden-images", type=positive_int, default=HIDDEN_IMAGES, help="rows of the hidden test set")
    ap.add_argument("--limit-hours", type=float, default=KAGGLE_HOURS,
                    help="the competition's run-time limit for the notebook: prediction is killed "
                         f"{KAGGLE_RESERVE_S:g} s before it and submission.csv written from the journal")
    ap.add_argument("--allow-smoke", action="store_true",
                    help="pack smoke runs (trainers' --max-steps) too, with a warning (rehearsals only)")
    args = ap.parse_args(argv)
    if not args.user:
        ap.error("--user is required (or set KAGGLE_USERNAME): dataset and kernel ids are <user>/<slug>")
    try:
        paths = build(args.models, args.out, args.user, args.competition, args.prefix, args.wheels,
                      args.python_version, args.platform, args.thresholds, shlex.split(args.predict_args),
                      tuple(args.packages), args.time_budget_hours, args.hidden_images,
                      limit_hours=args.limit_hours, allow_smoke=args.allow_smoke)
    except (FileNotFoundError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:8s} {path}")
    print("next: kaggle datasets create -p DIR --dir-mode zip for each dataset, then kaggle kernels push -p "
          f"{paths['kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
