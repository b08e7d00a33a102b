"""``omaha-proxy demo``: the whole job on 127.0.0.1 in a few seconds (``./dev demo``).

A generated payload served by serve-package, mitmdump with the omaha-proxy addons in front of
it logging to SQLite, and a simulated fleet walking through checks, updates and reboots.
Prints the fleet as the proxy logged it, the path of the log and how to look at it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from omaha_proxy.cli._table import format_table
from omaha_proxy.cli.run_demo import DemoResult, run_demo
from omaha_proxy.client.simulator import format_report


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo",
        help="run a local upstream, the logging proxy and a simulated fleet (no network)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="demo-out", help="directory for the log, flows and payloads (default demo-out)"
    )
    p.add_argument("--machines", type=int, default=5, help="fleet size (default 5: four behind, one current)")
    p.add_argument("--payload-mib", type=int, default=4, help="size of the generated payload (default 4)")
    p.add_argument(
        "--timeout", type=float, default=90.0, help="bound on the fleet's run in seconds (default 90)"
    )
    p.set_defaults(func=run)


FLEET_COLUMNS = (
    ("machine_id", "MACHINE"),
    ("alias", "ALIAS"),
    ("version", "VERSION"),
    ("track", "TRACK"),
    ("state_label", "STATE"),
    ("last_offer_version", "OFFERED"),
    ("last_error_name", "LAST ERROR"),
)


def _fleet_table(result: DemoResult) -> str:
    rows = [{**m, "machine_id": (m["machine_id"] or "")[:12]} for m in result.fleet]
    return format_table(rows, FLEET_COLUMNS)


def run(args: argparse.Namespace) -> int:
    print(f"omaha-proxy demo: everything on 127.0.0.1, files in {args.out}/")
    try:
        result = run_demo(args.out, machines=args.machines, payload_mib=args.payload_mib, timeout=args.timeout,
                          progress=lambda line: print("  " + line, flush=True))  # fmt: skip
    except (OSError, RuntimeError, ValueError) as e:
        print(f"omaha-proxy demo: {e}", file=sys.stderr)
        return 1
    print("\nWhat each simulated machine did:")
    print(format_report(result.report))
    print(f"\nThe fleet as the proxy logged it ({result.db}):")
    print(_fleet_table(result))
    print(f"\nSQLite log: {result.db} ({result.exchanges} exchanges); flows: {result.flows}")
    print(f"  omaha-proxy fleet --db {result.db}")
    print(f"  sqlite3 {result.db} 'SELECT alias, version, state_label FROM instances'")
    print(
        "Look at the exchanges in mitmweb (Omaha view, one-line comments; open the URL with the token it prints):"
    )
    print(f"  omaha-proxy proxy --web --flows {result.flows} --db {result.db}")
    if not result.ok:
        print("\nsome machines did not end updated or current; see the table above", file=sys.stderr)
        return 1
    return 0
