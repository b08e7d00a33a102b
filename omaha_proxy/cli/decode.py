"""``omaha-proxy decode FILE|-``: print a decoded Omaha document as readable JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.protocol.decode import parse
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.jsonable import to_json
from omaha_proxy.protocol.model import Response


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "decode",
        help="print an Omaha request or response as JSON (codes named, error flags split)",
        description="Decode an Omaha v3 document. Exit 1 with a one-line error on bad input.",
    )
    p.add_argument("file", help="path of the XML document, or - for standard input")
    p.add_argument("--compact", action="store_true", help="one line of JSON instead of indented")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as e:
        print(f"omaha-proxy decode: {e}", file=sys.stderr)
        return 1
    try:
        doc = parse(data)
    except CodecError as e:
        print(f"omaha-proxy decode: {args.file}: {e}", file=sys.stderr)
        return 1
    out = to_json(doc)
    if isinstance(doc, Response):
        verdict = dataclasses.asdict(update_engine_verdict(doc))
        out["update_engine_verdict"] = {k: v for k, v in verdict.items() if v not in (None, (), False)}
    print(json.dumps(out, indent=None if args.compact else 2, ensure_ascii=False))
    return 0
