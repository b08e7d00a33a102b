"""End to end: a real mitmdump/mitmweb with OmahaControl in front of a real local Omaha server."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from omaha_proxy.client.verdict import Verdict, update_engine_verdict
from omaha_proxy.protocol.decode import encode
from omaha_proxy.protocol.model import Request
from omaha_proxy.servers.http import OmahaServer
from omaha_proxy.store.store import Store
from tests.support.mitmdump_run import run_mitmdump
from tests.support.mitmweb_run import free_port, run_mitmweb
from tests.test_policy import NOUPDATE, check, offer

pytestmark = pytest.mark.e2e


class Upstream:
    """A local Omaha server offering ``self.version`` (None: noupdate) to every check."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.requests = 0
        self.server = OmahaServer(self._handle)

    def _handle(self, request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        self.requests += 1
        body = encode(NOUPDATE if self.version is None else offer(self.version))
        return 200, {"Content-Type": "text/xml"}, body


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    with up.server:
        yield up


def post(proxy_url: str, request: Request) -> tuple[int, bytes]:
    req = urllib.request.Request(
        proxy_url + "/v1/update/", data=encode(request), headers={"Content-Type": "text/xml"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ask(proxy_url: str, request: Request) -> Verdict:
    """What update_engine makes of the proxy's answer to ``request``."""
    status, body = post(proxy_url, request)
    return update_engine_verdict(body, http_status=status)


def proxy_args(upstream_url: str, db: Path, *sets: str) -> list[str]:
    args = [
        "--mode",
        f"reverse:{upstream_url}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"omaha_db={db}",
    ]
    for item in sets:
        args += ["--set", item]
    return args


def logged(db: Path) -> list[tuple[str, str | None]]:
    """(action, reason) of every logged exchange, oldest first."""
    with Store(db) as store:
        return [(row["action"], row["reason"]) for row in reversed(store.recent(100))]


def test_block_answers_noupdate_with_the_upstream_stopped(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with run_mitmdump(*proxy_args(dead, tmp_path / "log.db", "omaha_block=true")) as proxy:
        result = ask(proxy.url, check())
        assert result.kind == "noupdate", result.reason
    action, reason = logged(tmp_path / "log.db")[-1]
    assert action == "blocked" and "update check answered noupdate locally" in reason


def test_pin_withholds_a_newer_upstream_offer(tmp_path, upstream):
    upstream.version = "4152.2.0"
    db = tmp_path / "log.db"
    with run_mitmdump(*proxy_args(upstream.server.url, db, "omaha_pin=4081.2.0")) as proxy:
        assert ask(proxy.url, check("4081.2.0")).kind == "noupdate"
        exact = ask(proxy.url, check("3975.2.0"))  # no seen 4081.2.0 offer yet: withheld as well
        assert exact.kind == "noupdate"
        upstream.version = "4081.2.0"  # exactly the pin passes
        passed = ask(proxy.url, check("3975.2.0"))
        assert (passed.kind, passed.version, passed.disable_payload_backoff) == ("update", "4081.2.0", True)
    with Store(db) as store:
        rewritten = [row for row in store.recent(10) if row["action"] == "rewritten"]
    assert len(rewritten) == 2
    assert b'version="4152.2.0"' in rewritten[0]["upstream_response_xml"]


def test_pin_below_replays_an_offer_seen_in_an_earlier_run(tmp_path, upstream):
    db = tmp_path / "log.db"
    upstream.version = "4081.2.0"
    with run_mitmdump(*proxy_args(upstream.server.url, db)) as proxy:  # no pin: just logged
        assert ask(proxy.url, check("3975.2.0", machine="a" * 32)).version == "4081.2.0"
    upstream.version = "4152.2.0"
    with run_mitmdump(*proxy_args(upstream.server.url, db, "omaha_pin=4081.2.0")) as proxy:
        result = ask(proxy.url, check("3975.2.0"))
        status, body = post(proxy.url, check("3760.2.0", machine="b" * 32))
    assert (result.kind, result.version) == ("update", "4081.2.0")
    assert result.urls == (
        "https://update.release.flatcar-linux.net/amd64-usr/4081.2.0/flatcar_production_update.gz",
    )
    assert result.sha256_b64 == offer("4081.2.0").apps[0].updatecheck.manifest.postinstall.sha256
    assert status == 200 and b'name="oem-qemu.gz"' in body and b"hash_sha256=" in body
    action, reason = logged(db)[-1]
    assert action == "rewritten" and "upgrade 3760.2.0 -> 4081.2.0 with the seen offer" in reason


def test_rollout_grants_two_of_five_machines_per_period(tmp_path, upstream):
    upstream.version = "4152.2.0"
    db = tmp_path / "log.db"
    machines = [f"{i:032x}" for i in range(1, 6)]
    with run_mitmdump(*proxy_args(upstream.server.url, db, "omaha_rollout=max=2/1h")) as proxy:
        first = [ask(proxy.url, check(machine=m)).kind for m in machines]
        second = [ask(proxy.url, check(machine=m)).kind for m in machines]
    assert first == second == ["update", "update", "noupdate", "noupdate", "noupdate"]
    actions = [action for action, _ in logged(db)]
    assert actions.count("held") == 6 and actions.count("forwarded") == 4
    assert all("limit 2 per 1:00:00 reached" in (r or "") for a, r in logged(db) if a == "held")


def test_runtime_block_through_mitmweb_command_and_options(tmp_path, upstream):
    upstream.version = "4152.2.0"
    with run_mitmweb(*proxy_args(upstream.server.url, tmp_path / "log.db")) as web:
        assert ask(web.url, check()).kind == "update"
        out = web.api("POST", "/commands/omaha.block", {"arguments": ["track:stable"]})
        assert "block: track:stable" in out["value"]
        seen = upstream.requests
        assert ask(web.url, check()).kind == "noupdate"
        assert upstream.requests == seen  # answered before upstream
        bad = web.api("POST", "/commands/omaha.pin", {"arguments": ["soon"]})
        assert "valid forms" in bad["error"]
        web.api("PUT", "/options", {"omaha_block": ""})
        assert ask(web.url, check()).kind == "update"
        status = web.api("POST", "/commands/omaha.status", {"arguments": []})["value"]
        assert "block: off" in status and "pin: off" in status
