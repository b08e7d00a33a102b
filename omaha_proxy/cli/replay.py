"""``omaha-proxy replay RECORDING``: a stand-alone Omaha server answering from a recording."""

from __future__ import annotations

import argparse
import logging
import sys

from omaha_proxy.protocol.errors import OmahaError
from omaha_proxy.replay import recording
from omaha_proxy.replay.player import DEFAULT_MATCHERS, MissPolicy, parse_matchers, parse_miss_policy
from omaha_proxy.replay.server import replay_server


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); host defaults to 127.0.0.1.
    Raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    return host, int(port)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "replay",
        help="serve a recording as an Omaha server (offline, payloads included)",
        description=(
            "Answer POST /v1/update/ from RECORDING by meaning (see README 'replay'); recorded "
            "payloads are served under /omaha-proxy/payloads/. Runs until interrupted."
        ),
    )
    p.add_argument("recording", help="the recording file (JSON)")
    p.add_argument(
        "--listen", default="127.0.0.1:8000", help="HOST:PORT to listen on (default 127.0.0.1:8000)"
    )
    p.add_argument(
        "--match", default=",".join(DEFAULT_MATCHERS), help="comma list of matchers (default: %(default)s)"
    )
    p.add_argument(
        "--miss",
        default=MissPolicy.NOUPDATE.value,
        help="answer to an unmatched update check: forward, noupdate or error (default: %(default)s)",
    )
    p.add_argument("--upstream", metavar="URL", help="where --miss=forward sends unmatched requests")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        host, port = parse_listen(args.listen)
        matchers = parse_matchers(args.match)
        miss = parse_miss_policy(args.miss)
        rec = recording.load(args.recording)
        server = replay_server(
            rec, host=host, port=port, matchers=matchers, miss=miss, upstream=args.upstream
        )
    except (OmahaError, ValueError, OSError) as e:
        print(f"omaha-proxy replay: {e}", file=sys.stderr)
        return 1
    print(
        f"replaying {len(rec.exchanges)} exchanges of {len(rec.machines)} machines at {server.omaha_url}",
        flush=True,
    )
    server.serve_until_interrupted()
    return 0
