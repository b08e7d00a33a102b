"""serve-package: answers that update_engine accepts as meant, and the payload it serves."""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
from pathlib import Path

import pytest

from omaha_proxy.client.machine import Machine, event_request, ping_request, update_check_request
from omaha_proxy.client.simulator import simulate
from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.protocol.decode import parse_response
from omaha_proxy.servers.serve_package import (
    PackageServer,
    load_packages,
    parse_extra_package,
    parse_listen_address,
    serve_package,
)
from tests.support.serving import SERVED_VERSION, package_server


def post(server, body: bytes, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        headers = {"Content-Type": "text/xml"}
        if host:
            headers["Host"] = host
        conn.request("POST", "/v1/update/", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def server(tmp_path: Path):
    with package_server(tmp_path) as srv:
        yield srv


def check(server, version: str, **kw) -> tuple[int, bytes]:
    return post(server, update_check_request(Machine.random(version=version)), **kw)


@pytest.mark.parametrize("version", ["4081.2.0", "4152.1.99", "1.0", "0.0.0"])
def test_older_client_gets_an_offer_update_engine_accepts(server, version) -> None:
    status, body = check(server, version)
    verdict = update_engine_verdict(body)
    assert status == 200 and verdict.kind == "update", verdict
    assert verdict.version == SERVED_VERSION and verdict.disable_payload_backoff
    assert verdict.urls == (f"{server.url}/packages/flatcar_production_update.gz",)


@pytest.mark.parametrize("version", ["4152.2.0", "4152.2", "4200.0.0", "9999.0.1"])
def test_equal_or_newer_client_gets_noupdate(server, version) -> None:
    status, body = check(server, version)
    assert status == 200 and update_engine_verdict(body).kind == "noupdate"


@pytest.mark.parametrize("version", ["", "v4081.2.0", "4152.2.0-beta", "ForcedUpdate", "4081.2.0 "])
def test_uncomparable_version_gets_noupdate_and_a_warning(server, version, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="omaha_proxy.servers.serve_package"):
        status, body = check(server, version)
    assert status == 200 and update_engine_verdict(body).kind == "noupdate"
    assert "cannot compare client version" in caplog.text


def test_offer_carries_hashes_in_the_encodings_each_reader_expects(server, tmp_path) -> None:
    _, body = check(server, "4081.2.0")
    manifest = parse_response(body).apps[0].updatecheck.manifests[0]
    main, oem = manifest.packages
    payload = (tmp_path / "payload.gz").read_bytes()
    assert main.size == len(payload) and main.required == "true"
    assert main.hash == base64.b64encode(hashlib.sha1(payload).digest()).decode()
    assert main.hash_sha256 == hashlib.sha256(payload).hexdigest()
    assert manifest.postinstall.sha256 == base64.b64encode(hashlib.sha256(payload).digest()).decode()
    oem_bytes = (tmp_path / "oem.gz").read_bytes()
    assert (oem.name, oem.required, oem.hash_sha256) == (
        "oem-qemu.gz",
        "false",
        hashlib.sha256(oem_bytes).hexdigest(),
    )


def test_codebase_follows_the_host_header_with_a_trailing_slash(server) -> None:
    _, body = check(server, "4081.2.0", host="updates.example:8000")
    urls = parse_response(body).apps[0].updatecheck.urls
    assert [u.codebase for u in urls] == ["http://updates.example:8000/packages/"]


def test_pings_and_events_are_acked(server) -> None:
    machine = Machine.random(version="4081.2.0")
    _, body = post(server, ping_request(machine))
    app = parse_response(body).apps[0]
    assert app.ping.status == "ok" and app.updatecheck is None
    _, body = post(server, event_request(machine, 3, 0, 268435466))
    app = parse_response(body).apps[0]
    assert [e.status for e in app.events] == ["ok"] and app.ping is None


def test_update_check_event_is_acked_next_to_the_offer(server) -> None:
    _, body = check(server, "4081.2.0")
    app = parse_response(body).apps[0]
    assert app.status == "ok" and app.ping.status == "ok" and [e.status for e in app.events] == ["ok"]


def test_simulated_machine_downloads_and_verifies_the_payload(server) -> None:
    report = simulate(server.omaha_url, 2, cycles=3, timeout=20)
    assert report.summary() == {"updated": 2}
    for machine in report.machines:
        downloads = [s for s in machine.steps if s.kind == "download"]
        assert [s.detail.rsplit("/", 1)[1] for s in downloads] == [
            "flatcar_production_update.gz",
            "oem-qemu.gz",
        ]
        assert all(s.outcome.startswith("ok") for s in downloads)


def test_unversioned_package_gets_noupdate_for_everyone(tmp_path, caplog) -> None:
    (tmp_path / "p").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        handler = PackageServer("latest", load_packages(tmp_path / "p"))
    assert "not dotted numbers" in caplog.text
    assert not handler.decide("4081.2.0")


def test_files_are_hashed_once_at_start(tmp_path) -> None:
    (tmp_path / "p").write_bytes(b"abc")
    with serve_package(tmp_path / "p", "2.0", listen_address="127.0.0.1:0") as srv:
        (tmp_path / "p").write_bytes(b"abcdef")
        _, body = check(srv, "1.0")
    assert update_engine_verdict(body).size == 3


def test_listen_address_parsing() -> None:
    assert parse_listen_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_listen_address("[::1]:0") == ("::1", 0)
    for bad in ("8000", ":8000", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen_address(bad)


def test_extra_package_parsing() -> None:
    assert parse_extra_package("oem-qemu.gz=/tmp/x") == ("oem-qemu.gz", Path("/tmp/x"))
    assert parse_extra_package("/srv/oem-azure.gz") == ("oem-azure.gz", Path("/srv/oem-azure.gz"))
    for bad in ("../x=/tmp/x", ".hidden=/tmp/x", "a/b=/tmp/x", "name="):
        with pytest.raises(ValueError):
            parse_extra_package(bad)


def test_missing_package_file_raises_before_binding(tmp_path) -> None:
    with pytest.raises(OSError):
        serve_package(tmp_path / "nope.gz", "1.0", listen_address="127.0.0.1:0")


def test_duplicate_package_names_are_refused(tmp_path) -> None:
    (tmp_path / "p").write_bytes(b"x")
    with pytest.raises(ValueError, match="unique"):
        serve_package(tmp_path / "p", "1.0", listen_address="127.0.0.1:0",
                      extra_packages=[("flatcar_production_update.gz", tmp_path / "p")])  # fmt: skip
