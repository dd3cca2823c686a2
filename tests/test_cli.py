"""Command lines read alike: a usage line runnable as shown, defaults in --help, nothing on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = (
    "data_prep.make_demo", "data_prep.make_folds", "data_prep.tiles", "data_prep.lpb", "data_prep.preview",
    "data_prep.wsi_tiles", "data_prep.real_masks", "data_prep.stain_copies", "data_prep.import_annotations",
    "train.fastai_unet", "train.mmseg_train", "train.export", "train.mrn_wsi_tiles", "train.pseudo_label",
    "inference.predict", "inference.score", "inference.stain", "inference.tune_thresholds", "inference.overlay",
    "inference.wsi", "kernels.build",
)
# every module's --help in one interpreter (imports once); its stderr must stay empty: no warning at import
PROBE = """
import contextlib, importlib, io, json, sys
out = {}
for module in json.loads(sys.argv[1]):
    main = importlib.import_module(module + ".cli" if module == "inference.wsi" else module).main
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            main(["--help"])
        except SystemExit:
            pass
    out[module] = buffer.getvalue()
print(json.dumps(out))
"""

@pytest.fixture(scope="module")
def helps() -> tuple[dict[str, str], str]:
    pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(MODULES)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize("module", MODULES)
def test_usage_is_runnable_as_shown_and_shows_defaults(module: str, helps: tuple[dict[str, str], str]) -> None:
    text = helps[0][module]
    assert text.startswith(f"usage: python -m {module} "), text[:200]
    assert "(default:" in text, f"{module} --help shows no default"


def test_help_writes_nothing_to_stderr(helps: tuple[dict[str, str], str]) -> None:
    assert helps[1] == "", helps[1][-2000:]


def test_one_meaning_per_option_name_and_the_old_spellings_still_parse(helps: tuple[dict[str, str], str]) -> None:
    """--slides is a slides CSV and --mpp a slide's own um/px everywhere; make_demo's slide count and wsi_tiles'
    tile um/px have their own names, and the old spellings parse to them (hidden from --help)."""
    import argparse

    texts = helps[0]
    assert "--n-slides N" in texts["data_prep.make_demo"] and "--slides" not in texts["data_prep.make_demo"]
    assert "--tile-mpp" in texts["data_prep.wsi_tiles"] and "--mpp" not in texts["data_prep.wsi_tiles"]
    assert "--slides" in texts["inference.wsi"] and "--mpp" in texts["inference.wsi"]

    from inference.cli import hidden_alias

    ap = argparse.ArgumentParser()
    ap.add_argument("--tile-mpp", type=float, action="append")
    ap.add_argument("--n-slides", type=int)
    hidden_alias(ap, "--mpp", "--tile-mpp")
    hidden_alias(ap, "--slides", "--n-slides")
    args = ap.parse_args(["--mpp", "1", "--tile-mpp", "2", "--slides", "3"])
    assert args.tile_mpp == [1.0, 2.0] and args.n_slides == 3
    assert "--mpp" not in ap.format_help() and "--slides" not in ap.format_help()
