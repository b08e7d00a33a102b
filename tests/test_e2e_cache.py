"""End to end: ten simulated machines update through a real mitmdump with the payload cache on."""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from benchmarks.bench_cache_memory import settled_stats
from omaha_proxy.client.simulator import simulate
from omaha_proxy.payloads.bundle import export_bundle, load_bundle, offer_from_log
from omaha_proxy.protocol.codes import ErrorCode, ErrorFlag
from omaha_proxy.servers.bundle import BundleServer
from omaha_proxy.servers.serve_package import PackageServer, load_packages
from omaha_proxy.store.store import Store
from tests.support.counting_upstream import CountingUpstream
from tests.support.mitmdump_run import Mitmdump, run_mitmdump

pytestmark = pytest.mark.e2e

VERSION = "4152.2.0"
MAIN = "flatcar_production_update.gz"
OEM = "oem-qemu.gz"


def upstream_for(src: Path, *, corrupt: bool = False) -> CountingUpstream:
    """serve-package's Omaha handler in front of a GET-counting file server."""
    (src / MAIN).write_bytes(os.urandom(2 << 20))
    (src / OEM).write_bytes(os.urandom(64 << 10))
    handler = PackageServer(VERSION, load_packages(src / MAIN, [(OEM, src / OEM)]))
    files = {MAIN: src / MAIN, OEM: src / OEM}
    if corrupt:  # offered with the real hashes, served with one byte changed
        bad = bytearray((src / MAIN).read_bytes())
        bad[-1] ^= 0xFF
        (src / "bad.gz").write_bytes(bytes(bad))
        files[MAIN] = src / "bad.gz"
    return CountingUpstream(files, handler=handler, delay=0.2)


def cached_proxy(up: CountingUpstream, tmp_path: Path, *extra: str) -> AbstractContextManager[Mitmdump]:
    """A real mitmdump in reverse mode in front of ``up`` with the cache on."""
    return run_mitmdump(
        "--mode", f"reverse:{up.url}", "--set", f"omaha_cache={tmp_path / 'cache'}",
        "--set", "omaha_cache_listen=127.0.0.1:0", *extra,
    )  # fmt: skip


def test_ten_machines_update_through_the_cache_and_the_upstream_serves_each_package_once(tmp_path):
    with (
        upstream_for(tmp_path) as up,
        cached_proxy(up, tmp_path, "--set", f"omaha_db={tmp_path / 'omaha.db'}") as md,
    ):  # fmt: skip
        report = simulate(md.url + "/v1/update/", 10, concurrency=10, cycles=3, timeout=60)
        assert report.summary() == {"updated": 10}, md.output
        assert {m.version for m in report.machines} == {VERSION}
        assert up.gets == {MAIN: 1, OEM: 1}
        downloads = [s for m in report.machines for s in m.steps if s.kind == "download"]
        assert len(downloads) == 20 and all("/omaha-proxy/cache/" in s.detail for s in downloads)
        # size + sha256 as update_engine checks them, hashes as ue-rs checks them
        assert all(s.outcome.startswith("ok") for s in downloads)
        stats = settled_stats(tmp_path / "cache", 10 * ((2 << 20) + (64 << 10)))
    assert stats.hits + stats.misses == 20
    assert stats.bytes_fetched == (2 << 20) + (64 << 10)
    assert stats.bytes_served == 10 * stats.bytes_fetched
    with Store(tmp_path / "omaha.db") as store:
        cached = [r for r in store.recent(limit=500) if r["action"] == "cached"]
        assert len(cached) == 10 and all("payloads via cache: 4152.2.0" in r["reason"] for r in cached)


def test_a_corrupt_upstream_payload_is_never_served_and_machines_get_a_transfer_error(tmp_path):
    with (
        upstream_for(tmp_path, corrupt=True) as up,
        cached_proxy(up, tmp_path) as md,
    ):  # fmt: skip
        report = simulate(md.url + "/v1/update/", 3, concurrency=3, cycles=1, timeout=30)
        assert report.summary() == {"failed": 3}
        expected = int(ErrorCode.DOWNLOAD_TRANSFER_ERROR) | int(ErrorFlag.TEST_OMAHA_URL)
        assert {m.error_codes for m in report.machines} == {(expected,)}
        assert md.wait_for("discarded download of flatcar_production_update.gz")
        assert "sha256 (postinstall, base64)" in md.output
    oem_sha256 = hashlib.sha256((tmp_path / OEM).read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "cache" / "files").iterdir()] == [oem_sha256]  # the good one
    assert list((tmp_path / "cache").glob("*.partial")) == []


def test_a_bundle_exported_from_the_proxy_log_updates_a_machine_with_the_upstream_gone(tmp_path):
    with (
        upstream_for(tmp_path) as up,
        cached_proxy(up, tmp_path, "--set", f"omaha_db={tmp_path / 'omaha.db'}") as md,
    ):  # fmt: skip
        assert simulate(md.url + "/v1/update/", 1, cycles=1, timeout=30).summary() == {"waiting-reboot": 1}
        # The log keeps the upstream's own offer beside the rewritten one: export from it.
        found = offer_from_log(tmp_path / "omaha.db", VERSION, board="amd64-usr")
        assert up.codebase.encode() in found.xml
        export_bundle(found, tmp_path / "release.tar", source="log")
    with BundleServer(load_bundle(tmp_path / "release.tar", extract_to=tmp_path / "site")) as site:
        report = simulate(site.omaha_url, 2, cycles=3, timeout=30)
    assert report.summary() == {"updated": 2}
