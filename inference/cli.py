"""Command lines that read alike: `usage: python -m <module>`, the module docstring as written, every default shown.

Every CLI of the repo builds its parser with `parser(...)`; old option spellings stay for a release as hidden
aliases (`hidden_alias`), so a script written against them still runs while --help shows one name per meaning.
"""

from __future__ import annotations

import argparse
import copy


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (usage examples keep their lines) and `(default: ...)` after every help text.

    argparse shows a default only beside a help text; an option given none still shows its default.
    """

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def parser(module: str, doc: str | None, script: bool = False) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage line is runnable as shown: `python -m module` (or `python module` for scripts)."""
    prog = f"python {module}" if script else f"python -m {module}"
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def hidden_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept the old spelling `old` of option `new` (same destination and type), without listing it in --help."""
    target = next(a for a in parser._actions if new in a.option_strings)
    kwargs: dict = {"dest": target.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    if isinstance(target, argparse._StoreTrueAction | argparse._StoreFalseAction):
        kwargs["action"] = "store_true" if isinstance(target, argparse._StoreTrueAction) else "store_false"
    elif isinstance(target, argparse._AppendAction):
        kwargs.update(action="append", type=target.type, choices=target.choices)
    else:
        kwargs.update(type=target.type, nargs=target.nargs, choices=target.choices)
    parser.add_argument(old, **kwargs)
