"""The `swcm` command: a thin skin over the library, one subcommand per workflow step.

Each subcommand is an `_add_<name>(sub)` function that declares its arguments and sets
`func` to a handler taking the parsed namespace. Handlers import the library lazily so
that `swcm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swcm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"swcm {args.command}: error: {err}", file=sys.stderr)
        return 2


# Subcommands, in workflow order. Each helper below registers one.
_SUBCOMMANDS: list = []

if __name__ == "__main__":
    sys.exit(main())
