"""Soak: memory of one proxy over a long run (does it stay flat?).

``--requests`` update checks and events (one new connection each, 20,000 distinct machines
by default so that every request adds a machine to the log) go through one
``mitmdump -s addons/omaha.py`` (logging on) in front of the fast upstream, which answers
noupdate, as in a fleet's steady state. (Offers make the control addon keep one grant per
machine for its rollout count: bounded, at most 100,000 grants of the last 30 days.) The proxy's RSS
is sampled from ``/proc`` after the warm-up and at every tenth of the run; the figures are
RSS at start, middle and end, the peak (``VmHWM``) and the growth per 1,000 requests from the
first tenth to the end. A flat proxy grows by a few MiB at most (SQLite page cache, allocator).

    python benchmarks/bench_soak.py [--requests 20000] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CHECK, DATA, MACHINE, NOUPDATE, fast_upstream, load, machine_ids, post_bytes, rss_kib

from tests.support.mitmdump_run import run_mitmdump

EVENT = (
    DATA / "flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml"
).read_bytes()


def run(requests: int = 20_000, concurrency: int = 8, cap: float = 300.0) -> dict[str, object]:
    ids = machine_ids(requests)
    raws = [
        post_bytes("/v1/update/", (CHECK if i % 4 else EVENT).replace(MACHINE.encode(), ids[i].encode()))
        for i in range(requests)
    ]
    samples: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        fast_upstream(NOUPDATE) as upstream,
        run_mitmdump("--mode", f"reverse:{upstream}", "--set", f"omaha_db={tmp}/soak.db") as proxy,
    ):
        pid = proxy.proc.pid
        load(proxy.port, raws[:200], concurrency=concurrency)  # warm-up
        start = rss_kib(pid)[0]
        step = max(1, requests // 10)
        errors = sent = 0
        for first in range(0, requests, step):
            if time.perf_counter() - t0 > cap:
                break
            result = load(proxy.port, raws[first : first + step], concurrency=concurrency)
            errors += result.errors
            sent += result.requests
            samples.append((sent, rss_kib(pid)[0]))
        rss, peak = rss_kib(pid)
        db_mb = Path(f"{tmp}/soak.db").stat().st_size / 1e6
    seconds = time.perf_counter() - t0
    middle = samples[len(samples) // 2 - 1][1] if samples else start
    # Growth after the first tenth (SQLite's page cache and the allocator fill up first).
    first_n, first_rss = samples[0] if samples else (0, start)
    growth = (rss - first_rss) / ((sent - first_n) / 1000) if sent > first_n else 0.0
    return {
        "requests": sent,
        "errors": errors,
        "seconds": round(seconds, 1),
        "RSS MiB at start (after warm-up)": round(start / 1024, 1),
        "RSS MiB in the middle": round(middle / 1024, 1),
        "RSS MiB at the end": round(rss / 1024, 1),
        "peak RSS MiB (VmHWM)": round(peak / 1024, 1),
        "growth KiB per 1000 requests (after the first tenth)": round(growth, 1),
        "log file MB": round(db_mb, 1),
        "samples (requests: RSS MiB)": ", ".join(f"{n}: {kib / 1024:.0f}" for n, kib in samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cap", type=float, default=300.0, help="stop after this many seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.requests, args.concurrency, args.cap)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:<36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
