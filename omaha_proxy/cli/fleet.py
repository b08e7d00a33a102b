"""``omaha-proxy fleet``: the machines in the Omaha log, by version, track and update state.

omaha-proxy fleet --db omaha.db            # counts per version/track/state, then each machine
omaha-proxy fleet --db omaha.db --summary  # only the counts
omaha-proxy fleet --db omaha.db --json     # {"summary": [...], "machines": [...]}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from omaha_proxy.cli._table import format_table
from omaha_proxy.protocol.errors import StoreError
from omaha_proxy.store.store import Store

SUMMARY_COLUMNS = (
    ("version", "VERSION"),
    ("track", "TRACK"),
    ("state_label", "STATE"),
    ("machines", "MACHINES"),
)
MACHINE_COLUMNS = (
    ("machine_id", "MACHINE"),
    ("alias", "ALIAS"),
    ("version", "VERSION"),
    ("track", "TRACK"),
    ("state_label", "STATE"),
    ("last_seen_text", "LAST SEEN (UTC)"),
    ("client_ip", "IP"),
    ("last_offer_version", "OFFERED"),
    ("last_error_name", "LAST ERROR"),
)


def register(subparsers: Any) -> None:
    """Add the ``fleet`` command."""
    parser = subparsers.add_parser(
        "fleet",
        help="machines in the Omaha log by version, track and update state",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db", default="omaha.db", help="the SQLite log written by the proxy (default: omaha.db)"
    )
    parser.add_argument("--summary", action="store_true", help="only the counts per version/track/state")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def run(args: argparse.Namespace) -> int:
    if not Path(args.db).is_file():
        print(f"omaha-proxy fleet: no Omaha log at {args.db} (run the proxy with --set omaha_db=...)")
        return 1
    try:
        with Store(args.db) as store:
            summary, machines = store.fleet_summary(), [] if args.summary else store.fleet()
    except StoreError as e:
        print(f"omaha-proxy fleet: {e}")
        return 1
    if args.json:
        print(json.dumps({"summary": summary, "machines": machines}, indent=2))
        return 0
    if not summary:
        print(f"no machines in {args.db} yet")
        return 0
    print(format_table(summary, SUMMARY_COLUMNS))
    if machines:
        for machine in machines:
            machine["last_seen_text"] = _when(machine["last_seen"])
        print()
        print(format_table(machines, MACHINE_COLUMNS))
    return 0
