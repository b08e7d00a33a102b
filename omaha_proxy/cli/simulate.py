"""``omaha-proxy simulate URL``: a fleet of simulated update_engine 0.4.10 clients.

    omaha-proxy simulate http://127.0.0.1:8000/v1/update/ --machines 20 --cycles 3

Each machine checks, downloads and verifies an offered payload, reports 13/1, 14/1, 3/1,
pings while waiting for reboot, "reboots" and reports 3/2 with its previous version. The
table shows per machine what happened; ``--json`` prints the whole report.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from omaha_proxy.client.simulator import format_report, simulate


def register(subparsers: Any) -> None:
    """Add the ``simulate`` command."""
    p = subparsers.add_parser(
        "simulate",
        help="run simulated update_engine clients against an Omaha server or proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="the SERVER URL, e.g. http://127.0.0.1:8000/v1/update/")
    p.add_argument("--machines", type=int, default=1, help="number of machines (default 1)")
    p.add_argument("--concurrency", type=int, default=8, help="ticks running at once (default 8)")
    p.add_argument("--cycles", type=int, default=3, help="scheduler ticks per machine (default 3)")
    p.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds standing for update_engine's 45 minutes (default 0)",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="bound on the whole run in seconds (default 60)"
    )
    p.add_argument("--request-timeout", type=float, default=30.0, help="bound on one request (default 30)")
    p.add_argument("--version", default="4081.2.0", help="version the machines run (default 4081.2.0)")
    p.add_argument("--track", default="stable", help="GROUP / track (default stable)")
    p.add_argument("--oem", default="qemu", help="OEM id (default qemu)")
    p.add_argument("--board", default="amd64-usr", help="board (default amd64-usr)")
    p.add_argument("--proxy", help="send everything through this HTTP proxy (e.g. http://127.0.0.1:8080)")
    p.add_argument("--first-boot", action="store_true", help="first check says previousversion=0.0.0.0")
    p.add_argument(
        "--interactive",
        action="store_true",
        help="the first check is update_engine_client -update (installsource=ondemandupdate)",
    )
    p.add_argument(
        "--reboot-after", type=int, default=1, help="ping-only ticks before the reboot (default 1)"
    )
    p.add_argument(
        "--alias-prefix", default="sim-", help="MACHINE_ALIAS prefix: sim-001, sim-002... (default sim-)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for machine ids and timing fuzz (default 0)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = simulate(
            args.url,
            args.machines,
            concurrency=args.concurrency,
            cycles=args.cycles,
            interval=args.interval,
            timeout=args.timeout,
            request_timeout=args.request_timeout,
            proxy=args.proxy,
            version=args.version,
            track=args.track,
            oem=args.oem,
            board=args.board,
            first_boot=args.first_boot,
            interactive=args.interactive,
            reboot_after=args.reboot_after,
            alias_prefix=args.alias_prefix,
            seed=args.seed,
        )
    except ValueError as e:
        print(f"omaha-proxy simulate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.timed_out else 0
