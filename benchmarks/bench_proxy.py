"""Throughput through mitmdump, bare and with omaha-proxy's addons, side by side in one run.

Two real ``mitmdump`` processes in reverse mode in front of the same fast local upstream:
``bare`` (no script) and ``omaha`` (``-s addons/omaha.py``: every addon loaded, the logger
writing each exchange to SQLite). The load client opens one new connection per request, as
update_engine does, ``--concurrency`` at a time; the mix is update_engine's steady-state
check from 1000 machines with one download-started event in four. Rounds alternate between
the two proxies so that background load hits both alike.

Prints requests/s, latency percentiles, each proxy's CPU ms per request (read from /proc, so
robust when other work shares the cores) and the ratios; target (issue 3): the addon costs
<= 10 % of bare mitmdump's throughput (ratio >= 0.90).

    python benchmarks/bench_proxy.py [--requests 3000] [--rounds 12] [--concurrency 8] [--json]
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
    children_cpu_seconds,
    cpu_seconds,
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
def mitmdump(upstream: str, *extra: str) -> Iterator[tuple[int, int]]:
    """A real mitmdump in reverse mode in front of ``upstream``; yields (port, pid)."""
    port = _free_port()
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", str(port), "--mode", f"reverse:{upstream}"]
    cmd += ["--set", "flow_detail=0", *extra]
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as cwd:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc)
            yield port, proc.pid
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


def run(requests: int, rounds: int, concurrency: int, cap: float) -> dict[str, object]:
    """Measure both proxies; ``requests`` per proxy in total, split over ``rounds``.

    Returns the figures: per proxy requests/s, latency percentiles and the proxy process's
    CPU ms per request (from /proc: robust when other work shares the cores), and the ratios.
    """
    per_round = max(1, requests // rounds)
    raws = requests_mix(per_round)
    results: dict[str, list[LoadResult]] = {"bare": [], "omaha": []}
    cpu = {"bare": 0.0, "omaha": 0.0}
    writer_cpu = {"bare": 0.0, "omaha": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-db-") as tmp, fast_upstream() as upstream:
        addon = ("-s", str(ROOT / "addons" / "omaha.py"), "--set", f"omaha_db={tmp}/omaha.db")
        with mitmdump(upstream) as bare, mitmdump(upstream, *addon) as omaha:
            procs = {"bare": bare, "omaha": omaha}
            for port, _ in procs.values():  # warm-up: imports, first connections, the DB file,
                load(port, raws, concurrency=concurrency, cap=cap)  # the log writer's start
            for n in range(rounds):
                order: Sequence[str] = ("bare", "omaha") if n % 2 == 0 else ("omaha", "bare")
                for mode in order:
                    port, pid = procs[mode]
                    before, writer_before = cpu_seconds(pid), children_cpu_seconds(pid)
                    results[mode].append(load(port, raws, concurrency=concurrency, cap=cap / rounds))
                    cpu[mode] += cpu_seconds(pid) - before
                    writer_cpu[mode] += children_cpu_seconds(pid) - writer_before
    return report({mode: merge(rs) for mode, rs in results.items()}, cpu, writer_cpu)


def report(
    results: dict[str, LoadResult], cpu: dict[str, float], writer_cpu: dict[str, float]
) -> dict[str, object]:
    """Figures per proxy and the omaha/bare ratios (throughput measured, and per CPU of the
    proxy process, the event loop that limits it); ``writer_cpu_ms_per_req`` is what the log
    writer process spent besides, on another core."""
    figures: dict[str, object] = {}
    for mode, r in results.items():
        figures[mode] = {
            "requests": r.requests,
            "ok": r.ok,
            "errors": r.errors,
            "rps": round(r.rps, 1),
            "p50_ms": round(r.percentile(50), 2),
            "p95_ms": round(r.percentile(95), 2),
            "cpu_ms_per_req": round(cpu[mode] / r.ok * 1000, 3) if r.ok else None,
            "writer_cpu_ms_per_req": round(writer_cpu[mode] / r.ok * 1000, 3) if r.ok else None,
        }
    bare, omaha = results["bare"], results["omaha"]
    ratio = omaha.rps / bare.rps if bare.rps else 0.0
    per_cpu = (
        (cpu["bare"] / bare.ok) / (cpu["omaha"] / omaha.ok) if bare.ok and omaha.ok and cpu["omaha"] else 0.0
    )
    figures["ratio"] = round(ratio, 3)
    figures["cost_percent"] = round((1 - ratio) * 100, 1)
    figures["cpu_ratio"] = round(per_cpu, 3)
    figures["cpu_cost_percent"] = round((1 - per_cpu) * 100, 1)
    figures["target_met"] = ratio >= TARGET_RATIO
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per proxy (default 3000)")
    # Many short rounds: on a shared box the rate drifts; alternating often cancels it out.
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at a time (default 8)")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds per proxy at most (default 120)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(args.requests, args.rounds, args.concurrency, args.cap)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"{'mitmdump':<10} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms/req':>10}"
        f" {'writer CPU':>10}"
    )
    for mode in ("bare", "omaha"):
        f = figures[mode]
        assert isinstance(f, dict)
        print(
            f"{mode:<10} {f['ok']:>8} {f['errors']:>6} {f['rps']:>8} {f['p50_ms']:>8} {f['p95_ms']:>8}"
            f" {f['cpu_ms_per_req']:>10} {f['writer_cpu_ms_per_req']:>10}"
        )
    verdict = "met" if figures["target_met"] else "NOT met"
    print(f"omaha/bare throughput ratio {figures['ratio']} (addon cost {figures['cost_percent']} %); "
          f"target ratio >= {TARGET_RATIO}: {verdict}")  # fmt: skip
    print(
        f"per CPU (proxy CPU ms per request): ratio {figures['cpu_ratio']} (cost {figures['cpu_cost_percent']} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
