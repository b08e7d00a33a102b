"""The payload cache: one verified download per package, shared by every machine."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from omaha_proxy.payloads.cache import PayloadCache, offer_key, package_key, parse_size, read_stats
from omaha_proxy.protocol.errors import PayloadError
from omaha_proxy.servers.cache_files import CacheServer, cache_codebase
from tests.support.counting_upstream import CountingUpstream
from tests.support.mitm_logging import no_stale_mitmproxy_handlers  # noqa: F401
from tests.support.payload_files import expected_for, write_payload

MAIN = "flatcar_production_update.gz"
OEM = "oem-qemu.gz"


@pytest.fixture
def release(tmp_path):
    """Two package files (main payload + extension) and their offer values."""
    src = tmp_path / "upstream"
    src.mkdir()
    main = write_payload(src / MAIN, 300_000, seed=1)
    oem = write_payload(src / OEM, 50_000, seed=2)
    files = {MAIN: src / MAIN, OEM: src / OEM}
    expected = [expected_for(main, MAIN), expected_for(oem, OEM, main=False)]
    return files, expected, {MAIN: main, OEM: oem}


def contents(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_parse_size_accepts_units_and_names_valid_forms_when_wrong():
    assert parse_size("20G") == 20 << 30
    assert parse_size("1.5MiB") == 3 << 19
    assert parse_size("4096") == 4096
    assert parse_size("10kb") == 10 << 10
    for bad in ("", "lots", "-1G", "0", "5X"):
        with pytest.raises(ValueError, match=r"e\.g\. 20G|at least"):
            parse_size(bad)


def test_a_hostile_hash_never_becomes_a_path(tmp_path):
    from omaha_proxy.payloads.verify import Expected

    key = package_key(Expected("x.gz", size=5, sha256_hex="../../../escape"), "1")
    assert key.startswith("id-") and "/" not in key


def test_keys_are_content_addressed_and_offers_stable(release):
    _, expected, _ = release
    assert package_key(expected[0], "1.0") == package_key(expected[0], "2.0") == expected[0].sha256_hex
    assert offer_key("1", ["http://a/"], expected) == offer_key("1", ["http://a/"], expected)
    assert offer_key("1", ["http://a/"], expected) != offer_key("2", ["http://a/"], expected)


def test_concurrent_requests_share_one_download(tmp_path, release):
    files, expected, data = release
    with CountingUpstream(files, delay=0.4) as up, PayloadCache(tmp_path / "cache", 10 << 20) as cache:
        offer = cache.register_offer("4152.2.0", [up.codebase], expected)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: cache.open_package(offer, MAIN), range(8)))
        assert up.gets == {MAIN: 1}
        assert {r.path.read_bytes() == data[MAIN] for r in results} == {True}
        assert not any(r.hit for r in results)
        assert cache.open_package(offer, MAIN).hit
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.bytes_fetched) == (1, 8, len(data[MAIN]))


def test_prefetch_fetches_every_package_of_an_offer_once(tmp_path, release):
    files, expected, _data = release
    with CountingUpstream(files) as up, PayloadCache(tmp_path / "cache", 10 << 20) as cache:
        offer = cache.register_offer("4152.2.0", [up.codebase], expected)
        for f in cache.prefetch(offer):
            f.result(timeout=10)
        cache.prefetch(offer)
        assert cache.open_package(offer, OEM).hit
        assert up.gets == {MAIN: 1, OEM: 1}


def test_a_corrupt_upstream_payload_is_never_stored_or_served(tmp_path, release, caplog):
    files, expected, data = release
    bad = tmp_path / "bad.gz"
    bad.write_bytes(data[MAIN][:-1] + b"X")
    with CountingUpstream({**files, MAIN: bad}) as up, PayloadCache(tmp_path / "cache", 10 << 20) as cache:
        offer = cache.register_offer("4152.2.0", [up.codebase], expected)
        with pytest.raises(PayloadError, match="sha256"):
            cache.open_package(offer, MAIN)
        assert contents(cache.files) == []
        assert [p for p in contents(cache.dir) if p.endswith(".partial")] == []
        assert "discarded download of flatcar_production_update.gz" in caplog.text
        assert cache.stats().failures == 1
        up.replace(MAIN, files[MAIN])  # the upstream heals, but the failure is remembered a while
        with pytest.raises(PayloadError, match="fetching again after 60 s"):
            cache.open_package(offer, MAIN)
        assert up.gets[MAIN] == 1
        cache.retry_after = 0
        assert cache.open_package(offer, MAIN).path.read_bytes() == data[MAIN]
        assert up.gets[MAIN] == 2


def test_a_truncated_download_fails_on_size(tmp_path, release):
    _files, expected, data = release
    short = tmp_path / "short.gz"
    short.write_bytes(data[MAIN][:1000])
    with CountingUpstream({MAIN: short}) as up, PayloadCache(tmp_path / "cache", 10 << 20) as cache:
        offer = cache.register_offer("v", [up.codebase], expected[:1])
        with pytest.raises(PayloadError, match="size: got 1000 bytes"):
            cache.open_package(offer, MAIN)


def test_the_next_codebase_is_tried_when_the_first_fails(tmp_path, release):
    files, expected, data = release
    with (
        CountingUpstream({}) as empty,
        CountingUpstream(files) as good,
        PayloadCache(tmp_path / "c", 1 << 30) as cache,
    ):
        offer = cache.register_offer("v", [empty.codebase, good.codebase], expected)
        assert cache.open_package(offer, OEM).path.read_bytes() == data[OEM]
        assert cache.stats().failures == 1 and empty.gets == {OEM: 1}


def test_unknown_offers_and_names_are_none(tmp_path, release):
    _, expected, _ = release
    with PayloadCache(tmp_path / "c", 1 << 30) as cache:
        offer = cache.register_offer("v", ["http://127.0.0.1:1/"], expected)
        assert cache.open_package("nope", MAIN) is None
        assert cache.open_package(offer, "other.gz") is None


def test_least_recently_used_packages_are_evicted_beyond_the_size_limit(tmp_path):
    src = tmp_path / "up"
    src.mkdir()
    names = ["a.gz", "b.gz", "c.gz"]
    data = {n: write_payload(src / n, 100_000, seed=i) for i, n in enumerate(names)}
    expected = [expected_for(data[n], n, main=False) for n in names]
    with CountingUpstream({n: src / n for n in names}) as up, PayloadCache(tmp_path / "c", 250_000) as cache:
        offer = cache.register_offer("v", [up.codebase], expected)
        cache.open_package(offer, "a.gz")
        time.sleep(0.01)
        cache.open_package(offer, "b.gz")
        time.sleep(0.01)
        cache.open_package(offer, "a.gz")  # a is now more recent than b
        time.sleep(0.01)
        cache.open_package(offer, "c.gz")
        present = {p.name for p in cache.stats().packages if p.present}
        assert present == {"a.gz", "c.gz"}
        assert contents(cache.files) == sorted(e.sha256_hex for e in expected if e.name != "b.gz")
        assert cache.stats().bytes_stored == 200_000
        assert not cache.open_package(offer, "b.gz").hit  # fetched again
        assert up.gets == {"a.gz": 1, "b.gz": 2, "c.gz": 1}


def test_the_cache_survives_a_restart_and_refuses_a_second_process(tmp_path, release):
    files, expected, _data = release
    with CountingUpstream(files) as up:
        with PayloadCache(tmp_path / "c", 1 << 30) as cache:
            offer = cache.register_offer("v", [up.codebase], expected)
            cache.open_package(offer, MAIN)
            with pytest.raises(PayloadError, match="in use by another"):
                PayloadCache(tmp_path / "c", 1 << 30)
        with PayloadCache(tmp_path / "c", 1 << 30) as cache:
            assert cache.open_package(offer, MAIN).hit
            cache.open_package(offer, OEM)
        assert up.gets == {MAIN: 1, OEM: 1}
        (tmp_path / "c" / "files" / expected[1].sha256_hex).write_bytes(b"damaged on disk")
        (tmp_path / "c" / "files" / "stray").write_bytes(b"?")
        with PayloadCache(tmp_path / "c", 1 << 30) as cache:
            assert sorted(p.name for p in cache.files.iterdir()) == [expected[0].sha256_hex]
            assert not cache.open_package(offer, OEM).hit
        assert up.gets == {MAIN: 1, OEM: 2}
    stats = read_stats(tmp_path / "c")
    assert stats.hits == 1 and stats.misses == 3
    with pytest.raises(PayloadError, match="not a payload cache"):
        read_stats(tmp_path)


_KILLED_CHILD = """
import sys
from omaha_proxy.payloads.cache import PayloadCache
from omaha_proxy.payloads.verify import Expected
cache = PayloadCache(sys.argv[1], 1 << 30)
offer = cache.register_offer("v", [sys.argv[2]], [Expected("big.gz", size=int(sys.argv[3]))])
cache.open_package(offer, "big.gz")
"""


def test_a_killed_download_leaves_no_partial_file_in_the_cache(tmp_path):
    size = 4 << 20
    release = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def stalling_upstream() -> None:  # sends half the payload, then hangs
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * (size // 2))
            release.wait(20)

    threading.Thread(target=stalling_upstream, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/p/"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(tmp_path / "c"), url, str(size)])
    try:
        deadline = time.monotonic() + 20
        partial = []
        while time.monotonic() < deadline and not partial:
            partial = [p for p in (tmp_path / "c").glob("*.partial") if p.stat().st_size > 0]
            time.sleep(0.05)
        assert partial, "the child never started downloading"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        release.set()
        listener.close()
        if child.poll() is None:
            child.kill()
    with PayloadCache(tmp_path / "c", 1 << 30) as cache:
        assert list(cache.dir.glob("*.partial")) == []
        assert contents(cache.files) == []
        assert not any(p.present for p in cache.stats().packages)


def test_the_cache_server_streams_ranges_and_counts_bytes_served(tmp_path, release):
    files, expected, data = release
    with (
        CountingUpstream(files) as up,
        PayloadCache(tmp_path / "c", 1 << 30) as cache,
        CacheServer(cache) as server,
    ):
        offer = cache.register_offer("v", [up.codebase], expected)
        base = cache_codebase(server.url, offer)
        assert base.endswith(f"/omaha-proxy/cache/{offer}/")
        with urllib.request.urlopen(base + MAIN, timeout=10) as r:
            assert r.read() == data[MAIN]
        req = urllib.request.Request(base + MAIN, headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 206 and r.read() == data[MAIN][100:200]
        for missing in (f"{base}other.gz", f"{server.url}/omaha-proxy/cache/unknown/{MAIN}"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(missing, timeout=10)
            assert info.value.code == 404
        deadline = time.monotonic() + 5  # the access hook runs after the body is sent
        while cache.stats().bytes_served < len(data[MAIN]) + 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        row = next(p for p in cache.stats().packages if p.name == MAIN)
        assert (row.bytes_served, row.bytes_fetched, row.bytes_saved) == (
            len(data[MAIN]) + 100,
            len(data[MAIN]),
            100,
        )
        assert up.gets == {MAIN: 1}


def test_a_failed_verification_gets_404_from_the_cache_server(tmp_path, release):
    _files, expected, _data = release
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not the payload")
    with (
        CountingUpstream({MAIN: bad}) as up,
        PayloadCache(tmp_path / "c", 1 << 30) as cache,
        CacheServer(cache) as server,
    ):
        offer = cache.register_offer("v", [up.codebase], expected)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(cache_codebase(server.url, offer) + MAIN, timeout=10)
        assert info.value.code == 404


def test_the_cache_command_prints_per_package_hits_and_bytes_saved(tmp_path, release, capsys):
    from omaha_proxy.cli import main

    files, expected, data = release
    with CountingUpstream(files) as up, PayloadCache(tmp_path / "c", 1 << 30) as cache:
        offer = cache.register_offer("4152.2.0", [up.codebase], expected)
        cache.open_package(offer, MAIN)
        cache.open_package(offer, MAIN)
        cache.record_served(offer, MAIN, 3 * len(data[MAIN]))
        assert main(["cache", "--dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(MAIN))
    assert line.split()[1:4] == ["4152.2.0", "293.0", "KiB"]
    assert "585.9 KiB" in line  # saved: served three times, fetched once
    assert "1 hits, 1 misses" in out
    assert main(["cache", "--dir", str(tmp_path / "c"), "--json"]) == 0
    assert '"bytes_saved": 600000' in capsys.readouterr().out
    assert main(["cache", "--dir", str(tmp_path / "nothing")]) == 1


class CuttingUpstream:
    """Sends half of ``data`` and drops the connection, then answers the retry: with 206 from
    the Range offset (``ranges=True``) or with the whole file again (``ranges=False``)."""

    def __init__(self, data: bytes, *, ranges: bool) -> None:
        self.data, self.ranges = data, ranges
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/p/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for attempt in range(2):
            conn, _ = self.listener.accept()
            with conn:
                head = conn.recv(65536).decode()
                self.requests.append(head)
                match = re.search(r"Range: bytes=(\d+)-", head)
                size = len(self.data)
                if attempt == 0:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + self.data[: size // 2]
                    )
                elif match and self.ranges:
                    first = int(match.group(1))
                    conn.sendall(
                        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
                        % (first, size - 1, size, size - first)
                        + self.data[first:]
                    )
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + self.data)
        self.listener.close()


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed-with-range", "upstream-ignores-range"])
def test_a_download_cut_mid_body_is_resumed(tmp_path, release, ranges):
    _files, expected, data = release
    up = CuttingUpstream(data[MAIN], ranges=ranges)
    with PayloadCache(tmp_path / "c", 1 << 30) as cache:
        offer = cache.register_offer("v", [up.url], expected[:1])
        assert cache.open_package(offer, MAIN).path.read_bytes() == data[MAIN]
        fetched = cache.stats().bytes_fetched
    assert len(up.requests) == 2
    assert f"Range: bytes={len(data[MAIN]) // 2}-" in up.requests[1]
    assert fetched == (len(data[MAIN]) * 3 // 2 if not ranges else len(data[MAIN]))
