"""The Omaha log at fleet scale: insert rate, durability cost, file size and query times.

1. **Insert rate through the real write path** (``Store.record_exchange`` with the parsed
   bodies, as the proxy logs): ``synchronous=NORMAL`` (the store's setting) and ``FULL``,
   each committing every exchange or groups of 20 (the proxy's group commit), side by side,
   interleaved in chunks.
2. **A log of 1,000,000 exchanges** generated fast (bulk ``executemany`` in transactions into
   the store's own schema): 10,000 machines, update_engine's real request bodies (ids
   substituted) and Nebraska-shaped answers, a realistic mix of kinds (60 % update checks,
   30 % events, 10 % pings; 2 % of checks get an offer; 1 % of events are errors), plus the
   ``instances`` table the logger maintains. Reports generation time and bytes per exchange.
3. **Query times** on that log through the :class:`~omaha_proxy.store.store.Store` API the CLI and
   the control addon use (``omaha-proxy fleet`` = ``fleet_summary()`` + ``fleet()``,
   ``omaha-proxy log --machine`` = ``history()``, ...): cold first call, then the median of
   5. Target (issue 7): every query <= 100 ms.

    python benchmarks/bench_store.py [--exchanges 1000000] [--inserts 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DATA, EVENT_ACK, MACHINE, NOUPDATE, OFFER, check_bodies, machine_ids

from omaha_proxy.protocol.decode import parse_request, parse_response
from omaha_proxy.store.store import Store

EVENT = (
    DATA / "flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml"
).read_bytes()
ERROR_EVENT = (
    DATA
    / "flatcar-update_engine-0.4.10__request_09_event_error_hash_mismatch_nonprod_server.RECONSTRUCTED.xml"
).read_bytes()
PING = (
    DATA / "flatcar-update_engine-0.4.10__request_11_ping_only_waiting_for_reboot.RECONSTRUCTED.xml"
).read_bytes()
PING_ACK = (DATA / "nebraska-shape__ping_ack.GENERATED.xml").read_bytes()
APPID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
QUERY_TARGET_MS = 100.0


# ----------------------------------------------------------------------------- inserts


MODES = {  # name -> (synchronous, exchanges per commit)
    "NORMAL, commit each": ("NORMAL", 1),
    "FULL, commit each": ("FULL", 1),
    "NORMAL, group of 20": ("NORMAL", 20),
    "FULL, group of 20": ("FULL", 20),
}


def insert_rates(count: int, chunk: int = 200) -> dict[str, float]:
    """Exchanges/s through ``record_exchange`` per durability setting and commit grouping
    (the log writer process commits a window's exchanges together), interleaved in chunks."""
    bodies = check_bodies(count)
    requests = [parse_request(b) for b in bodies]
    offer = parse_response(OFFER)
    seconds = dict.fromkeys(MODES, 0.0)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        stores = {mode: Store(Path(tmp) / f"{n}.db") for n, mode in enumerate(MODES)}
        for mode, store in stores.items():
            store.db.execute(f"PRAGMA synchronous = {MODES[mode][0]}")
        for start in range(0, count, chunk):
            for mode, store in stores.items():
                group = MODES[mode][1]
                t = time.perf_counter()
                for i in range(start, min(count, start + chunk)):
                    store.record_exchange(
                        flow_id=f"f{i}", ts=time.time(), request_xml=bodies[i], response_xml=OFFER,
                        client_ip="10.0.0.1", http_status=200, duration_ms=1.0, path="/v1/update/",
                        request=requests[i], response=offer, commit=group == 1,
                    )  # fmt: skip
                    if group > 1 and (i + 1) % group == 0:
                        store.commit()
                store.commit()
                seconds[mode] += time.perf_counter() - t
        size = (Path(tmp) / "0.db").stat().st_size
        for store in stores.values():
            store.close()
    out = {f"inserts/s ({mode})": count / s for mode, s in seconds.items()}
    out["µs per logged exchange (NORMAL, commit each)"] = seconds["NORMAL, commit each"] / count * 1e6
    out["FULL / NORMAL insert rate (commit each)"] = (
        seconds["NORMAL, commit each"] / seconds["FULL, commit each"]
    )
    out["bytes per exchange (record_exchange)"] = size / count
    return out


# ----------------------------------------------------------------------------- bulk log


def _bodies(machine: str) -> dict[str, tuple[str, str]]:
    def sub(body: bytes) -> str:
        return body.replace(MACHINE.encode(), machine.encode()).decode()

    return {
        "check": (sub(check_bodies(1)[0]), NOUPDATE.decode()),
        "offer": (sub(check_bodies(1)[0]), OFFER.decode()),
        "event": (sub(EVENT), EVENT_ACK.decode()),
        "error": (sub(ERROR_EVENT), EVENT_ACK.decode()),
        "ping": (sub(PING), PING_ACK.decode()),
    }


def _exchanges(total: int, ids: list[str], t0: float) -> Iterator[tuple[int, str, float, str]]:
    """(exchange id, machine id, ts, flavour) for ``total`` exchanges in time order."""
    rng = random.Random(1)
    for n in range(1, total + 1):
        r = rng.random()
        if r < 0.60:
            flavour = "offer" if rng.random() < 0.02 else "check"
        elif r < 0.90:
            flavour = "error" if rng.random() < 0.01 else "event"
        else:
            flavour = "ping"
        yield n, ids[rng.randrange(len(ids))], t0 + n * 0.1, flavour


def generate(path: Path, total: int, machines: int, batch: int = 20_000) -> dict[str, float]:
    """Write ``total`` exchanges of ``machines`` machines into a fresh log at ``path``."""
    Store(path).close()  # the real schema, indexes and migrations
    ids = machine_ids(machines)
    templates = {m: _bodies(m) for m in ids}
    kinds = {
        "check": "updatecheck",
        "offer": "updatecheck",
        "event": "event",
        "error": "event",
        "ping": "ping",
    }
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    t = time.perf_counter()
    exchanges: list[tuple[object, ...]] = []
    apps: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    offers: list[tuple[object, ...]] = []
    last: dict[str, tuple[float, float, str]] = {}

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO exchanges (id, flow_id, ts, client_ip, machine_id, http_status, duration_ms,"
            " request_xml, response_xml, action, kind, path, appid, version, track, summary)"
            " VALUES (?, ?, ?, '10.0.0.1', ?, 200, 1.5, ?, ?, 'forwarded', ?, '/v1/update/', ?,"
            " '4081.2.0', 'stable', ?)",
            exchanges,
        )
        conn.executemany(
            "INSERT INTO apps (exchange_id, appid, version, track, board, oem, machine_id, kind)"
            " VALUES (?, ?, '4081.2.0', 'stable', 'amd64-usr', 'qemu', ?, ?)",
            apps,
        )
        conn.executemany(
            "INSERT INTO events (exchange_id, ts, machine_id, appid, type, type_name, result, result_name,"
            " errorcode, error_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            events,
        )
        conn.executemany(
            "INSERT INTO offers (exchange_id, ts, machine_id, appid, track, from_version, status, version,"
            " codebases, source, delivered) VALUES (?, ?, ?, ?, 'stable', '4081.2.0', 'ok', '4152.2.0',"
            " '[\"https://update.release.flatcar-linux.net/amd64-usr/4152.2.0/\"]', 'upstream', 1)",
            offers,
        )
        conn.execute("COMMIT")
        for rows in (exchanges, apps, events, offers):
            rows.clear()

    for n, machine, ts, flavour in _exchanges(total, ids, time.time() - total * 0.1):
        request, response = templates[machine][flavour]
        exchanges.append((n, f"flow-{n}", ts, machine, request, response, kinds[flavour], APPID, flavour))
        apps.append((n, APPID, machine, kinds[flavour]))
        if flavour == "event":
            events.append((n, ts, machine, APPID, 13, "DownloadStarted", 1, "Success", None, None))
        elif flavour == "error":
            events.append(
                (n, ts, machine, APPID, 3, "UpdateComplete", 0, "Error", 268435466, "PayloadHashMismatch")
            )
        elif flavour == "offer":
            offers.append((n, ts, machine, APPID))
        first = last.get(machine, (ts, ts, ""))[0]
        last[machine] = (first, ts, flavour)
        if len(exchanges) >= batch:
            flush()
    flush()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR REPLACE INTO instances (machine_id, appid, version, track, oem, board, client_ip,"
        " first_seen, last_seen, state, state_label, update_in_progress)"
        " VALUES (?, ?, '4081.2.0', 'stable', 'qemu', 'amd64-usr', '10.0.0.1', ?, ?, ?, ?, 0)",
        [(m, APPID, f, ts, 1 if fl != "offer" else 2, "NoUpdate" if fl != "offer" else "UpdateGranted")
         for m, (f, ts, fl) in last.items()],
    )  # fmt: skip
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    seconds = time.perf_counter() - t
    size = path.stat().st_size
    return {
        "exchanges": total,
        "machines": machines,
        "generation seconds": seconds,
        "generated exchanges/s (bulk)": total / seconds,
        "file MB": size / 1e6,
        "bytes per exchange": size / total,
    }


# ----------------------------------------------------------------------------- queries


def _time(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float, int]:
    """(cold ms, median warm ms, rows) for one query."""
    t = time.perf_counter()
    result = fn()
    cold = (time.perf_counter() - t) * 1000
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - t) * 1000)
    # rows returned; for latest_offer the size of the offer's XML in bytes
    size = len(result) if isinstance(result, list | bytes) else int(result is not None)
    return cold, statistics.median(warm), size


def queries(path: Path, machines: int) -> list[dict[str, object]]:
    """Cold and warm (median of 5) times of the log's read API on the generated log."""
    machine = machine_ids(machines)[123]
    since = time.time() - 3600
    with Store(path) as store:
        named: dict[str, Callable[[], object]] = {
            "fleet_summary() (omaha-proxy fleet --summary)": store.fleet_summary,
            "fleet() (omaha-proxy fleet, every machine)": store.fleet,
            "instance(machine)": lambda: store.instance(machine),
            "history(machine, 50) (omaha-proxy log --machine)": lambda: store.history(machine, 50),
            "recent(50) (omaha-proxy log)": lambda: store.recent(50),
            "latest_offer() (control: pin's seen offer)": store.latest_offer,
            "latest_offer(version) (control)": lambda: store.latest_offer(version="4152.2.0"),
            "grants_since(1h ago) (control: rollout)": lambda: store.grants_since(since),
            "count() (exchanges)": store.count,
        }
        rows = []
        for name, fn in named.items():
            cold, warm, size = _time(fn)
            rows.append({"query": name, "cold_ms": round(cold, 2), "warm_ms": round(warm, 2), "result": size})
        return rows


def run(total: int, machines: int, inserts: int, keep: Path | None = None) -> dict[str, object]:
    """Every figure of this benchmark."""
    out: dict[str, object] = {"insert": insert_rates(inserts)}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        path = keep or Path(tmp) / "million.db"
        if not path.exists():
            out["generate"] = generate(path, total, machines)
        out["queries"] = queries(path, machines)
    out["verdict"] = verdict(out["queries"])  # type: ignore[arg-type]
    return out


def verdict(rows: list[dict[str, object]]) -> str:
    worst = max(max(float(r["cold_ms"]), float(r["warm_ms"])) for r in rows)  # type: ignore[arg-type]
    return f"{'PASS' if worst <= QUERY_TARGET_MS else 'MISS'}: slowest query {worst:.1f} ms (target <= {QUERY_TARGET_MS:.0f} ms)"


def report(figures: dict[str, object]) -> str:
    lines = []
    for section in ("insert", "generate"):
        for name, value in figures.get(section, {}).items():  # type: ignore[attr-defined]
            lines.append(f"{name:<52} {value:>14,.2f}")
    lines.append(f"\n{'query':<52} {'cold ms':>9} {'warm ms':>9} {'result':>7}")
    for row in figures["queries"]:  # type: ignore[attr-defined]
        lines.append(f"{row['query']:<52} {row['cold_ms']:>9.2f} {row['warm_ms']:>9.2f} {row['result']:>7}")
    lines.append(str(figures["verdict"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=1_000_000)
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--inserts", type=int, default=2000, help="exchanges per durability setting")
    parser.add_argument("--keep", type=Path, help="reuse (or create and keep) the generated log here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = run(args.exchanges, args.machines, args.inserts, args.keep)
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
