"""``omaha-proxy log``: the latest Omaha exchanges in the log (newest last), error codes named.

omaha-proxy log --db omaha.db                       # the last 20 exchanges
omaha-proxy log --db omaha.db --machine 5d2b0c9e... --limit 100
omaha-proxy log --db omaha.db --json                # rows with decoded events (no bodies)
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

COLUMNS = (
    ("time", "TIME (UTC)"),
    ("machine", "MACHINE"),
    ("client_ip", "IP"),
    ("action", "ACTION"),
    ("http_status", "HTTP"),
    ("summary", "EXCHANGE"),
)
_BODIES = ("request_xml", "response_xml", "upstream_response_xml")


def register(subparsers: Any) -> None:
    """Add the ``log`` command."""
    parser = subparsers.add_parser(
        "log",
        help="latest Omaha exchanges in the log (optionally of one machine), error codes named",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--db", default="omaha.db", help="the SQLite log written by the proxy (default: omaha.db)"
    )
    parser.add_argument("--machine", dest="machine_id", help="only this machine id (as sent, or as stored)")
    parser.add_argument("--limit", type=int, default=20, help="how many exchanges (default: 20)")
    parser.add_argument("--json", action="store_true", help="print JSON rows (without the raw bodies)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("omaha-proxy log: --limit must be at least 1")
        return 2
    if not Path(args.db).is_file():
        print(f"omaha-proxy log: no Omaha log at {args.db} (run the proxy with --set omaha_db=...)")
        return 1
    try:
        with Store(args.db) as store:
            rows = store.recent(args.limit, machine_id=args.machine_id)
    except StoreError as e:
        print(f"omaha-proxy log: {e}")
        return 1
    if args.json:
        print(json.dumps([{k: v for k, v in row.items() if k not in _BODIES} for row in rows], indent=2))
        return 0
    if not rows:
        print("no exchanges" + (f" of machine {args.machine_id}" if args.machine_id else ""))
        return 0
    for row in rows:
        row["time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["ts"]))
        row["machine"] = (row["machine_id"] or "-")[:12]
    print(format_table(list(reversed(rows)), COLUMNS))
    return 0
