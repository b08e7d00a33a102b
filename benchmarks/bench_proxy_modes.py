"""Requests/s and p50/p99 latency through a real mitmdump in four modes, side by side.

- **bare**: ``mitmdump --mode reverse:<upstream>`` without any script (the baseline);
- **logging**: ``-s addons/omaha.py`` (every exchange parsed and logged to SQLite);
- **logging + pin**: the same with ``omaha_pin`` below the upstream's offer, so every answer
  is parsed, rewritten to noupdate and logged with the upstream's original;
- **replay**: ``omaha_replay`` from a recording, ``connection_strategy=lazy`` and no upstream
  at all (the reverse target is a closed port), answers logged too.

The client opens one new TCP connection per request, as update_engine does, and sends the
steady-state update check of 1,000 distinct machines, ``--concurrency`` at a time. The
upstream is a minimal asyncio server in its own process. All four proxies run at once and
the rounds are interleaved (round-robin over the modes), so background load hits every mode
alike. Targets (issue 7): logging and rewriting cost <= 10 % of bare throughput; replay is at
least as fast as bare forwarding.

    python benchmarks/bench_proxy_modes.py [--requests 1500] [--concurrency 8] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    CHECK,
    OFFER,
    LoadResult,
    check_bodies,
    fast_upstream,
    load,
    merge,
    post_bytes,
)

from omaha_proxy.recording import RecordingBuilder, dump
from tests.support.mitmdump_run import run_mitmdump

NEW = "4152.2.0"
OFFER_NEW = OFFER.replace(b"4081.2.0", NEW.encode())  # above the machines' 4081.2.0
PIN = "4081.2.0"
MODES = ("bare", "logging", "logging + pin", "replay")


def _recording(directory: Path) -> Path:
    builder = RecordingBuilder(source="benchmark", created="2026-11-27T00:00:00Z")
    builder.add(CHECK, OFFER_NEW, request_headers=[("Content-Type", "text/xml")])
    path = directory / "offer.json"
    dump(builder.recording(), path)
    return path


def _proxies(stack: contextlib.ExitStack, upstream: str, scratch: Path) -> dict[str, int]:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens, replay must not need it
    specs = {
        "bare": (("--mode", f"reverse:{upstream}"), False),
        "logging": (("--mode", f"reverse:{upstream}", "--set", f"omaha_db={scratch}/log.db"), True),
        "logging + pin": (
            ("--mode", f"reverse:{upstream}", "--set", f"omaha_db={scratch}/pin.db", "--set", f"omaha_pin={PIN}"),
            True,
        ),
        "replay": (
            ("--mode", f"reverse:{closed}", "--set", f"omaha_db={scratch}/replay.db",
             "--set", f"omaha_replay={_recording(scratch)}", "--set", "connection_strategy=lazy"),
            True,
        ),
    }  # fmt: skip
    ports = {}
    for mode, (args, addons) in specs.items():
        ports[mode] = stack.enter_context(run_mitmdump(*args, addons=addons)).port
    return ports


def _actions(db: Path) -> str:
    """What the log says the proxy did, e.g. ``1550 rewritten`` (proves the mode worked)."""
    if not db.exists():
        return "-"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT action, COUNT(*) FROM exchanges GROUP BY action ORDER BY 2 DESC"
        ).fetchall()
    return ", ".join(f"{n} {action}" for action, n in rows) or "none"


def run(
    requests: int = 1500, concurrency: int = 8, rounds: int = 5, cap: float = 60.0
) -> tuple[dict[str, LoadResult], dict[str, str]]:
    """Measure every mode; returns the merged result per mode and what each log recorded."""
    per_round = max(1, requests // rounds)
    bodies = check_bodies(per_round * rounds)
    raws = [post_bytes("/v1/update/", b) for b in bodies]
    results: dict[str, list[LoadResult]] = {m: [] for m in MODES}
    with (
        tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp,
        fast_upstream(OFFER_NEW) as upstream,
        contextlib.ExitStack() as stack,
    ):
        ports = _proxies(stack, upstream, Path(tmp))
        for port in ports.values():  # warm-up: imports, first connections, SQLite pages
            load(port, raws[:50], concurrency=concurrency)
        for r in range(rounds):
            chunk = raws[r * per_round : (r + 1) * per_round]
            order = MODES if r % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                results[mode].append(load(ports[mode], chunk, concurrency=concurrency, cap=cap / rounds))
        dbs = {"bare": "none.db", "logging": "log.db", "logging + pin": "pin.db", "replay": "replay.db"}
        logged = {mode: _actions(Path(tmp) / name) for mode, name in dbs.items()}
    return {m: merge(rs) for m, rs in results.items()}, logged


def figures(results: dict[str, LoadResult], logged: dict[str, str]) -> list[dict[str, object]]:
    """One row per mode: requests, errors, req/s, p50, p99 (ms), throughput vs bare and
    what the log recorded (including the warm-up)."""
    bare = results["bare"].rps
    rows = []
    for mode, r in results.items():
        rows.append(
            {
                "mode": mode,
                "requests": r.requests,
                "errors": r.errors,
                "req_per_s": round(r.rps, 1),
                "p50_ms": round(r.percentile(50), 2),
                "p99_ms": round(r.percentile(99), 2),
                "vs_bare": round(r.rps / bare, 3) if bare else None,
                "logged": logged.get(mode, "-"),
            }
        )
    return rows


def verdicts(rows: list[dict[str, object]]) -> list[str]:
    """The targets, each with PASS/MISS."""
    by = {row["mode"]: row for row in rows}
    out = []
    for mode in ("logging", "logging + pin"):
        ratio = float(by[mode]["vs_bare"] or 0)  # type: ignore[arg-type]
        out.append(f"{'PASS' if ratio >= 0.9 else 'MISS'}: {mode} at {ratio:.0%} of bare (target >= 90%)")
    ratio = float(by["replay"]["vs_bare"] or 0)  # type: ignore[arg-type]
    out.append(f"{'PASS' if ratio >= 1.0 else 'MISS'}: replay at {ratio:.0%} of bare (target >= 100%)")
    return out


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        f"{'mode':<15} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}  logged"
    ]
    for row in rows:
        lines.append(
            f"{row['mode']:<15} {row['requests']:>8} {row['errors']:>6} {row['req_per_s']:>8} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['vs_bare']:>8}  {row['logged']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="connections in flight")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per mode")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    rows = figures(*run(args.requests, args.concurrency, args.rounds))
    if args.json:
        print(json.dumps({"rows": rows, "verdicts": verdicts(rows)}, indent=2))
    else:
        print(table(rows))
        print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
