"""10,000 distinct simulated machines check in through one proxy: the fleet figure.

The update_engine simulator (:func:`omaha_proxy.client.simulator.simulate`) drives ``--machines``
distinct machines (own machine id, boot id, alias) through one check-in cycle — a steady-state
update check each, one new connection per request — against a real ``mitmdump -s
addons/omaha.py`` in reverse mode (logging on) in front of a fast local upstream that answers
noupdate. The proxy's own CPU time, and its log writer process's, are read from ``/proc``
before and after.

Two figures for "machines one proxy process can serve at update_engine's 45-minute interval":

- **measured**: sustained check-ins/s of this run x 2700 s (45 min). On this box the
  simulator, the upstream and the proxy share the cores, so this is a lower bound;
- **CPU-bound**: 1 / (proxy CPU seconds per check-in) x 2700 s — mitmproxy runs its flows on
  one asyncio thread, so one process saturates at one core. This is what a proxy with a
  core to itself would sustain (its log writer, a fraction of that, on another).

update_engine's checks are spread over the interval (45 min +/- 5 min fuzz), so the average
rate is what matters; the capacity is the rate a proxy can sustain, not a burst.

    python benchmarks/bench_fleet.py [--machines 10000] [--concurrency 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import NOUPDATE, children_cpu_seconds, cpu_seconds, fast_upstream, rss_kib

from omaha_proxy.client.simulator import simulate
from tests.support.mitmdump_run import run_mitmdump

INTERVAL_S = 45 * 60  # update_engine's check interval


def run(machines: int = 10_000, concurrency: int = 16, timeout: float = 240.0) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp,
        fast_upstream(NOUPDATE) as upstream,
        run_mitmdump("--mode", f"reverse:{upstream}", "--set", f"omaha_db={tmp}/fleet.db") as proxy,
    ):
        pid = proxy.proc.pid
        cpu0, writer0 = cpu_seconds(pid), children_cpu_seconds(pid)
        report = simulate(
            f"{proxy.url}/v1/update/", machines, concurrency=concurrency, cycles=1, interval=0.0,
            timeout=timeout, request_timeout=30.0,
        )  # fmt: skip
        cpu = cpu_seconds(pid) - cpu0
        writer_cpu = children_cpu_seconds(pid) - writer0
        rss, peak = rss_kib(pid)
        with sqlite3.connect(f"{tmp}/fleet.db") as conn:
            logged = conn.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0]
            distinct = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    checkins = sum(1 for m in report.machines for s in m.steps if s.kind == "updatecheck" and s.status == 200)
    rate = checkins / report.duration if report.duration else 0.0
    cpu_per = cpu / checkins if checkins else float("nan")
    return {
        "machines": machines,
        "concurrency": concurrency,
        "check-ins answered": checkins,
        "outcomes": report.summary(),
        "timed out": report.timed_out,
        "seconds": report.duration,
        "check-ins/s (measured)": round(rate, 1),
        "proxy CPU ms per check-in": round(cpu_per * 1000, 3),
        "log writer CPU ms per check-in": round(writer_cpu / checkins * 1000, 3) if checkins else None,
        "check-ins/s (one proxy core)": round(1 / cpu_per, 1) if checkins else None,
        "machines at 45 min (measured)": int(rate * INTERVAL_S),
        "machines at 45 min (one proxy core)": int(INTERVAL_S / cpu_per) if checkins else None,
        "exchanges logged": logged,
        "distinct machines logged": distinct,
        "proxy RSS MiB (end / peak)": f"{rss / 1024:.0f} / {peak / 1024:.0f}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=240.0, help="cap on the whole cycle (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    t = time.perf_counter()
    figures = run(args.machines, args.concurrency, args.timeout)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:<40} {value}")
        print(f"(took {time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
