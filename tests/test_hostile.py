"""Hostile input: the codec refuses it safely, and a real mitmdump stays up, forwards it
untouched and logs it (raw bytes + error) without losing anything else.

Documented behaviour (README, hardening): a POST whose body is or tries to be an Omaha request
is logged, raw bytes and parse error, and forwarded byte for byte; anything else passes
untouched and unlogged. The parser never expands entities, never loads a DTD and never
touches the network; bodies over ``omaha_max_body`` are streamed, never buffered.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from mitmproxy.test import tflow

from omaha_proxy.mitm.common import is_omaha_request
from omaha_proxy.protocol.decode import parse_request
from omaha_proxy.protocol.errors import CodecError
from tests.support.hostile import REQUEST, Case, cases, hostile_bytes
from tests.support.mitmdump_run import Mitmdump, run_mitmdump
from tests.support.upstream import MALFORMED_ANSWER, NOUPDATE, FakeUpstream

# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize("case", cases(9), ids=lambda c: c.name)
def test_codec_refuses_each_hostile_body_fast_with_a_codec_error(case: Case) -> None:
    t = time.perf_counter()
    if case.error is None:
        assert parse_request(case.body).apps
    else:
        with pytest.raises(CodecError) as err:
            parse_request(case.body)
        assert str(err.value).startswith(case.error)
    assert time.perf_counter() - t < 0.5  # no expansion, no network, no deep recursion


def test_codec_refuses_a_body_over_its_size_limit_before_parsing() -> None:
    with pytest.raises(CodecError, match="exceeds the limit"):
        parse_request(REQUEST + b" " * (1 << 20))


# ----------------------------------------------------------------------------- e2e


class Listener:
    """A socket on 127.0.0.1 that counts connection attempts (external entities must not come)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@dataclass
class Setup:
    proxy: Mitmdump
    upstream: FakeUpstream
    db: Path
    listener: Listener


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    db = tmp_path_factory.mktemp("hostile") / "omaha.db"
    listener = Listener()
    with (
        FakeUpstream() as up,
        run_mitmdump("--mode", f"reverse:{up.url}", "--set", f"omaha_db={db}") as proxy,
    ):
        yield Setup(proxy, up, db, listener)
    listener.close()


def raw_exchange(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection; return everything the proxy answers until it closes
    or one full Content-Length response arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                    None,
                )  # fmt: skip
                if length is not None and len(body) >= length:
                    break
        return data


def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {"Content-Type": "text/xml"}).items())
    answer = raw_exchange(port, head.encode() + b"\r\n" + body)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# The proxy answers before its log writer process commits (omaha_log_hold is off), so reads
# right after an answer wait, bounded, for the rows they expect.
WAIT = 5.0


def logged_rows(db: Path, body: bytes, at_least: int = 1) -> list[sqlite3.Row]:
    """The exchanges logged with this request body (waits until ``at_least`` are there)."""
    deadline = time.monotonic() + WAIT
    while True:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT * FROM exchanges WHERE CAST(request_xml AS BLOB) = ?", [body]
            ).fetchall()
        if len(rows) >= at_least or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def count_rows(db: Path, at_least: int = 0) -> int:
    """Exchanges in the log (waits until there are ``at_least``)."""
    deadline = time.monotonic() + WAIT
    while True:
        with sqlite3.connect(db) as conn:
            count = int(conn.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0])
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def settled_count(db: Path) -> int:
    """Exchanges in the log once the writer has caught up (the count held still for 0.1 s)."""
    count, still_since, deadline = count_rows(db), time.monotonic(), time.monotonic() + WAIT
    while time.monotonic() - still_since < 0.1 and time.monotonic() < deadline:
        time.sleep(0.025)
        now = count_rows(db)
        if now != count:
            count, still_since = now, time.monotonic()
    return count


def still_serves(setup: Setup) -> None:
    """The proxy answers a normal update check (it stayed up and is not wedged)."""
    assert http(setup.proxy.port, "POST", "/v1/update/", REQUEST)[0] == 200


def treated_as_omaha(body: bytes) -> bool:
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.content = body
    return is_omaha_request(flow)


@pytest.mark.e2e
@pytest.mark.parametrize("name", [c.name for c in cases(0)])
def test_proxy_forwards_hostile_body_untouched_and_logs_it_raw_with_its_error(
    setup: Setup, name: str
) -> None:
    case = next(c for c in cases(setup.listener.port) if c.name == name)
    before, rows_before = len(setup.upstream.received), settled_count(setup.db)
    status, answer = http(setup.proxy.port, "POST", "/v1/update/", case.body)

    assert status == 200
    assert setup.upstream.received[before].body == case.body  # byte for byte
    assert answer == (NOUPDATE if case.error is None else MALFORMED_ANSWER)  # the upstream's, untouched
    rows = logged_rows(setup.db, case.body, at_least=int(case.omaha))
    assert treated_as_omaha(case.body) == case.omaha
    if case.omaha:
        assert len(rows) == 1
        assert (rows[0]["error"] is None) == (case.error is None)
        if case.error:
            assert case.error in rows[0]["error"]
    else:
        assert rows == []
    still_serves(setup)
    assert setup.proxy.proc.poll() is None
    # Nothing else lost: the hostile exchange (if Omaha) and the normal check after it, no more, no less.
    assert count_rows(setup.db, at_least=rows_before + case.omaha + 1) == rows_before + case.omaha + 1


@pytest.mark.e2e
def test_nothing_connects_for_external_entities_or_dtds(setup: Setup) -> None:
    for case in cases(setup.listener.port):
        http(setup.proxy.port, "POST", "/v1/update/", case.body)
    time.sleep(0.3)
    assert setup.listener.connections == 0
    settled_count(setup.db)
    with sqlite3.connect(setup.db) as conn:
        bodies = [row[0] for row in conn.execute("SELECT response_xml FROM exchanges")]
    assert not any(b and b"root:" in (b if isinstance(b, bytes) else b.encode()) for b in bodies)


@pytest.mark.e2e
def test_empty_body_passes_untouched_and_unlogged(setup: Setup) -> None:
    before = settled_count(setup.db)
    assert http(setup.proxy.port, "POST", "/v1/update/", b"")[0] == 200
    assert setup.upstream.received[-1].body == b""
    assert settled_count(setup.db) == before


@pytest.mark.e2e
def test_wrong_method_and_non_omaha_traffic_pass_untouched(setup: Setup) -> None:
    marker = REQUEST.replace(b'machinealias=""', b'machinealias="put-method"')
    # Forwarded: the 501 is the upstream's (it has no PUT handler), not the proxy's.
    assert http(setup.proxy.port, "PUT", "/v1/update/", marker)[0] == 501
    assert logged_rows(setup.db, marker, at_least=0) == []
    status, body = http(setup.proxy.port, "GET", "/healthz", headers={})
    assert (status, body) == (200, b"ok\n")
    json_body = b'{"request": "<request protocol=\\"3.0\\">"}'
    assert http(setup.proxy.port, "POST", "/api", json_body, {"Content-Type": "application/json"})[0] == 200
    assert setup.upstream.received[-1].body == json_body
    settled_count(setup.db)
    assert logged_rows(setup.db, marker, at_least=0) == logged_rows(setup.db, json_body, at_least=0) == []


@pytest.mark.e2e
def test_omaha_body_with_a_wrong_content_type_is_still_logged(setup: Setup) -> None:
    body = REQUEST.replace(b'machinealias=""', b'machinealias="json-typed"')
    assert http(setup.proxy.port, "POST", "/v1/update/", body, {"Content-Type": "application/json"})[0] == 200
    rows = logged_rows(setup.db, body)
    assert len(rows) == 1 and rows[0]["error"] is None and rows[0]["kind"] == "updatecheck"


@pytest.mark.e2e
def test_huge_headers_are_refused_and_the_proxy_stays_up(setup: Setup) -> None:
    answer = raw_exchange(
        setup.proxy.port,
        b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (1 << 20)
        + b"\r\nContent-Length: 0\r\n\r\n",
    )
    # mitmproxy refuses header blocks over its limit (an error response or a closed connection).
    assert answer == b"" or answer.split()[1] in (b"400", b"413", b"431", b"502")
    still_serves(setup)


@pytest.mark.e2e
def test_a_slow_client_does_not_hold_up_other_machines(setup: Setup) -> None:
    raw = (
        f"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {len(REQUEST)}\r\n\r\n"
    ).encode() + REQUEST
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=10) as slow:
        for i in range(0, 40):  # a trickle: 40 bytes over 2 s, then the rest
            slow.sendall(raw[i : i + 1])
            if i % 10 == 0:
                t = time.perf_counter()
                still_serves(setup)
                assert time.perf_counter() - t < 2.0
            time.sleep(0.05)
        slow.sendall(raw[40:])
        assert slow.recv(12).startswith(b"HTTP/1.1 200")


@pytest.mark.e2e
def test_many_half_open_requests_do_not_starve_the_proxy(setup: Setup) -> None:
    """Slowloris: 200 connections each stuck halfway through their headers."""
    stuck = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=5)
            s.sendall(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Le")
            stuck.append(s)
        t = time.perf_counter()
        for _ in range(5):
            still_serves(setup)
        assert time.perf_counter() - t < 5.0
    finally:
        for s in stuck:
            s.close()
    still_serves(setup)


@pytest.mark.e2e
def test_100mb_body_is_streamed_not_buffered_and_its_head_logged(setup: Setup) -> None:
    size = 100 << 20
    head = REQUEST.replace(b"</request>", b"")
    body = head + b"<!--" + b"x" * (size - len(head) - 20) + b"-->\n</request>\n"
    raw = (
        f"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    before, sent = len(setup.upstream.received), len(body)
    with socket.create_connection(("127.0.0.1", setup.proxy.port), timeout=30) as s:
        s.sendall(raw)
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            s.sendall(view[i : i + (1 << 20)])
        assert s.recv(12).startswith(b"HTTP/1.1 200")
    assert len(setup.upstream.received[before].body) == len(body)  # forwarded whole
    assert setup.upstream.received[before].body[:1000] == body[:1000]
    del body, view
    with open(f"/proc/{setup.proxy.proc.pid}/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    assert peak_kib < 150 * 1024  # ~90 MiB idle: holding the 100 MB body would pass 185 MiB
    settled_count(setup.db)
    with sqlite3.connect(setup.db) as conn:
        row = conn.execute(
            "SELECT length(CAST(request_xml AS BLOB)), error, reason FROM exchanges ORDER BY id DESC LIMIT 1"
        ).fetchone()
    # The logger ran on the first omaha_max_body bytes (the default, 1 MiB).
    assert row[0] == 1 << 20
    assert "not well-formed" in row[1]
    assert f"request body of {sent} bytes" in row[2]
    still_serves(setup)


@pytest.mark.e2e
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=hostile_bytes)
def test_fuzzed_bodies_through_the_proxy_are_forwarded_untouched_and_logged_exactly(
    setup: Setup, body: bytes
) -> None:
    """Random bytes and mutated samples, POSTed through the real proxy."""
    before, rows_before = len(setup.upstream.received), settled_count(setup.db)
    status, _ = http(setup.proxy.port, "POST", "/v1/update/", body)
    assert status == 200
    assert setup.upstream.received[before].body == body
    expected = rows_before + treated_as_omaha(body)
    assert count_rows(setup.db, at_least=expected) == expected
    if treated_as_omaha(body):
        assert logged_rows(setup.db, body)  # byte for byte
    assert setup.proxy.proc.poll() is None
