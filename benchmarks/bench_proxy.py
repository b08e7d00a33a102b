"""Throughput through mitmdump, bare and with omaha-proxy's addons, side by side in one run.

Two real ``mitmdump`` processes in reverse mode in front of the same fast local upstream:
``bare`` (no script) and ``omaha`` (``-s addons/omaha.py``: every addon loaded, the logger
writing each exchange to SQLite). The load client opens one new connection per request, as
update_engine does, ``--concurrency`` at a time; the mix is update_engine's steady-state
check from 1000 machines with one download-started event in four. Rounds alternate between
the two proxies so that background load hits both alike.

Prints requests/s, latency percentiles and the ratio; target (issue 3): the addon costs
<= 10 % of bare mitmdump's throughput (ratio >= 0.90).

    python benchmarks/bench_proxy.py [--requests 2000] [--rounds 4] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import (  # noqa: E402
    DATA,
    MACHINE,
    LoadResult,
    check_bodies,
    fast_upstream,
    load,
    machine_ids,
    merge,
    post_bytes,
)

MITMDUMP = Path(sys.executable).parent / "mitmdump"
EVENT = (
    DATA / "flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml"
).read_bytes()
TARGET_RATIO = 0.90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mitmdump did not listen on {port} within {timeout} s")


@contextmanager
def mitmdump(upstream: str, *extra: str) -> Iterator[int]:
    """A real mitmdump in reverse mode in front of ``upstream``; yields its port."""
    port = _free_port()
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", str(port), "--mode", f"reverse:{upstream}"]
    cmd += ["--set", "flow_detail=0", *extra]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as cwd:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def requests_mix(count: int) -> list[bytes]:
    """update_engine's check from 1000 machines, one download-started event in four."""
    checks = check_bodies(count)
    ids = machine_ids(1000)
    events = [EVENT.replace(MACHINE.encode(), ids[i % 1000].encode()) for i in range(count)]
    bodies = [events[i] if i % 4 == 3 else checks[i] for i in range(count)]
    return [post_bytes("/v1/update/", body) for body in bodies]


def run(requests: int, rounds: int, concurrency: int, cap: float) -> dict[str, LoadResult]:
    """Measure both proxies; ``requests`` per proxy in total, split over ``rounds``."""
    per_round = max(1, requests // rounds)
    raws = requests_mix(per_round)
    results: dict[str, list[LoadResult]] = {"bare": [], "omaha": []}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-db-") as tmp, fast_upstream() as upstream:
        addon = ("-s", str(ROOT / "addons" / "omaha.py"), "--set", f"omaha_db={tmp}/omaha.db")
        with mitmdump(upstream) as bare, mitmdump(upstream, *addon) as omaha:
            ports = {"bare": bare, "omaha": omaha}
            for port in ports.values():  # warm-up: imports, first connections, the DB file
                load(port, raws[:50], concurrency=concurrency, cap=cap)
            for n in range(rounds):
                order: Sequence[str] = ("bare", "omaha") if n % 2 == 0 else ("omaha", "bare")
                for mode in order:
                    results[mode].append(load(ports[mode], raws, concurrency=concurrency, cap=cap / rounds))
    return {mode: merge(rs) for mode, rs in results.items()}


def report(results: dict[str, LoadResult]) -> dict[str, object]:
    bare, omaha = results["bare"], results["omaha"]
    ratio = omaha.rps / bare.rps if bare.rps else 0.0
    return {
        mode: {
            "requests": r.requests,
            "ok": r.ok,
            "errors": r.errors,
            "rps": round(r.rps, 1),
            "p50_ms": round(r.percentile(50), 2),
            "p95_ms": round(r.percentile(95), 2),
        }
        for mode, r in results.items()
    } | {
        "ratio": round(ratio, 3),
        "cost_percent": round((1 - ratio) * 100, 1),
        "target_met": ratio >= TARGET_RATIO,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per proxy (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at a time (default 8)")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds per proxy at most (default 120)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = report(run(args.requests, args.rounds, args.concurrency, args.cap))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{'mitmdump':<10} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for mode in ("bare", "omaha"):
        f = figures[mode]
        assert isinstance(f, dict)
        print(f"{mode:<10} {f['ok']:>8} {f['errors']:>6} {f['rps']:>8} {f['p50_ms']:>8} {f['p95_ms']:>8}")
    verdict = "met" if figures["target_met"] else "NOT met"
    print(f"omaha/bare throughput ratio {figures['ratio']} (addon cost {figures['cost_percent']} %); "
          f"target ratio >= {TARGET_RATIO}: {verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
