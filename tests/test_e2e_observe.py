"""End to end: a real ``mitmdump``/``mitmweb -s addons/omaha.py`` in reverse mode in front of a
real local Omaha upstream; update_engine's request flavours go through and land in the log."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from omaha_proxy.store.store import Store
from tests.conftest import sample
from tests.support.mitmdump_run import run_mitmdump
from tests.support.mitmweb_run import run_mitmweb
from tests.support.upstream import MALFORMED_ANSWER, OFFER, FakeUpstream

pytestmark = pytest.mark.e2e

REQ = "flatcar-update_engine-0.4.10__request_{}.RECONSTRUCTED.xml"
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"


def flavour(name: str, machine: str = MACHINE) -> bytes:
    """One of update_engine's request samples, sent as ``machine``."""
    return sample(REQ.format(name)).replace(MACHINE.encode(), machine.encode())


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST like update_engine (one connection per request, text/xml, no User-Agent)."""
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/xml", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for_rows(store: Store, count: int, timeout: float = 5.0) -> bool:
    """True once the log holds ``count`` exchanges (the proxy commits within omaha_commit_ms)."""
    deadline = time.monotonic() + timeout
    while store.count() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return store.count() == count


def test_mitmdump_logs_every_flavour_and_derives_instance_states(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with (
        FakeUpstream() as up,
        run_mitmdump("--mode", f"reverse:{up.url}", "--set", f"omaha_db={db}") as proxy,
    ):
        endpoint = f"{proxy.url}/v1/update/"
        # Machine A: a whole update, from the grant to the reboot into the new version.
        up.offer()
        assert post(endpoint, flavour("01_updatecheck_steady_state"), {"X-Forwarded-For": "6.6.6.6"}) == (
            200,
            OFFER,
        )
        up.offer(False)
        for name in ("06_event_download_started", "07_event_download_finished", "08_event_update_installed",
                     "11_ping_only_waiting_for_reboot", "04_updatecheck_after_reboot_into_new_version"):  # fmt: skip
            assert post(endpoint, flavour(name))[0] == 200
        # Machine B: granted, then the payload hash does not match.
        up.offer()
        post(endpoint, flavour("01_updatecheck_steady_state", "b" * 32))
        up.offer(False)
        post(endpoint, flavour("09_event_error_hash_mismatch_nonprod_server", "b" * 32))
        # Machine C: the other check flavours and a failure event outside any update.
        for name in ("02_updatecheck_interactive", "03_updatecheck_first_boot_no_prefs",
                     "05_updatecheck_rollback_detected", "10_event_error_http_503_nonprod_server"):  # fmt: skip
            post(endpoint, flavour(name, "c" * 32))
        # Machine D: the upstream fails.
        up.answer_next(503, b"Service Unavailable")
        assert post(endpoint, flavour("01_updatecheck_steady_state", "d" * 32))[0] == 503
        # Malformed bodies: logged with their error, forwarded byte for byte.
        broken = flavour("01_updatecheck_steady_state", "e" * 32).replace(
            b'machinealias=""', b'machinealias="a"b"'
        )
        assert post(f"{proxy.url}/some/other/path", broken) == (200, MALFORMED_ANSWER)
        assert up.received[-1].body == broken and up.received[-1].path == "/some/other/path"
        # Not Omaha: passes untouched and unlogged.
        assert post(endpoint, b'{"hello": "json"}', {"X-Forwarded-For": "6.6.6.6"})[0] == 200
        assert up.received[-1].headers["X-Forwarded-For"] == "6.6.6.6"
        with urllib.request.urlopen(f"{proxy.url}/healthz", timeout=10) as resp:
            assert resp.read() == b"ok\n"

        # Nebraska sees the machine's address, never the spoofed one.
        assert up.received[0].headers["X-Forwarded-For"] == "127.0.0.1"
        with Store(db) as store:  # read while the proxy runs (WAL), once the writer committed
            assert wait_for_rows(store, 14)
            fleet = {m["machine_id"]: m for m in store.fleet()}
            history = store.history(MACHINE, 50)
            broken_row = store.recent(1, machine_id=None)[0]
            failed = store.history("d" * 32)[0]
    assert proxy.proc.returncode == 0, proxy.output

    assert {k: v["state_label"] for k, v in fleet.items()} == {
        MACHINE: "Complete", "b" * 32: "Error", "c" * 32: "Undefined", "d" * 32: "Undefined",
    }  # fmt: skip
    assert (
        fleet["b" * 32]["last_error_name"] == "268435466 = PayloadHashMismatch (10) + non-production-server"
    )
    assert fleet["c" * 32]["last_error_name"] == "268437959 = HTTP 503 (2503) + non-production-server"
    assert [h["kind"] for h in reversed(history)] == [
        "updatecheck",
        "event",
        "event",
        "event",
        "ping",
        "updatecheck",
    ]
    assert history[-1]["request_xml"] == flavour("01_updatecheck_steady_state")
    assert history[-1]["response_xml"] == OFFER
    assert all(h["client_ip"] == "127.0.0.1" and h["duration_ms"] > 0 for h in history)
    assert broken_row["request_xml"] == broken and broken_row["error"].startswith("request: not well-formed")
    assert broken_row["path"] == "/some/other/path" and broken_row["response_xml"] == MALFORMED_ANSWER
    assert (failed["http_status"], failed["response_xml"]) == (503, b"Service Unavailable")


def test_mitmweb_shows_the_omaha_view_and_comments(tmp_path: Path) -> None:
    db = tmp_path / "omaha.db"
    with FakeUpstream() as up, run_mitmweb("--mode", f"reverse:{up.url}", "--set", f"omaha_db={db}") as web:
        up.offer()
        assert post(f"{web.url}/v1/update/", flavour("01_updatecheck_steady_state"))[0] == 200
        [flow] = web.api("GET", "/flows")
        assert flow["comment"] == "updatecheck 4081.2.0 stable → ok 4081.2.0"
        response = web.api("GET", f"/flows/{flow['id']}/response/content/omaha.json")
        assert response["view_name"] == "Omaha"
        assert "manifest    version=4081.2.0" in response["text"]
        assert "update_engine 0.4.10 would see: update to 4081.2.0" in response["text"]
        request = web.api("GET", f"/flows/{flow['id']}/request/content/auto.json")
        assert request["view_name"] == "Omaha"  # wins over the XML view in auto mode
        assert f"id={MACHINE}" in request["text"]
        assert "omaha" in json.dumps(web.api("GET", "/state")["contentViews"]).lower()
