"""Codec figures, measured side by side in one run.

Prints median µs per operation for: decode of update_engine's request, decode of the ue-rs
(public server) response, encode of a Nebraska-shaped update response, and a bare
``lxml.etree.fromstring`` of the same request, with the decode/bare ratio.
Targets (issue 2): decode <= 1.6x the bare lxml parse; encode of the response <= 12 µs.
Also prints which decoder walker is active (``codec.IMPLEMENTATION``: compiled or python).

    python benchmarks/bench_codec.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omaha_proxy import (  # noqa: E402
    codec,
    encode,
    offer_response,
    package_info_from_bytes,
    parse_request,
    parse_response,
)

DATA = ROOT / "tests" / "data"
REQUEST = (
    DATA / "flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml"
).read_bytes()
UE_RS_RESPONSE = (DATA / "ue-rs__omaha-response-example.xml").read_bytes()


def _median_us(fn: object, number: int, rounds: int) -> list[float]:
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    return [timer.timeit(number) / number * 1e6 for _ in range(rounds)]


def run(number: int = 5000, rounds: int = 15) -> dict[str, float]:
    """Return the median µs/op of each operation; rounds are interleaved so load hits all alike."""
    request = parse_request(REQUEST)
    offer = offer_response(
        request,
        version="4152.2.0",
        codebase="https://update.release.flatcar-linux.net/amd64-usr/4152.2.0/",
        packages=[
            package_info_from_bytes(b"p" * 1000, "flatcar_production_update.gz"),
            package_info_from_bytes(b"o" * 100, "oem-qemu.gz"),
        ],
        server="nebraska",
    )
    ops = {
        "bare lxml.etree.fromstring (request)": lambda: etree.fromstring(REQUEST),
        "decode update_engine request": lambda: parse_request(REQUEST),
        "decode ue-rs response": lambda: parse_response(UE_RS_RESPONSE),
        "encode Nebraska-shaped update response": lambda: encode(offer),
    }
    samples: dict[str, list[float]] = {name: [] for name in ops}
    for fn in ops.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in ops.items():
            samples[name] += _median_us(fn, number // 5, 1)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--number", type=int, default=5000, help="operations per round")
    args = parser.parse_args()
    figures = run(number=args.number)
    bare = figures["bare lxml.etree.fromstring (request)"]
    decode = figures["decode update_engine request"]
    figures["decode / bare lxml ratio"] = decode / bare
    if args.json:
        print(json.dumps({**figures, "implementation": codec.IMPLEMENTATION}, indent=2))
        return 0
    print(f"decoder walker: {codec.IMPLEMENTATION}")
    print(f"{'operation':<42} {'median µs/op':>12}")
    for name, value in figures.items():
        unit = "x" if "ratio" in name else ""
        print(f"{name:<42} {value:>12.2f}{unit}")
    print("targets: decode <= 1.6x bare lxml; encode <= 12 µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
