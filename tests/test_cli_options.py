"""One meaning per option name across every command line of the repo, and the old spellings still parse.

Every `python -m` CLI (tests/test_cli.MODULES) and every benchmark script's parser is collected the way
tests/test_docs_usage.py reaches it (its `main` with parse_args patched, so nothing runs). Then:
- an option name two commands share takes the same kind of value in both (a switch, a number, or another value):
  `--folds` is a folds.csv everywhere, so a benchmark's fold count is `--n-folds`;
- the names that once meant two things keep the one meaning their help text states (MEANINGS): `--max-side` is
  inference.predict's working-scale cap (overlay's PNG side is `--png-max-side`), `--limit` the first N rows (the
  stain reference's random draw is `--sample`), `--batch-size` a training batch (tiles per forward pass at inference
  are `--window-batch`);
- every hidden alias (help=SUPPRESS, the old spelling) parses to the same value as the name it stands for;
- kernels.build's FORBIDDEN_PREDICT_ARGS / FILE_PREDICT_ARGS name visible inference.predict options, and no hidden
  alias shares a destination with a forbidden one (its name check would let the alias through).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest
from test_cli import MODULES
from test_docs_usage import _value_for, real_parser

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tuple(f"benchmarks/{p.name}" for p in sorted((REPO / "benchmarks").glob("*.py"))
                if "def main(" in p.read_text())
MMSEG = {"train.mmseg_train"}
# (name, command): a shared name whose value kind differs on purpose, with the reason
KIND_EXCEPTIONS = {("--workers", "benchmarks/tiles.py"): "a comma list of worker counts to sweep (1,2)"}
# name -> (pattern its help must match, pattern it must not match) in every command that has it visibly
MEANINGS = {
    "--max-side": (r"working side", r"PNG"),
    "--png-max-side": (r"PNG", r"working"),
    "--limit": (r"first N rows", r"random"),
    "--sample": (r"at random", r"first"),
    "--batch-size": (r"batch|per (optimizer )?step", r"forward pass"),
    "--window-batch": (r"forward pass", r"optimizer step"),
}


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's real parser, by module or script path."""
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        for command in (*MODULES, *SCRIPTS):
            if command in MMSEG:
                try:
                    import mmcv  # noqa: F401
                except ImportError:
                    continue
            out[command] = real_parser(command, patch)
    return out


def _visible(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for o, a in parser._option_string_actions.items()
            if o.startswith("--") and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)}


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    try:
        value = action.type("1") if callable(action.type) else "1"
    except (TypeError, ValueError, argparse.ArgumentTypeError, OSError):
        return "value"
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else "value"


def test_every_command_is_collected(parsers: dict[str, argparse.ArgumentParser]) -> None:
    assert {"inference.predict", "inference.overlay", "inference.stain", "train.fastai_unet",
            "benchmarks/sliding.py", "benchmarks/plain_loop.py"} <= set(parsers)


def test_a_shared_option_name_takes_one_kind_of_value(parsers: dict[str, argparse.ArgumentParser]) -> None:
    kinds: dict[str, dict[str, list[str]]] = {}
    for command, parser in parsers.items():
        for name, action in _visible(parser).items():
            if (name, command) not in KIND_EXCEPTIONS:
                kinds.setdefault(name, {}).setdefault(_kind(action), []).append(command)
    mixed = {name: by_kind for name, by_kind in kinds.items() if len(by_kind) > 1}
    assert not mixed, f"one option name, different kinds of value (rename one side, old name as hidden_alias): {mixed}"


def test_the_renamed_names_keep_one_meaning(parsers: dict[str, argparse.ArgumentParser]) -> None:
    seen = set()
    wrong = []
    for command, parser in parsers.items():
        for name, action in _visible(parser).items():
            if name in MEANINGS:
                seen.add(name)
                must, must_not = MEANINGS[name]
                text = action.help or ""
                if not re.search(must, text, re.I) or re.search(must_not, text, re.I):
                    wrong.append(f"{command} {name}: {text!r}")
    assert not wrong, "\n".join(wrong)
    assert seen == set(MEANINGS), set(MEANINGS) - seen


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the parser's required options, and the first option of each required exclusive group."""
    out = []
    chosen = [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for action in parser._actions:
        if action.option_strings and (action.required or action in chosen):
            out += [action.option_strings[0], _value_for(action)]
    return out


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{parser.prog} refuses {argv}: {errors.getvalue().strip()}")


def test_hidden_aliases_parse_like_the_name_they_stand_for(parsers: dict[str, argparse.ArgumentParser]) -> None:
    checked = 0
    for command, parser in parsers.items():
        visible = {a.dest: a for a in _visible(parser).values()}
        for old, action in parser._option_string_actions.items():
            if action.help != argparse.SUPPRESS or action.dest not in visible:
                continue  # not an alias (e.g. an internal flag with its own destination)
            new = visible[action.dest]
            if new.required:
                continue  # filled by _required under its own name
            if action.nargs == 0:
                assert hasattr(_parse(parser, [*_required(parser), old]), action.dest), f"{command} {old}"
            else:
                value = _value_for(new)
                got = getattr(_parse(parser, [*_required(parser), old, value]), action.dest)
                want = getattr(_parse(parser, [*_required(parser), new.option_strings[0], value]), new.dest)
                assert got == want, f"{command}: {old} {value} gives {got!r}, {new.option_strings[0]} gives {want!r}"
            checked += 1
    assert checked >= 8, checked  # --bs, --use-organ, --work-dir, --backbone-weights, --limit, --max-side, ...


def test_old_spellings_are_hidden_aliases_of_the_new_names(parsers: dict[str, argparse.ArgumentParser]) -> None:
    pairs = {
        "inference.overlay": [("--max-side", "--png-max-side"), ("--min-side", "--png-min-side")],
        "inference.stain": [("--limit", "--sample")],
        "inference.predict": [("--batch-size", "--window-batch")],
        "benchmarks/plain_loop.py": [("--bs", "--batch-size")],
        "benchmarks/sliding.py": [("--batch", "--window-batch")],
    }
    for command, renames in pairs.items():
        options = parsers[command]._option_string_actions
        for old, new in renames:
            assert options[old].help == argparse.SUPPRESS, f"{command} {old} is listed in --help"
            assert options[old].dest == options[new].dest, f"{command} {old} does not set {new}'s value"


def test_kernel_build_forbidden_and_file_options_are_predict_options(
        parsers: dict[str, argparse.ArgumentParser]) -> None:
    from kernels.build import FILE_PREDICT_ARGS, FORBIDDEN_PREDICT_ARGS

    predict = parsers["inference.predict"]
    visible = _visible(predict)
    assert set(FORBIDDEN_PREDICT_ARGS) | set(FILE_PREDICT_ARGS) <= set(visible)
    forbidden = {visible[name].dest for name in FORBIDDEN_PREDICT_ARGS}
    sneaking = [o for o, a in predict._option_string_actions.items()
                if a.help == argparse.SUPPRESS and a.dest in forbidden]
    assert not sneaking, f"hidden aliases of forbidden --predict-args pass kernels.build's name check: {sneaking}"
