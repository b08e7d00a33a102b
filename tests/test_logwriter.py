"""The log writer process: its frames, its loop, and a real writer process on a real log."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from omaha_proxy.store import writer as logwriter
from omaha_proxy.store.store import Store
from omaha_proxy.store.writer import FIELDS, LogWriterProcess, pack, serve, unpack
from tests.conftest import sample

CHECK = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
OFFER = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml")
MACHINE = b"5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"


def record(n: int, **overrides: object) -> dict[str, object]:
    machine = f"{n:032x}".encode()
    base: dict[str, object] = {
        "flow_id": f"flow-{n}", "ts": 1_700_000_000.0 + n, "request_xml": CHECK.replace(MACHINE, machine),
        "response_xml": OFFER, "client_ip": "10.0.0.1", "http_status": 200, "duration_ms": 1.5,
        "action": "forwarded", "path": "/v1/update/", "check_duplicate": False,
    }  # fmt: skip
    return base | overrides


def count(path: Path, table: str = "exchanges") -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_frames_round_trip_and_a_partial_frame_waits_for_the_rest() -> None:
    one = record(1, error="request: broken", reason=None, upstream_response_xml=b"\xff\x00raw")
    data = pack(one) + pack(record(2))
    records, used = unpack(data[:-3])  # the second frame is cut short
    assert used == len(pack(one)) and records == [({name: one.get(name) for name in FIELDS}, False)]
    records, used = unpack(data + pack(record(3), held=True))
    assert [(r["flow_id"], held) for r, held in records] == [
        ("flow-1", False),
        ("flow-2", False),
        ("flow-3", True),
    ]
    assert "request" not in records[0][0]  # parsed objects never cross: the writer parses again
    assert unpack(b"") == ([], 0)


def test_serve_writes_each_read_as_one_batch_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    store = Store(path)
    read, write = os.pipe()
    reports: list[bytes] = []
    os.write(write, b"".join(pack(record(n)) for n in range(5)))
    os.close(write)
    serve(store, read, reports.append)
    store.close()
    os.close(read)
    assert reports == [b"C 5\n"]
    assert count(path) == 5 and count(path, "offers") == 5 and count(path, "instances") == 5


def test_serve_reports_a_failed_exchange_and_still_acknowledges_it(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    store = Store(path)
    store.db.conn.execute("DROP TABLE offers")
    read, write = os.pipe()
    reports: list[bytes] = []
    os.write(write, pack(record(1)) + pack(record(2, response_xml=None)))
    os.close(write)
    serve(store, read, reports.append)
    store.close()
    os.close(read)
    expected = b"E cannot write to the Omaha log %s: no such table: offers (1 exchange not logged)\nC 2\n"
    assert reports == [expected % str(path).encode()]
    assert count(path) == 1  # the exchange without an offer; the other rolled back alone


def test_unheld_exchanges_share_a_commit_and_a_held_one_is_committed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    Store(path).close()
    read, write = os.pipe()
    reports: list[bytes] = []

    def writer() -> None:  # sqlite3 connections stay in the thread that made them
        with Store(path) as store:
            serve(store, read, reports.append, window=0.5)

    thread = threading.Thread(target=writer)
    thread.start()

    def reported(n: int) -> bool:
        deadline = time.monotonic() + 5
        while len(reports) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(reports) == n

    try:
        os.write(write, pack(record(1)))
        time.sleep(0.05)
        os.write(write, pack(record(2)))
        time.sleep(0.05)
        assert reports == [] and count(path) == 0  # both wait in the open transaction
        os.write(write, pack(record(3), held=True))  # an answer waits: commit now
        assert reported(1) and reports == [b"C 3\n"] and count(path) == 3
        os.write(write, pack(record(4)))
        assert reported(2) and reports[-1] == b"C 1\n"  # alone, once its window is over
    finally:
        os.close(write)
        thread.join(10)
        os.close(read)
    assert count(path) == 4


async def test_a_writer_process_commits_before_it_releases_even_when_the_pipe_is_full(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    Store(path).close()
    errors: list[str] = []
    writer = LogWriterProcess(path, redact=False, loop=asyncio.get_running_loop(), on_error=errors.append)
    held = [writer.submit(record(n)) for n in range(2000)]  # ~4 MB: more than the pipe holds
    assert writer._backlog  # the rest waits in the proxy, written as the pipe drains
    await asyncio.wait_for(asyncio.gather(*held), 60)
    assert count(path) == 2000 and not errors
    writer.close()
    assert writer._proc.returncode == 0


async def test_without_hold_answers_wait_only_when_the_writer_falls_far_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logwriter, "BACKLOG_LIMIT", 200_000)
    path = tmp_path / "omaha.db"
    Store(path).close()
    writer = LogWriterProcess(path, redact=False, loop=asyncio.get_running_loop(), on_error=print)
    answers = [writer.submit(record(n), hold=False) for n in range(2000)]  # ~4 MB at once
    assert answers[0] is None  # the pipe had room: nobody waits
    held = [a for a in answers if a is not None]
    assert held and len(writer._backlog) > 200_000  # past the limit: backpressure
    await asyncio.wait_for(asyncio.gather(*held), 60)
    writer.close()
    assert count(path) == 2000


async def test_the_writer_outlives_the_proxy_and_commits_what_it_was_sent(tmp_path: Path) -> None:
    """kill -9 of the proxy: the exchanges already in the pipe still reach the log."""
    path = tmp_path / "omaha.db"
    Store(path).close()
    writer = LogWriterProcess(path, redact=False, loop=asyncio.get_running_loop(), on_error=print)
    for n in range(50):
        writer.submit(record(n))
    asyncio.get_running_loop().remove_reader(writer._out)
    writer._stdin.close()  # what the kernel does for a proxy that dies
    await asyncio.to_thread(writer._proc.wait, 30)
    writer._stdout.close()
    assert count(path) == 50


async def test_a_redacting_writer_uses_the_logs_salt(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    proxy_side = Store(path, redact=True)
    writer = LogWriterProcess(path, redact=True, loop=asyncio.get_running_loop(), on_error=print)
    with open(f"/proc/{writer.pid}/environ", "rb") as f:  # it imports what the proxy imports
        environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    assert environ[b"PYTHONPATH"].decode().split(os.pathsep) == [p for p in sys.path if p]
    await asyncio.wait_for(writer.submit(record(7)), 30)
    writer.close()
    (row,) = proxy_side.fleet()
    assert row["machine_id"] == proxy_side.hide(f"{7:032x}")
    proxy_side.close()


async def test_a_writer_that_cannot_open_the_log_says_why(tmp_path: Path) -> None:
    errors: list[str] = []
    writer = LogWriterProcess(
        tmp_path / "missing" / "omaha.db",
        redact=False,
        loop=asyncio.get_running_loop(),
        on_error=errors.append,
    )
    answer = writer.submit(record(1))
    await asyncio.wait_for(answer, 30)  # released: traffic is never blocked by the log
    assert "cannot open the Omaha log" in errors[0]
    assert "log writer exited (status 1)" in errors[-1] and not writer.alive
    writer.close()


@pytest.mark.parametrize("cut", [0, 1, 3])
def test_unpack_never_takes_a_frame_it_has_not_fully_read(cut: int) -> None:
    frame = pack(record(1))
    assert unpack(frame[:cut]) == ([], 0)
