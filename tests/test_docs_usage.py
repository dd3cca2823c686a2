"""Every usage line of README.md and docs/ parses with its command's real argparse parser, and names no hidden option.

A usage line is a line of a fenced code block that starts with `python -m <module>` or `python benchmarks/<x>.py`
(continuation lines ending in a backslash joined). The command's own parser is reached by calling its `main` with
ArgumentParser.parse_args / parse_known_args patched to hand the parser back instead of parsing, so nothing runs.
The docs' notation is read as follows before parsing:
- `[...]` optional groups are all taken (brackets dropped), `a|b|c` alternatives are each parsed in turn, and so
  are both sides of an exclusive group `[--split train|test | --images-only]`;
- a trailing `# comment` is dropped; shell variables become values: `$k` -> 0, any other `$NAME` -> NAME;
- `...` right after an option that takes one value is a placeholder value (`--config ...`): it becomes a value of
  the option's type; anywhere else it stands for options left out (`python -m data_prep.tiles ... --extra-data
  pseudo`, `--models RUN ...`): it is dropped and the parser's required options that are then missing get values
  of their types, so the options the line does spell out are still parsed and type-checked;
- an upper-case placeholder value (`--minutes M`, `--mpp UM_PER_PX`, `--models RUN`) becomes a value of the option's
  type (its first choice, a number, or a word);
- files the docs name and a parser reads while parsing (`--thresholds organs.json`, `--min-area areas.json`) are
  written into a scratch working folder first (PLACEHOLDER_FILES);
- one prose placeholder is removed verbatim (PROSE): `[the prediction flags above, without --organ / --mpp]`.
Every `--option` a line names must be one of the parser's own option strings (no abbreviation) and not a hidden
alias (`inference.cli.hidden_alias`, help=SUPPRESS): the docs show the current spelling only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
USAGE = re.compile(r"^python (-m (?P<module>[\w.]+)|(?P<script>benchmarks/\w+\.py))(?=\s|$)")
PROSE = ("[the prediction flags above, without --organ / --mpp]",)
SHELL_VALUES = {"k": "0"}  # `--fold $k` in the README's fold loop
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
# files a parser opens at parse time, as the docs name them: per-organ thresholds / areas (inference.engine.ensemble)
PLACEHOLDER_FILES = {"organs.json": '{"kidney": 0.3}\n', "areas.json": '{"kidney": 500}\n'}
MMSEG_MODULES = ("train.mmseg_train",)  # need mmcv, built from source by `make venv`


def usage_lines() -> list[tuple[str, str]]:
    """(file:line, command line) of every usage line in a fenced code block of the README and docs/."""
    found = []
    for doc in DOCS:
        in_block, pending, start = False, "", 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            if not pending:
                start = number
            pending = f"{pending} {line.strip()}".strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            if USAGE.match(pending):
                found.append((f"{doc.relative_to(REPO)}:{start}", pending))
            pending = ""
    return found


LINES = usage_lines()


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def _main_of(command: str) -> Callable[[list[str]], object]:
    """The `main(argv)` of `python -m module` (a package's `cli` module where the package has none) or of a script."""
    if command.startswith("benchmarks/"):
        spec = importlib.util.spec_from_file_location(f"docs_usage_{Path(command).stem}", REPO / command)
        assert spec is not None and spec.loader is not None, command
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in the script resolve their module through sys.modules
        spec.loader.exec_module(module)
        return module.main
    module = importlib.import_module(command)
    if not hasattr(module, "main"):
        module = importlib.import_module(f"{command}.cli")
    return module.main


def real_parser(command: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser `command`'s main builds, taken at its first parse_args / parse_known_args call."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Captured(self)

    main = _main_of(command)
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        try:
            main(["--help"])
        except _Captured as captured:
            return captured.parser
    raise AssertionError(f"{command}: main returned without parsing its arguments")


def _value_for(action: argparse.Action) -> str:
    """A value that `action` accepts: its first choice, else the first of 1, 0.5 and a word its type converts."""
    if action.choices:
        return str(next(iter(action.choices)))
    for value in ("1", "0.5", "x"):
        try:
            if callable(action.type):
                action.type(value)
            return value
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
    raise AssertionError(f"no placeholder value fits {action.option_strings} (type {action.type})")


def _takes_one_value(action: argparse.Action | None) -> bool:
    return action is not None and action.nargs in (None, "?") and not isinstance(
        action, argparse._StoreConstAction | argparse._StoreTrueAction | argparse._StoreFalseAction
        | argparse._CountAction | argparse._HelpAction)


def arguments(line: str, parser: argparse.ArgumentParser) -> list[str]:
    """The line's arguments after the command, with the docs' notation resolved (see the module docstring)."""
    for prose in PROSE:
        line = line.replace(prose, " ")
    line = re.sub(r"\s#.*$", "", line)
    line = re.sub(r"\$(\w+)", lambda m: SHELL_VALUES.get(m.group(1), m.group(1)), line)
    tokens = shlex.split(line.replace("[", " ").replace("]", " "))
    tokens = tokens[3:] if tokens[1] == "-m" else tokens[2:]
    options = parser._option_string_actions
    out: list[str] = []
    current: argparse.Action | None = None  # the option whose values the tokens are
    for token in tokens:
        if token in options:
            current = options[token]
        elif token == "...":
            if out and out[-1] in options and _takes_one_value(options[out[-1]]):
                out.append(_value_for(options[out[-1]]))
            continue
        elif current is not None and current.nargs != 0 and token != "|":
            token = "|".join(_value_for(current) if PLACEHOLDER.match(v) else v for v in token.split("|"))
        out.append(token)
    given = {options[t.split("=")[0]].dest for t in out if t.split("=")[0] in options}
    for action in parser._actions:
        if action.required and action.option_strings and action.dest not in given:
            out += [action.option_strings[0], _value_for(action)]
    return out


def exclusive(args: list[str]) -> list[list[str]]:
    """`[--a X | --b]` (a bare `|` between two options): one argument list with the option before it, one with the
    option after it."""
    if "|" not in args:
        return [args]
    i = args.index("|")
    start = max(k for k in range(i) if args[k].startswith("-"))
    stop = next((k for k in range(i + 2, len(args)) if args[k].startswith("-")), len(args))
    return [*exclusive(args[:i] + args[stop:]), *exclusive(args[:start] + args[i + 1:])]


def variants(args: list[str]) -> list[list[str]]:
    """The arguments with each side of a bare `|` and each `a|b|c` value taken in turn (others at their first)."""
    out = []
    for one in exclusive(args):
        choices = [t.split("|") if "|" in t and not t.startswith("-") else [t] for t in one]
        first = [c[0] for c in choices]
        out.append(first)
        for i, alternatives in enumerate(choices):
            out += [[*first[:i], alt, *first[i + 1:]] for alt in alternatives[1:]]
    return out


def test_the_docs_have_usage_lines_of_every_stage() -> None:
    commands = {USAGE.match(line).group("module") or USAGE.match(line).group("script") for _, line in LINES}
    assert len(LINES) >= 40, LINES
    assert {"data_prep.tiles", "train.fastai_unet", "train.mmseg_train", "inference.predict", "kernels.build",
            "benchmarks/recipe.py"} <= commands, sorted(commands)


@pytest.mark.parametrize(("where", "line"), LINES, ids=[where for where, _ in LINES])
def test_usage_line_parses_with_the_real_parser(where: str, line: str, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    match = USAGE.match(line)
    command = match.group("module") or match.group("script")
    if command in MMSEG_MODULES:
        pytest.importorskip("mmcv", reason="mmcv is built from source by `make venv` (tools/build_mmcv_wheel.sh)")
    parser = real_parser(command, monkeypatch)
    args = arguments(line, parser)
    for name, text in PLACEHOLDER_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    named = [t.split("=")[0] for t in args if t.startswith("--") and " " not in t]  # "--tta 4 ..." is a value
    unknown = [o for o in named if o not in parser._option_string_actions]
    assert not unknown, f"{where}: {command} has no option(s) {unknown}: {line}"
    hidden = [o for o in named if parser._option_string_actions[o].help == argparse.SUPPRESS]
    assert not hidden, f"{where}: {hidden} are hidden old spellings of {command}; the docs show the current name"
    for argv in variants(args):
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{where}: {command} refuses {argv} (exit {exc.code}): {errors.getvalue().strip()}")
