"""The ``omaha-proxy`` command: a thin shell over the library.

Each command lives in its own module here and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a function taking the parsed ``argparse.Namespace`` and
returning an exit code. Flag names match the library's keyword names.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# One module per command (group), in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "decode",
    "addon_path",
    "fleet",
    "log",
    "record",
    "replay",
    "serve_package",
    "simulate",
    "cache",
    "bundle",
    "proxy",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="omaha-proxy",
        description="Watch, control and replay the Omaha update traffic of Flatcar machines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"omaha_proxy.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
