"""``omaha-proxy record``: make a recording from the SQLite log, a mitmproxy flow file or
another recording, optionally naming the payload files a replayer should serve."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from omaha_proxy.protocol.errors import OmahaError
from omaha_proxy.replay import recording
from omaha_proxy.replay.recording import Recording, payload_ref, with_payloads


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
    source.add_argument(
        "--from-recording", metavar="FILE", help="an existing recording (e.g. to add --payload entries)"
    )
    p.add_argument(
        "--machine", action="append", default=[], metavar="ID", help="only this machine (repeatable)"
    )
    p.add_argument("--since", metavar="TIME", help="from this time: epoch, ISO date, or an age like 2h")
    p.add_argument("--until", metavar="TIME", help="before this time (same forms as --since)")
    p.add_argument("--keep-ids", action="store_true", help="keep machine ids, boot ids and addresses")
    p.add_argument(
        "--payload",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="name a payload file the replayer serves as NAME (repeatable), so an offer replays offline",
    )
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the recording file to write")
    p.set_defaults(func=run)


def parse_payload(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (name, path). Raises ValueError."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path or "/" in name:
        raise ValueError(
            f"--payload {value!r}: expected NAME=PATH, e.g. flatcar_production_update.gz=./update.gz"
        )
    return name, Path(path)


def _build(args: argparse.Namespace) -> Recording:
    if args.from_recording:
        rec = recording.load(args.from_recording)
        if args.machine:
            rec = dataclasses.replace(
                rec, exchanges=tuple(e for e in rec.exchanges if e.machine in args.machine)
            )
        return rec
    if args.from_flows:
        from omaha_proxy.mitm.flowfile import recording_from_flows  # mitmproxy only when needed

        return recording_from_flows(args.from_flows, keep_ids=args.keep_ids)
    from omaha_proxy.replay.from_log import parse_since, recording_from_store
    from omaha_proxy.store.store import Store

    now = time.time()
    since = parse_since(args.since, now=now) if args.since else None
    until = parse_since(args.until, now=now) if args.until else None
    with Store(args.db) as store:
        return recording_from_store(
            store, machines=args.machine, since=since, until=until, keep_ids=args.keep_ids
        )


def run(args: argparse.Namespace) -> int:
    try:
        payloads = [parse_payload(v) for v in args.payload]
        rec = _build(args)
        base = Path(args.output).parent
        rec = with_payloads(rec, [payload_ref(name, path, base_dir=base) for name, path in payloads])
    except (OmahaError, ValueError, OSError) as e:
        print(f"omaha-proxy record: {e}", file=sys.stderr)
        return 1
    if not rec.exchanges:
        print("omaha-proxy record: no exchange matched; nothing written", file=sys.stderr)
        return 1
    recording.dump(rec, args.output)
    print(f"wrote {len(rec.exchanges)} exchanges of {len(rec.machines)} machines to {args.output}")
    return 0
