"""``omaha-proxy record``: make a recording from the SQLite log or from a mitmproxy flow file."""

from __future__ import annotations

import argparse
import sys
import time

from omaha_proxy import recording
from omaha_proxy.errors import OmahaError
from omaha_proxy.recording import Recording


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "record",
        help="make a replayable recording from the SQLite log or a .mitm flow file",
        description=(
            "Write a recording (scrubbed JSON, see README 'replay') of what the upstream answered. "
            "Exit 1 when the source cannot be read or nothing matched."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="PATH", help="the omaha-proxy SQLite log (omaha_db)")
    source.add_argument("--from-flows", metavar="FILE", help="a mitmproxy flow file (mitmdump -w FILE)")
    p.add_argument(
        "--machine", action="append", default=[], metavar="ID", help="only this machine (repeatable)"
    )
    p.add_argument("--since", metavar="TIME", help="from this time: epoch, ISO date, or an age like 2h")
    p.add_argument("--until", metavar="TIME", help="before this time (same forms as --since)")
    p.add_argument("--keep-ids", action="store_true", help="keep machine ids, boot ids and addresses")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the recording file to write")
    p.set_defaults(func=run)


def _build(args: argparse.Namespace) -> Recording:
    if args.from_flows:
        from omaha_proxy.mitm.flowfile import recording_from_flows  # mitmproxy only when needed

        return recording_from_flows(args.from_flows, keep_ids=args.keep_ids)
    from omaha_proxy.recording_sources import parse_since, recording_from_store
    from omaha_proxy.store import Store

    now = time.time()
    since = parse_since(args.since, now=now) if args.since else None
    until = parse_since(args.until, now=now) if args.until else None
    with Store(args.db) as store:
        return recording_from_store(
            store, machines=args.machine, since=since, until=until, keep_ids=args.keep_ids
        )


def run(args: argparse.Namespace) -> int:
    try:
        rec = _build(args)
    except (OmahaError, ValueError) as e:
        print(f"omaha-proxy record: {e}", file=sys.stderr)
        return 1
    if not rec.exchanges:
        print("omaha-proxy record: no exchange matched; nothing written", file=sys.stderr)
        return 1
    recording.dump(rec, args.output)
    print(f"wrote {len(rec.exchanges)} exchanges of {len(rec.machines)} machines to {args.output}")
    return 0
