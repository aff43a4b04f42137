"""The ``workbench`` command line.

Subcommands live one per module in ``workbench.commands`` and are discovered there: each
module defines ``register(subparsers)`` that adds its parser and sets ``func``. Bad input
raises ``workbench.errors.UserError`` (also ``cli.UserError``): the CLI prints one line,
``workbench: error: ...``, and exits with status 2. Any other exception is a bug or a
failure of the environment and keeps its traceback. ``--debug`` also prints the traceback
of a user error. SIGINT and SIGTERM remove temporary folders, print one line and exit
with 130 and 143.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(prog="workbench", description="Trace and analyse attention heads.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a user error too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._signals import exit_code, terminate_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():
            return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"workbench: error: {' '.join((exc.cli or str(exc)).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        code = exit_code(exc)
        why = "SIGTERM" if code == 143 else "Ctrl-C"
        note = getattr(exc, "workbench_note", None) or "nothing was written"
        print(f"workbench: interrupted ({why}); {note}", file=sys.stderr)
        return code


__all__ = ["UserError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
