"""``omaha-proxy addon-path``: print the path of the mitmproxy entry script.

mitmdump -s "$(omaha-proxy addon-path)" --mode reverse:https://public.update.flatcar-linux.net
"""

from __future__ import annotations

import argparse
from typing import Any

from omaha_proxy.mitm.launch import script_path


def register(subparsers: Any) -> None:
    """Add the ``addon-path`` command."""
    parser = subparsers.add_parser(
        "addon-path",
        help="print the path of the mitmproxy entry script (for mitmdump/mitmweb -s)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(script_path())
    return 0
