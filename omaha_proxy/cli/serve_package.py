"""``omaha-proxy serve-package``: update machines from a local payload (go-omaha's serve-package).

    omaha-proxy serve-package --package-file flatcar_production_update.gz \\
        --package-version 4152.2.0 --extra-package oem-qemu.gz=./oem-qemu.gz

then on each machine: ``SERVER=http://HOST:8000/v1/update/`` in /etc/flatcar/update.conf
and ``update_engine_client -update``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from omaha_proxy.servers.serve_package import (
    DEFAULT_LISTEN,
    DEFAULT_PACKAGE_NAME,
    parse_extra_package,
    serve_package,
)


def _extra(text: str) -> tuple[str, Any]:
    try:
        return parse_extra_package(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def register(subparsers: Any) -> None:
    """Add the ``serve-package`` command."""
    p = subparsers.add_parser(
        "serve-package",
        help="serve one payload (and extension packages) to update_engine over Omaha",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--package-file", required=True, help="the update payload to serve")
    p.add_argument("--package-version", required=True, help="its version (dotted numbers, e.g. 4152.2.0)")
    p.add_argument(
        "--listen-address", default=DEFAULT_LISTEN, help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})"
    )
    p.add_argument(
        "--extra-package",
        action="append",
        default=[],
        type=_extra,
        metavar="NAME=PATH",
        help="an extension package listed after the payload, e.g. oem-qemu.gz=./oem.gz (repeatable)",
    )
    p.add_argument(
        "--package-name",
        default=DEFAULT_PACKAGE_NAME,
        help=f"file name the payload is published under (default {DEFAULT_PACKAGE_NAME})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        server = serve_package(
            args.package_file,
            args.package_version,
            listen_address=args.listen_address,
            extra_packages=args.extra_package,
            package_name=args.package_name,
        )
    except (OSError, ValueError) as e:
        print(f"omaha-proxy serve-package: {e}", file=sys.stderr)
        return 1
    print(f"serving {args.package_version} at {server.omaha_url}", file=sys.stderr)
    print(f"point update_engine at it: SERVER={server.omaha_url}", file=sys.stderr)
    server.serve_until_interrupted()
    return 0
