"""``omaha-proxy bundle``: carry one release to machines without Internet.

On a connected machine (with the proxy's log, or a recording holding the offer)::

    omaha-proxy bundle export --db omaha.db --version 4152.2.0 --board amd64-usr -o flatcar-4152.2.0.tar

At the air-gapped site::

    omaha-proxy bundle serve flatcar-4152.2.0.tar --listen 0.0.0.0:8000 --db site.db

and on each machine ``SERVER=http://HOST:8000/v1/update/`` in /etc/flatcar/update.conf.
``omaha-proxy bundle verify BUNDLE`` checks a bundle without serving it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from omaha_proxy.cli.cache import human
from omaha_proxy.payloads.bundle import (
    Bundle,
    export_bundle,
    load_bundle,
    offer_from_log,
    remove_extracted,
)
from omaha_proxy.protocol.errors import BundleError, StoreError
from omaha_proxy.replay.offers import offer_from_recording
from omaha_proxy.servers.bundle import BundleServer
from omaha_proxy.servers.cache_files import parse_listen

DEFAULT_LISTEN = "127.0.0.1:8000"


def register(subparsers: Any) -> None:
    """Add the ``bundle`` command group (export, serve, verify)."""
    p = subparsers.add_parser(
        "bundle",
        help="export one release (offer + packages) and serve it offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)

    ex = sub.add_parser(
        "export", help="build a bundle from the log or a recording, packages fetched and verified"
    )
    source = ex.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the proxy's SQLite log holding the upstream's offer")
    source.add_argument("--recording", help="a recording holding the offer")
    ex.add_argument("--version", required=True, help="the release to export, e.g. 4152.2.0")
    ex.add_argument("--appid", help="only an offer for this app id")
    ex.add_argument("--board", help="only an offer made to machines of this board (amd64-usr, arm64-usr)")
    ex.add_argument("--track", help="only an offer made on this track (stable, beta...)")
    ex.add_argument("-o", "--output", required=True, help="a new directory, or FILE.tar for an archive")
    ex.add_argument("--timeout", type=float, default=60.0, help="seconds a download may stall (default 60)")
    ex.set_defaults(func=run_export)

    sv = sub.add_parser("serve", help="answer update_engine from a bundle and serve its packages")
    sv.add_argument("bundle", help="the bundle directory or .tar archive")
    sv.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})"
    )
    sv.add_argument("--db", help="log every exchange to this SQLite file, like the proxy does")
    sv.set_defaults(func=run_serve)

    vf = sub.add_parser("verify", help="check a bundle's manifest, offer and every package")
    vf.add_argument("bundle", help="the bundle directory or .tar archive")
    vf.set_defaults(func=run_verify)


def describe(bundle: Bundle) -> str:
    """A few lines saying what ``bundle`` holds."""
    lines = [
        f"release {bundle.version} (app {bundle.appid or '-'}, board {bundle.board or '-'}, "
        f"track {bundle.track or '-'}), created {bundle.created or '-'} from {bundle.source or '-'}"
    ]
    lines += [f"  {f.name}  {human(f.size)}  sha256 {f.sha256}" for f in bundle.files]
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    filters = {"appid": args.appid, "board": args.board, "track": args.track}
    try:
        if args.db:
            found, source = offer_from_log(args.db, args.version, **filters), f"log {args.db}"
        else:
            found, source = (
                offer_from_recording(args.recording, args.version, **filters),
                f"recording {args.recording}",
            )
        manifest = export_bundle(found, args.output, source=source, timeout=args.timeout)
    except BundleError as e:
        print(f"omaha-proxy bundle export: {e}", file=sys.stderr)
        return 1
    total = sum(f["size"] for f in manifest["files"])
    print(f"wrote {args.output}: {args.version}, {len(manifest['files'])} packages, {human(total)}, verified")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as e:
        print(f"omaha-proxy bundle verify: {e}", file=sys.stderr)
        return 1
    try:
        print(describe(bundle))
        print("bundle OK")
    finally:
        remove_extracted(bundle, args.bundle)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        host, port = parse_listen(args.listen)
        bundle = load_bundle(args.bundle)
    except (ValueError, BundleError) as e:
        print(f"omaha-proxy bundle serve: {e}", file=sys.stderr)
        return 1
    try:
        server = BundleServer(bundle, host=host, port=port, db=args.db)
    except (OSError, StoreError) as e:
        remove_extracted(bundle, args.bundle)
        print(f"omaha-proxy bundle serve: {e}", file=sys.stderr)
        return 1
    print(describe(bundle), file=sys.stderr)
    print(f"serving at {server.omaha_url}; on each machine: SERVER={server.omaha_url}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        remove_extracted(bundle, args.bundle)
    return 0
