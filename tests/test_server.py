"""OmahaServer: the Omaha endpoint, streaming file routes with Range, and clear 4xx answers."""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omaha_proxy.servers.http import (
    AccessRecord,
    OmahaServer,
    current_http,
    directory_resolver,
    mapping_resolver,
    parse_range,
)
from tests.conftest import REPO, sample

CHECK = "flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml"
PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


def fetch(
    server: OmahaServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.fixture
def seen() -> list[tuple[object, bytes, str, str]]:
    return []


@pytest.fixture
def server(tmp_path: Path, seen: list[tuple[object, bytes, str, str]]) -> Iterator[OmahaServer]:
    (tmp_path / "update.gz").write_bytes(PAYLOAD)
    (tmp_path / ".secret").write_bytes(b"hidden")
    (tmp_path / "empty.bin").write_bytes(b"")

    def handler(request: object, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        seen.append((request, raw, client_ip, current_http().host))
        return 200, {"X-Test": "yes"}, b"<response/>"

    with OmahaServer(handler, files={"/packages/": directory_resolver(tmp_path)}) as srv:
        yield srv


def test_omaha_post_reaches_the_handler_with_the_parsed_request(server, seen) -> None:
    status, headers, body = fetch(server, "POST", "/v1/update/", sample(CHECK), {"Content-Type": "text/xml"})
    assert (status, body) == (200, b"<response/>")
    assert headers["Content-Type"] == "text/xml" and headers["X-Test"] == "yes"
    request, raw, client_ip, host = seen[0]
    assert raw == sample(CHECK) and client_ip == "127.0.0.1"
    assert request.apps[0].version == "4081.2.0"
    assert host == f"{server.host}:{server.port}"


@pytest.mark.parametrize("path", ["/v1/update", "/v1/update/", "/v1/update/secret?x=1"])
def test_omaha_endpoint_accepts_go_omaha_paths(server, path) -> None:
    assert fetch(server, "POST", path, sample(CHECK))[0] == 200


def test_bad_omaha_body_gets_400_with_the_reason(server, seen) -> None:
    status, headers, body = fetch(server, "POST", "/v1/update/", b"<request protocol='3.0'>")
    assert status == 400 and headers["Content-Type"].startswith("text/plain")
    assert body.startswith(b"Bad Omaha request: ") and seen == []
    status, _, body = fetch(server, "POST", "/v1/update/", b"<response/>")
    assert status == 400 and b"<request>" in body


def test_body_over_the_cap_gets_413_without_reading_it(server) -> None:
    # Only the headers are sent: the answer must come without waiting for the gigabyte.
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"limit" in answer and b"Connection: close" in answer


def test_chunked_omaha_post_gets_411(server) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_get_on_the_omaha_endpoint_is_405_with_allow(server) -> None:
    status, headers, _ = fetch(server, "GET", "/v1/update/")
    assert status == 405 and headers["Allow"] == "POST"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "FOO"])
def test_other_methods_are_405_with_allow(server, method) -> None:
    status, headers, _ = fetch(server, method, "/packages/update.gz")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_post_to_a_file_is_405(server) -> None:
    status, headers, _ = fetch(server, "POST", "/packages/update.gz", b"x")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_get_serves_the_whole_file_with_length_and_accept_ranges(server) -> None:
    status, headers, body = fetch(server, "GET", "/packages/update.gz")
    assert status == 200 and body == PAYLOAD
    assert headers["Content-Length"] == str(len(PAYLOAD))
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "application/gzip"
    assert "Last-Modified" in headers


def test_head_sends_headers_only(server) -> None:
    status, headers, body = fetch(server, "HEAD", "/packages/update.gz")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(PAYLOAD))


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=100-199", 100, 199), ("bytes=10000-", 10000, 10239), ("bytes=-40", 10200, 10239),
     ("bytes=10200-99999", 10200, 10239), ("bytes=0-0", 0, 0)],
)  # fmt: skip
def test_range_gets_206_with_content_range(server, header, first, last) -> None:
    status, headers, body = fetch(server, "GET", "/packages/update.gz", headers={"Range": header})
    assert status == 206 and body == PAYLOAD[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(PAYLOAD)}"
    assert headers["Content-Length"] == str(last - first + 1)


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
def test_unsatisfiable_range_gets_416(server, header) -> None:
    status, headers, _ = fetch(server, "GET", "/packages/update.gz", headers={"Range": header})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(PAYLOAD)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=x-"])
def test_unusable_range_is_ignored_and_the_whole_file_sent(server, header) -> None:
    status, _, body = fetch(server, "GET", "/packages/update.gz", headers={"Range": header})
    assert status == 200 and body == PAYLOAD


def test_empty_file_is_served_with_zero_length(server) -> None:
    status, headers, body = fetch(server, "GET", "/packages/empty.bin")
    assert (status, body, headers["Content-Length"]) == (200, b"", "0")


@pytest.mark.parametrize(
    "path", ["/packages/nope.gz", "/packages/.secret", "/packages/../x", "/packages/", "/"]
)
def test_missing_hidden_or_escaping_files_are_404(server, path) -> None:
    assert fetch(server, "GET", path)[0] == 404


def test_mapping_resolver_serves_only_listed_names(tmp_path) -> None:
    f = tmp_path / "payload.bin"
    f.write_bytes(b"abc")
    with OmahaServer(files={"/p/": mapping_resolver({"update.gz": f})}) as srv:
        assert fetch(srv, "GET", "/p/update.gz")[2] == b"abc"
        assert fetch(srv, "GET", "/p/payload.bin")[0] == 404
        # no Omaha handler configured
        assert fetch(srv, "POST", "/v1/update/", sample(CHECK))[0] == 404


def test_longest_route_prefix_wins_and_routes_can_be_added_later(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with OmahaServer(files={"/x/": mapping_resolver({"y/f": a})}) as srv:
        srv.add_route("/x/y/", mapping_resolver({"f": b}))
        assert fetch(srv, "GET", "/x/y/f")[2] == b"B"


def test_each_request_is_reported_once(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    records: list[AccessRecord] = []
    with OmahaServer(files={"/d/": directory_resolver(tmp_path)}, on_access=records.append) as srv:
        fetch(srv, "GET", "/d/f", headers={"Range": "bytes=1-2"})
        fetch(srv, "PUT", "/d/f")
    # Each handler thread reports after its answer left, so the two may arrive in any order.
    assert sorted((r.method, r.path, r.status, r.sent, r.range) for r in records) == [
        ("GET", "/d/f", 206, 2, "bytes=1-2"),
        ("PUT", "/d/f", 405, len(b"Method PUT not allowed here; use GET, HEAD\n"), None),
    ]


def test_parse_range_table() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=0-", 0) is False
    assert parse_range("bytes=10-", 10) is False


def test_server_binds_loopback_on_a_free_port() -> None:
    srv = OmahaServer()
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
        assert srv.omaha_url == f"http://127.0.0.1:{srv.port}/v1/update/"
    finally:
        srv.stop()


_SERVE_SCRIPT = """
import sys
from omaha_proxy.servers.http import OmahaServer, directory_resolver
srv = OmahaServer(files={"/packages/": directory_resolver(sys.argv[1])})
print(srv.port, flush=True)
srv.serve_forever()
"""


def _vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_large_sparse_file_streams_with_flat_server_memory(tmp_path) -> None:
    size = 300 * 1024 * 1024
    with open(tmp_path / "big.gz", "wb") as f:
        f.truncate(size)  # sparse: no disk used
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        port = int(proc.stdout.readline())
        before = _vm_hwm_kib(proc.pid)
        t0 = time.monotonic()
        received = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /packages/big.gz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            head, _, rest = head.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % size in head
            received = len(rest)
            while received < size:
                chunk = s.recv(1 << 20)
                assert chunk, "connection closed early"
                received += len(chunk)
        elapsed = time.monotonic() - t0
        growth_mib = (_vm_hwm_kib(proc.pid) - before) / 1024
        print(f"streamed {size >> 20} MiB in {elapsed:.2f}s; server peak RSS grew {growth_mib:.1f} MiB")
        assert received == size
        assert growth_mib < 16
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_failing_resolver_gets_500_not_a_dropped_connection(tmp_path, caplog) -> None:
    def broken(name: str) -> Path | None:
        raise RuntimeError("resolver bug")

    with OmahaServer(files={"/x/": broken}) as srv:
        status, _, body = fetch(srv, "GET", "/x/anything")
    assert status == 500 and b"Internal error" in body
    assert "resolver bug" in caplog.text


def test_a_client_leaving_mid_download_is_not_an_error(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="omaha_proxy.servers.http")
    with open(tmp_path / "big", "wb") as f:
        f.truncate(64 << 20)
    with OmahaServer(files={"/d/": directory_resolver(tmp_path)}) as srv:
        with socket.create_connection((srv.host, srv.port), timeout=5) as s:
            s.sendall(b"GET /d/big HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(65536)
        time.sleep(0.3)
        status, _, _ = fetch(srv, "HEAD", "/d/big")  # still serving
    assert status == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "went away" in caplog.text
