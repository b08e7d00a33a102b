"""``omaha-proxy proxy``: run mitmdump (or mitmweb) with the omaha-proxy addons.

    omaha-proxy proxy --upstream https://public.update.flatcar-linux.net --listen 0.0.0.0:8080
    omaha-proxy proxy --upstream http://127.0.0.1:8000 --web --pin 4081.2.0

Then on each machine: ``SERVER=http://PROXY:8080/v1/update/`` in /etc/flatcar/update.conf.
Without ``--upstream`` mitmproxy runs as a regular proxy (machines set ``ALL_PROXY``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Any

from omaha_proxy.mitm.launch import ProxySettings, proxy_command


def register(subparsers: Any) -> None:
    """Add the ``proxy`` command."""
    p = subparsers.add_parser(
        "proxy",
        help="start mitmdump/mitmweb with the omaha-proxy addons and say where to point machines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--upstream", help="Omaha server to forward to (reverse mode); omit for a regular proxy")
    p.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on (default 127.0.0.1:8080)"
    )
    p.add_argument("--db", default="omaha.db", help="SQLite log file (default omaha.db)")
    p.add_argument("--web", action="store_true", help="start mitmweb instead of mitmdump")
    p.add_argument("--web-port", type=int, default=8081, help="mitmweb's port (default 8081)")
    p.add_argument("--block", default="", help="omaha_block: 'true' or selectors (track:, machine:, alias:)")
    p.add_argument("--pin", default="", help="omaha_pin: '<version>' or '<track>=<version>',...")
    p.add_argument("--rollout", default="", help="omaha_rollout: 'max=<n>/<period>; percent=<p>; window=...'")
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="omaha_allow_downgrade: let a pin offer an older version",
    )
    p.add_argument("--replay", help="omaha_replay: answer from this recording instead of the upstream")
    p.add_argument("--record", help="omaha_record: record upstream exchanges into this recording")
    p.add_argument("--redact", action="store_true", help="omaha_redact: store machine ids hashed in the log")
    p.add_argument("--save-flows", metavar="PATH", help="also write the flows to a .mitm file (mitmdump -w)")
    p.add_argument(
        "--flows", metavar="PATH", help="load flows from a .mitm file into the view (mitmproxy -r)"
    )
    p.add_argument(
        "--set", dest="extra_sets", action="append", default=[], metavar="NAME=VALUE",
        help="any other mitmproxy or omaha_* option (repeatable)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the mitmproxy command instead of running it")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ProxySettings:
    """The :class:`ProxySettings` a parsed command line asks for."""
    return ProxySettings(
        upstream=args.upstream,
        listen=args.listen,
        db=args.db,
        web=args.web,
        web_port=args.web_port,
        block=args.block,
        pin=args.pin,
        rollout=args.rollout,
        allow_downgrade=args.allow_downgrade,
        replay=args.replay,
        record=args.record,
        redact=args.redact,
        save_flows=args.save_flows,
        read_flows=args.flows,
        extra_sets=tuple(args.extra_sets),
    )


def where_to_point(settings: ProxySettings) -> str:
    """What to put on the machines, as printed before mitmproxy starts."""
    if settings.upstream:
        text = f"point update_engine at it: SERVER={settings.omaha_url()} in /etc/flatcar/update.conf"
    else:
        proxy = settings.omaha_url().removesuffix("/v1/update/")
        text = (
            f"regular proxy: set ALL_PROXY={proxy} for update-engine.service "
            "(https needs the mitmproxy CA in the machines' trust store)"
        )
    if settings.listen.startswith(("127.", "localhost", "[::1]")):
        text += "\n(listening on loopback only: use --listen 0.0.0.0:PORT for other machines)"
    return text


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        argv = proxy_command(settings)
    except (ValueError, FileNotFoundError) as e:
        print(f"omaha-proxy proxy: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    print(where_to_point(settings), file=sys.stderr)
    print(f"logging to {settings.db}; running: {shlex.join(argv)}", file=sys.stderr)
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to mitmproxy too; let it flush
        return proc.wait(timeout=15)
