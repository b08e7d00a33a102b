"""Faults: a real mitmdump in front of an upstream that is down, slow, failing or lying, a
proxy killed with SIGKILL under load, and a log that cannot be written.

What each case gives the machine, and what update_engine 0.4.10 makes of it, is documented in
the README (hardening); these tests pin it down, and check that the log says what happened.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import resource
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omaha_proxy.client.http import HttpClient, HttpResult
from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.replay.recording import RecordingBuilder, dump
from tests.support.faulty_upstream import GARBAGE_BODY, FaultyUpstream
from tests.support.hostile import REQUEST
from tests.support.mitmdump_run import run_mitmdump
from tests.support.upstream import OFFER, FakeUpstream

pytestmark = pytest.mark.e2e

MACHINE = b"5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens
LAZY = ("--set", "connection_strategy=lazy")


def check(url: str, body: bytes = REQUEST, timeout: float = 10.0) -> HttpResult:
    """An update check the way update_engine sends it (new connection, text/xml)."""
    return HttpClient(timeout=timeout).request("POST", f"{url}/v1/update/", body, content_type="text/xml")


def log_rows(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM exchanges ORDER BY id")]


@contextlib.contextmanager
def proxy_for(upstream: str, db: Path, *args: str) -> Iterator[str]:
    with run_mitmdump("--mode", f"reverse:{upstream}", "--set", f"omaha_db={db}", *args) as proxy:
        yield proxy.url
        assert proxy.proc.poll() is None  # the proxy stayed up through the fault


# ----------------------------------------------------------------------------- upstream faults


def test_upstream_down_gives_mitmproxys_502_and_the_log_says_connect_failed(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with proxy_for(CLOSED, db, *LAZY) as url:
        result = check(url)
    assert result.status == 502  # update_engine: error 2502, next check in 45 min
    (row,) = log_rows(db)
    assert row["http_status"] is None and "Connect call failed" in str(row["error"])


def test_upstream_down_with_eager_connections_drops_the_machine_unlogged(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with proxy_for(CLOSED, db) as url:  # mitmproxy's default connection_strategy=eager
        result = check(url)
    assert result.status is None  # update_engine: error 2000, the check retried 3 times
    assert log_rows(db) == []  # no HTTP flow ever existed: hence lazy is recommended


def test_upstream_down_with_fallback_noupdate_answers_noupdate_and_logs_why(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with proxy_for(CLOSED, db, "--set", "omaha_fallback=noupdate") as url:  # sets lazy itself
        result = check(url)
    assert result.status == 200 and update_engine_verdict(result.body).kind == "noupdate"
    (row,) = log_rows(db)
    assert row["action"] == "replayed"
    assert "fallback: upstream unreachable" in str(row["reason"])


def test_upstream_down_with_a_fallback_recording_replays_the_recorded_offer(tmp_path: Path) -> None:
    db, rec = tmp_path / "omaha.db", tmp_path / "offer.json"
    builder = RecordingBuilder(source="test", created="2026-11-27T00:00:00Z")
    builder.add(REQUEST, OFFER)
    dump(builder.recording(), rec)
    with proxy_for(CLOSED, db, "--set", f"omaha_fallback={rec}") as url:
        result = check(url)
    verdict = update_engine_verdict(result.body)
    assert result.status == 200 and verdict.kind == "update" and verdict.version == "4081.2.0"
    (row,) = log_rows(db)
    assert row["action"] == "replayed" and "fallback" in str(row["reason"])


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_500_and_503_pass_untouched_even_with_fallback(tmp_path: Path, status: int) -> None:
    db = tmp_path / "omaha.db"
    with (
        FaultyUpstream(f"status:{status}") as up,
        proxy_for(up.url, db, "--set", "omaha_fallback=noupdate") as url,
    ):
        result = check(url)
    # update_engine: error 2000+status and exponential backoff (the server asked for it).
    assert (result.status, result.body) == (status, f"upstream says {status}\n".encode())
    (row,) = log_rows(db)
    assert row["http_status"] == status and row["action"] == "forwarded"


def test_upstream_502_with_fallback_answers_noupdate_and_keeps_the_upstreams_answer(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with FaultyUpstream("status:502") as up, proxy_for(up.url, db, "--set", "omaha_fallback=noupdate") as url:
        result = check(url)
    assert result.status == 200 and update_engine_verdict(result.body).kind == "noupdate"
    (row,) = log_rows(db)
    assert "answered HTTP 502" in str(row["reason"])
    assert row["upstream_response_xml"] == "upstream says 502\n"


def test_upstream_garbage_passes_by_default_and_is_replaced_with_fallback(tmp_path: Path) -> None:
    with FaultyUpstream("garbage-200") as up:
        with proxy_for(up.url, tmp_path / "a.db") as url:
            plain = check(url)
        with proxy_for(up.url, tmp_path / "b.db", "--set", "omaha_fallback=noupdate") as url:
            fallback = check(url)
    # update_engine: a 200 it cannot parse is error 7 (OmahaRequestXMLParseError).
    assert (plain.status, plain.body) == (200, GARBAGE_BODY)
    assert update_engine_verdict(plain.body).kind == "error"
    assert "response: not well-formed" in str(log_rows(tmp_path / "a.db")[0]["error"])
    assert update_engine_verdict(fallback.body).kind == "noupdate"
    assert "garbage" in str(log_rows(tmp_path / "b.db")[0]["reason"])


@pytest.mark.parametrize(
    ("behaviour", "logged"),
    [
        ("reset", "server closed connection"),
        ("close", "server closed connection"),
        ("garbage-http", "Cannot parse HTTP"),
    ],
)
def test_upstream_reset_or_non_http_answer_gives_502_and_is_logged(
    tmp_path: Path, behaviour: str, logged: str
) -> None:
    db = tmp_path / "omaha.db"
    with FaultyUpstream(behaviour) as up, proxy_for(up.url, db, *LAZY) as url:
        result = check(url)
    assert result.status == 502  # mitmproxy's own: update_engine error 2502
    (row,) = log_rows(db)
    assert logged in str(row["error"])


def test_slow_upstream_is_cut_by_tcp_timeout_and_logged(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with FaultyUpstream("slow", delay=6) as up, proxy_for(up.url, db, *LAZY, "--set", "tcp_timeout=1") as url:
        t = time.monotonic()
        result = check(url)
        took = time.monotonic() - t
        time.sleep(0.3)
    # No answer at all (update_engine: error 2000, the check retried 3 times 10 s apart).
    assert result.status is None and took < 5
    (row,) = log_rows(db)
    assert row["http_status"] is None and row["error"]


# ----------------------------------------------------------------------------- the log


def test_kill_9_under_load_keeps_every_answered_exchange_in_a_clean_log(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with (
        FakeUpstream() as up,
        run_mitmdump("--mode", f"reverse:{up.url}", "--set", f"omaha_db={db}", *LAZY) as proxy,
    ):

        def client(worker: int) -> None:
            for n in range(10_000):
                if stop.is_set():
                    return
                machine = f"{worker:04x}{n:028x}"
                result = check(proxy.url, REQUEST.replace(MACHINE, machine.encode()), timeout=5)
                if result.status == 200:
                    with lock:
                        answered.append(machine)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client, w) for w in range(6)]
            deadline = time.monotonic() + 10
            while len(answered) < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            writers = children(proxy.proc.pid)
            os.kill(proxy.proc.pid, signal.SIGKILL)
            proxy.proc.wait(5)
            stop.set()
            for f in futures:
                f.result()
            assert writers, "the proxy had no log writer process"
            for pid in writers:  # it outlives the proxy: it commits what it was sent, then exits
                assert wait_gone(pid, 15), f"log writer {pid} still running"
    assert len(answered) >= 100
    with sqlite3.connect(db) as conn:  # the WAL is recovered on open
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = {row[0] for row in conn.execute("SELECT machine_id FROM exchanges")}
    lost = set(answered) - logged
    assert not lost, (
        f"{len(lost)} of {len(answered)} answered exchanges are not in the log after kill -9: "
        "an exchange must reach the log writer before its answer leaves the proxy, and the "
        "writer must commit what it was sent when the proxy dies"
    )


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _read_only_dir(path: Path) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    # root ignores permissions: a read-only tmpfs instead (skipped where mounting is not allowed)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("cannot make a read-only directory as root here (mount not allowed)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_log_stops_the_proxy_at_start_with_a_clear_error(tmp_path: Path) -> None:
    with contextlib.contextmanager(_read_only_dir)(tmp_path / "ro") as ro, FakeUpstream() as up:
        try:
            with run_mitmdump("--mode", f"reverse:{up.url}", "--set", f"omaha_db={ro}/omaha.db") as proxy:
                assert proxy.proc.wait(10) != 0  # mitmdump: "Error logged during startup, exiting..."
                proxy.wait_for("exiting", 3)
                output = proxy.output
        except RuntimeError as e:  # exited before it even listened
            output = str(e)
    assert "cannot open the Omaha log" in output
    assert "exiting" in output


@pytest.mark.parametrize("hold", [False, True])
def test_disk_full_log_stops_the_proxy_loudly_and_keeps_what_was_written(tmp_path: Path, hold: bool) -> None:
    db = tmp_path / "omaha.db"

    def small_disk() -> None:  # files the proxy writes may not grow past 400 kB (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    with FakeUpstream() as up, run_mitmdump("--mode", f"reverse:{up.url}", "--set", f"omaha_db={db}",
                                            "--set", f"omaha_log_hold={str(hold).lower()}",
                                            preexec_fn=small_disk) as proxy:  # fmt: skip
        answered = 0
        for n in range(300):
            if check(proxy.url, REQUEST.replace(MACHINE, f"{n:032x}".encode()), timeout=5).status != 200:
                break
            answered += 1
        proxy.proc.wait(10)
        proxy.wait_for("shutting down", 3)
        output = proxy.output
    assert 0 < answered < 300
    assert re.search(r"cannot (write|commit) to the Omaha log .*: shutting down", output)
    # The writer says how many exchanges each failure cost; with omaha_log_hold none of those
    # was answered (the last answered one may be the check that found the proxy going down).
    lost = sum(int(n) for n in re.findall(r"(\d+) exchange(?:\(s\))? not logged", output))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = conn.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0]
    assert lost >= 1
    if hold:
        assert logged >= answered - 1
    else:  # answered before the writer failed: the ones lost are the ones it reported
        assert logged + lost >= answered - 1
