"""`paraplan` command line: subcommands take preset names or file paths, not dozens of flags.
User mistakes print one line naming what is wrong and exit with status 2."""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import entry_points

from pydantic import ValidationError

from planner.commands import compare, estimate, export, predict, presets, search, validate
from planner.schema import InputError, describe_validation_error


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Let values such as `--tokens -1T` reach our own checks (and their clear messages)
        # instead of argparse reading them as unknown options.
        self._negative_number_matcher = re.compile(r"^-[0-9.]")

    def error(self, message: str) -> None:  # argparse's usage errors: one line, exit 2
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="paraplan", description="Plan, price and check parallel transformer "
                                             "training on GPU clusters.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in (search, predict, estimate, validate, compare, presets, export):
        mod.add_parser(sub)
    for ep in entry_points(group="paraplan.commands"):  # e.g. executor's `run`
        try:
            ep.load()(sub)
        except ImportError as err:  # a broken plugin must not take the planner down with it
            print(f"paraplan: warning: command '{ep.name}' unavailable ({err})", file=sys.stderr)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except InputError as err:
        print(f"paraplan: error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"paraplan: error: {describe_validation_error(err, 'input')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paraplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
