"""``omaha-proxy cache``: what the payload cache holds and what it saved.

    omaha-proxy cache --dir /var/cache/omaha          # per package: version, size, hits, bytes saved
    omaha-proxy cache --dir /var/cache/omaha --json

Reads the cache's index without taking the cache over: safe while the proxy runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from omaha_proxy.cli._table import format_table
from omaha_proxy.payloads.cache import CacheStats, read_stats
from omaha_proxy.protocol.errors import PayloadError

COLUMNS = (
    ("name", "PACKAGE"),
    ("version", "VERSION"),
    ("size", "SIZE"),
    ("stored", "CACHED"),
    ("hits", "HITS"),
    ("misses", "MISSES"),
    ("served", "SERVED"),
    ("saved", "SAVED"),
    ("failures", "FAILED"),
)


def human(n: int | None) -> str | None:
    """Bytes in binary units (``1.5 GiB``); None stays None."""
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def register(subparsers: Any) -> None:
    """Add the ``cache`` command."""
    p = subparsers.add_parser(
        "cache",
        help="payload cache contents: per package version, size, hits and bytes saved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", required=True, help="the cache directory (the proxy's omaha_cache option)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def render(stats: CacheStats) -> str:
    """The table and a totals line for ``stats``."""
    rows = [
        {
            "name": p.name, "version": p.version, "size": human(p.size), "stored": "yes" if p.present else "no",
            "hits": p.hits, "misses": p.misses, "served": human(p.bytes_served), "saved": human(p.bytes_saved),
            "failures": p.failures,
        }
        for p in stats.packages
    ]  # fmt: skip
    totals = (
        f"{len(stats.packages)} packages, {human(stats.bytes_stored)} cached; {stats.hits} hits, "
        f"{stats.misses} misses; fetched {human(stats.bytes_fetched)}, served {human(stats.bytes_served)}, "
        f"saved {human(stats.bytes_saved)}; {stats.failures} failed downloads"
    )
    return format_table(rows, COLUMNS) + "\n\n" + totals


def run(args: argparse.Namespace) -> int:
    try:
        stats = read_stats(args.dir)
    except PayloadError as e:
        print(f"omaha-proxy cache: {e}", file=sys.stderr)
        return 1
    if args.json:
        data = dataclasses.asdict(stats)
        data["bytes_saved"] = stats.bytes_saved
        for row, p in zip(data["packages"], stats.packages, strict=True):
            row["bytes_saved"] = p.bytes_saved
        print(json.dumps(data, indent=2))
    else:
        print(render(stats))
    return 0
