"""Shared pieces of the proxy benchmarks: a fast upstream in its own process, a load client
that opens one new connection per request (as update_engine does), and figures.

The upstream is a minimal asyncio HTTP/1.1 server (no http.server overhead) so that the
proxy, not the upstream, is what the benchmarks measure. It answers every POST whose body
contains ``<updatecheck`` with ``check_answer`` (default: Nebraska's offer sample) and any
other POST with Nebraska's event ack; GETs get ``ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "data"
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
CHECK = (
    DATA / "flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml"
).read_bytes()
OFFER = (DATA / "nebraska-shape__updatecheck_update_ok.GENERATED.xml").read_bytes()
NOUPDATE = (DATA / "nebraska-shape__updatecheck_noupdate.GENERATED.xml").read_bytes()
EVENT_ACK = (DATA / "nebraska-shape__event_ack.GENERATED.xml").read_bytes()


def machine_ids(count: int, seed: int = 7) -> list[str]:
    """``count`` reproducible 32-hex machine ids."""
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def check_bodies(count: int, machines: int = 1000) -> list[bytes]:
    """update_engine's steady-state check, sent by ``machines`` distinct machines in turn."""
    ids = machine_ids(machines)
    return [CHECK.replace(MACHINE.encode(), ids[i % machines].encode()) for i in range(count)]


# ----------------------------------------------------------------------------- upstream


def _http_response(status: int, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


def _serve(conn: object, check_answer: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"POST"):
                    answer = check_answer if b"<updatecheck" in body else EVENT_ACK
                else:
                    answer = b"ok\n"
                writer.write(_http_response(200, answer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        conn.send(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextmanager
def fast_upstream(check_answer: bytes = OFFER) -> Iterator[str]:
    """Run the fast upstream in a child process; yields its base URL."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, check_answer), daemon=True)
    proc.start()
    try:
        if not parent.poll(10):
            raise RuntimeError("fast upstream did not start")
        yield f"http://127.0.0.1:{parent.recv()}"
    finally:
        proc.terminate()
        proc.join(5)


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    ok: int
    errors: int
    seconds: float
    latencies: tuple[float, ...]  # seconds, successful requests only
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (``q`` in 0..100)."""
        if not self.latencies:
            return float("nan")
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(len(values) * q / 100))] * 1000


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Several rounds of one mode as one result (rates add up over the summed time)."""
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    return LoadResult(
        requests=sum(r.requests for r in results),
        ok=sum(r.ok for r in results),
        errors=sum(r.errors for r in results),
        seconds=sum(r.seconds for r in results),
        latencies=tuple(x for r in results for x in r.latencies),
        statuses=statuses,
    )


async def _one(port: int, raw: bytes, timeout: float) -> tuple[int, float]:
    t = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await asyncio.wait_for(reader.readexactly(length), timeout)
        return int(head[9:12]), time.perf_counter() - t
    finally:
        writer.close()


def post_bytes(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """An HTTP/1.1 POST like libcurl's (Host, Accept, Content-Type, Content-Length)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nContent-Type: text/xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(port: int, raws: Sequence[bytes], concurrency: int, timeout: float, cap: float) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + cap

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < len(raws) and time.perf_counter() < deadline:
            raw = raws[next_index]
            next_index += 1
            try:
                status, took = await _one(port, raw, timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(took)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return LoadResult(next_index, len(latencies), errors, seconds, tuple(latencies), statuses)


def load(
    port: int,
    raws: Sequence[bytes],
    *,
    concurrency: int = 8,
    timeout: float = 10.0,
    cap: float = 60.0,
) -> LoadResult:
    """Send every request in ``raws`` to 127.0.0.1:``port``, each on a new connection,
    ``concurrency`` at a time, stopping early after ``cap`` seconds."""
    return asyncio.run(_load(port, raws, concurrency, timeout, cap))


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from /proc (Linux)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """utime + stime of a process's live children so far (the proxy's log writer), in seconds."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    total = 0.0
    for child in children:
        with contextlib.suppress(OSError):  # exited meanwhile
            total += cpu_seconds(child)
    return total


def machine_info() -> dict[str, str]:
    """nproc, python and mitmproxy versions (for the results table)."""
    import platform

    try:
        from mitmproxy.version import VERSION as mitm
    except ImportError:  # pragma: no cover
        mitm = "?"
    return {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "mitmproxy": mitm,
        "platform": platform.platform(terse=True),
    }
