"""The simulator walks update_engine's real sequence and fails the way update_engine does."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from omaha_proxy.client.http import HttpClient
from omaha_proxy.client.machine import (
    PRODUCTION_SERVER,
    Machine,
    event_request,
    ping_request,
    update_check_request,
)
from omaha_proxy.client.simulator import SimulatedMachine, simulate
from omaha_proxy.protocol.build import noupdate_response, offer_response, package_info_from_file
from omaha_proxy.protocol.decode import encode, parse_request
from omaha_proxy.protocol.model import Request
from omaha_proxy.servers.http import OmahaServer, mapping_resolver
from tests.support.serving import SERVED_VERSION, package_server
from tests.test_machine import SAMPLE_MACHINE, reconstructed

Handler = Callable[[Request, bytes, str], tuple[int, dict[str, str], bytes]]


class Recorder:
    """Wraps an Omaha handler and keeps every raw request body it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.bodies.append(raw)
        return self.handler(request, raw, client_ip)


@contextmanager
def recording(server: OmahaServer) -> Iterator[Recorder]:
    recorder = Recorder(server.handler)
    server.handler = recorder
    yield recorder


@contextmanager
def offering(
    tmp_path: Path, *, tamper: Callable | None = None, status: int = 200
) -> Iterator[tuple[OmahaServer, Recorder]]:
    """A server offering a payload whose announced PackageInfo can be tampered with."""
    payload = tmp_path / "p.gz"
    payload.write_bytes(b"payload" * 1000)
    info = package_info_from_file(payload, "p.gz")
    if tamper:
        info = tamper(info)

    def handler(request: Request, raw: bytes, ip: str) -> tuple[int, dict[str, str], bytes]:
        if status != 200:
            return status, {}, b"busy"
        response = offer_response(request, version="9999.0.0", codebase=f"{server.url}/f/", packages=[info])
        return 200, {}, encode(response)

    recorder = Recorder(handler)
    with OmahaServer(recorder, files={"/f/": mapping_resolver({"p.gz": payload})}) as server:
        yield server, recorder


def test_full_update_walk_against_serve_package(tmp_path) -> None:
    with package_server(tmp_path) as server, recording(server) as seen:
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=3, timeout=20)
    (machine,) = report.machines
    brief = [(s.kind, s.detail.rsplit("/", 1)[-1] if s.kind == "download" else s.detail, s.outcome.split(" ")[0])
             for s in machine.steps]  # fmt: skip
    assert brief == [
        ("updatecheck", "3/2 previousversion=''", "update"),
        ("event", "13/1", "acked"),
        ("download", "flatcar_production_update.gz", "ok"),
        ("event", "14/1", "acked"),
        ("download", "oem-qemu.gz", "ok"),
        ("event", "3/1", "acked"),
        ("ping", "ping only", "acked"),
        ("updatecheck", "3/2 previousversion='4081.2.0'", "noupdate"),
    ]
    assert (machine.outcome, machine.version, machine.error_codes) == ("updated", SERVED_VERSION, ())
    # The server received update_engine's exact bytes, the last ones from the rebooted machine.
    assert seen.bodies[:4] == [reconstructed(n) for n in ("01_updatecheck_steady_state", "06_event_download_started",
                                                          "07_event_download_finished", "08_event_update_installed")]  # fmt: skip
    assert seen.bodies[4] == reconstructed("11_ping_only_waiting_for_reboot")
    after = parse_request(seen.bodies[5]).apps[0]
    assert after.version == SERVED_VERSION and after.bootid != SAMPLE_MACHINE.boot_id
    assert after.machineid == SAMPLE_MACHINE.machine_id and after.events[0].previousversion == "4081.2.0"
    rebooted = dataclasses.replace(SAMPLE_MACHINE, version=SERVED_VERSION, boot_id=after.bootid)
    assert seen.bodies[5] == update_check_request(rebooted, previous_version="4081.2.0")


def test_hash_mismatch_sends_one_error_event_268435466(tmp_path) -> None:
    wrong = lambda info: dataclasses.replace(info, sha256_b64="AAAA" + info.sha256_b64[4:])  # noqa: E731
    with offering(tmp_path, tamper=wrong) as (server, seen):
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=1, timeout=20)
    assert report.machines[0].error_codes == (268435466,) and report.machines[0].outcome == "failed"
    assert seen.bodies[-1] == reconstructed("09_event_error_hash_mismatch_nonprod_server")
    assert seen.bodies == [reconstructed(n) for n in ("01_updatecheck_steady_state", "06_event_download_started",
                                                      "09_event_error_hash_mismatch_nonprod_server")]  # fmt: skip


def test_size_mismatch_is_checked_before_the_hash(tmp_path) -> None:
    bigger = lambda info: dataclasses.replace(info, size=info.size + 1, sha256_b64="x")  # noqa: E731
    with offering(tmp_path, tamper=bigger) as (server, _):
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=1, timeout=20)
    assert report.machines[0].error_codes == (268435456 | 11,)


def test_http_503_on_the_check_sends_2503_with_the_flag(tmp_path) -> None:
    with offering(tmp_path, status=503) as (server, seen):
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=1, timeout=20)
    assert report.machines[0].error_codes == (268437959,)
    assert seen.bodies[-1] == reconstructed("10_event_error_http_503_nonprod_server")


def test_http_503_doubles_the_next_interval_up_to_4_hours(tmp_path) -> None:
    with offering(tmp_path, status=503) as (server, _):
        machine = SimulatedMachine(SAMPLE_MACHINE, server.omaha_url, HttpClient(timeout=5))
        factors = []
        for _ in range(4):
            machine.tick()
            factors.append(machine.backoff)
    assert factors == [2, 4, 240 / 45, 240 / 45]


def test_error_internal_answer_becomes_error_34(tmp_path) -> None:
    def refuse(request: Request, raw: bytes, ip: str) -> tuple[int, dict[str, str], bytes]:
        resp = noupdate_response(request)
        app = resp.apps[0]
        app = dataclasses.replace(
            app, updatecheck=dataclasses.replace(app.updatecheck, status="error-internal")
        )
        return 200, {}, encode(dataclasses.replace(resp, apps=(app,)))

    with OmahaServer(refuse) as server:
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=1, timeout=20)
    assert report.machines[0].error_codes == (268435456 | 34,)


def test_unreachable_server_is_error_2000_not_an_exception() -> None:
    server = OmahaServer()
    url = server.omaha_url
    server.stop()
    report = simulate(url, 1, cycles=1, timeout=10, request_timeout=2)
    machine = report.machines[0]
    assert machine.error_codes == (268435456 | 2000,)
    # a scheduled check is retried 3 times when no answer arrives, then one error event
    assert [(s.kind, s.status) for s in machine.steps] == [("updatecheck", None)] * 4 + [("event", None)]
    assert "retrying" in machine.steps[0].outcome


def test_interactive_check_is_retried_once() -> None:
    server = OmahaServer()
    url = server.omaha_url
    server.stop()
    report = simulate(url, 1, cycles=1, interactive=True, timeout=10, request_timeout=2)
    assert [s.kind for s in report.machines[0].steps] == ["updatecheck", "updatecheck", "event"]


def test_interactive_applies_to_the_first_attempt_only(tmp_path) -> None:
    with package_server(tmp_path) as server, recording(server) as seen:
        simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=3, interactive=True, timeout=20)
    sources = [parse_request(b).installsource for b in seen.bodies]
    assert sources == ["ondemandupdate"] * 4 + ["scheduler"] * 2  # check, 13/1, 14/1, 3/1 | ping, check
    assert seen.bodies[0] == reconstructed("02_updatecheck_interactive")


class CuttingHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD, but cuts the first full GET after half the bytes; honours Range."""

    protocol_version = "HTTP/1.1"
    cuts = 0
    ranges: list[str | None] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        CuttingHandler.ranges.append(rng)
        if rng:
            first = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.send_header("Content-Length", str(len(PAYLOAD) - first))
            self.end_headers()
            self.wfile.write(PAYLOAD[first:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if CuttingHandler.cuts == 0:
            CuttingHandler.cuts += 1
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.close_connection = True
            return
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_a_cut_download_is_resumed_with_range(tmp_path) -> None:
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CuttingHandler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    (tmp_path / "p").write_bytes(PAYLOAD)
    info = package_info_from_file(tmp_path / "p", "p.gz")
    codebase = f"http://127.0.0.1:{files.server_address[1]}/"

    def offer(request: Request, raw: bytes, ip: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, encode(offer_response(request, version="9.0", codebase=codebase, packages=[info]))

    try:
        with OmahaServer(offer) as server:
            report = simulate(server.omaha_url, 1, cycles=1, timeout=20)
    finally:
        files.shutdown()
        files.server_close()
    assert CuttingHandler.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert report.machines[0].outcome == "waiting-reboot"
    download = next(s for s in report.machines[0].steps if s.kind == "download")
    assert download.outcome == f"ok {len(PAYLOAD)} bytes (resumed 1x)"


def test_production_server_url_sets_no_flag() -> None:
    machine = SimulatedMachine(SAMPLE_MACHINE, PRODUCTION_SERVER, HttpClient())
    assert machine.flags == 0
    assert SimulatedMachine(SAMPLE_MACHINE, "http://127.0.0.1/v1/update/", HttpClient()).flags == 1 << 28


def test_first_boot_check_says_previousversion_0_0_0_0(tmp_path) -> None:
    with package_server(tmp_path, version="1.0.0") as server, recording(server) as seen:
        simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=2, first_boot=True, timeout=20)
    assert seen.bodies == [
        reconstructed("03_updatecheck_first_boot_no_prefs"),
        reconstructed("01_updatecheck_steady_state"),
    ]


def test_waiting_for_reboot_sends_only_pings(tmp_path) -> None:
    with package_server(tmp_path) as server, recording(server) as seen:
        report = simulate(server.omaha_url, [SAMPLE_MACHINE], cycles=4, reboot_after=3, timeout=20)
    assert seen.bodies[4:] == [ping_request(SAMPLE_MACHINE)] * 3
    assert report.machines[0].outcome == "waiting-reboot"


def test_many_machines_at_once_all_update_and_every_request_is_counted(tmp_path) -> None:
    with package_server(tmp_path) as server, recording(server) as seen:
        report = simulate(server.omaha_url, 24, concurrency=6, cycles=3, interval=0.05, timeout=30)
    assert report.summary() == {"updated": 24} and not report.timed_out
    assert len({m.machine_id for m in report.machines}) == 24
    omaha_steps = sum(1 for m in report.machines for s in m.steps if s.kind != "download")
    assert omaha_steps == len(seen.bodies) == 24 * 6


def test_a_current_machine_stays_current(tmp_path) -> None:
    with package_server(tmp_path) as server:
        report = simulate(server.omaha_url, [Machine.random(version=SERVED_VERSION)], cycles=2, timeout=20)
    assert report.machines[0].outcome == "current" and report.requests == 2


def test_through_an_http_proxy_requests_use_absolute_urls(tmp_path) -> None:
    # The serve-package server accepts absolute-form targets, so it can stand in for the proxy:
    # the simulator connects to it and asks for http://updates.example/...
    with package_server(tmp_path) as server:
        report = simulate("http://updates.example/v1/update/", 1, cycles=1, proxy=server.url, timeout=20)
    downloads = [s for s in report.machines[0].steps if s.kind == "download"]
    assert downloads[0].detail == "http://updates.example/packages/flatcar_production_update.gz"
    assert report.machines[0].outcome == "waiting-reboot"


def test_the_run_is_bounded_in_time_even_when_the_server_hangs() -> None:
    def slow(request: Request, raw: bytes, ip: str) -> tuple[int, dict[str, str], bytes]:
        time.sleep(3)
        return 200, {}, encode(noupdate_response(request))

    with OmahaServer(slow) as server:
        t0 = time.monotonic()
        report = simulate(server.omaha_url, 3, concurrency=3, cycles=5, timeout=1.0)
    assert time.monotonic() - t0 < 2.5
    assert report.timed_out and report.summary() == {"unfinished": 3}


def test_report_serialises_to_json_with_decoded_errors(tmp_path) -> None:
    with offering(tmp_path, status=503) as (server, _):
        data = simulate(server.omaha_url, 1, cycles=1, timeout=20).to_dict()
    machine = data["machines"][0]
    assert machine["outcome"] == "failed" and data["summary"] == {"failed": 1}
    assert machine["errors"] == ["268437959 = HTTP 503 (2503) + non-production-server"]


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"cycles": -1}, {"timeout": 0}])
def test_bad_parameters_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        simulate("http://127.0.0.1:1/v1/update/", 1, **bad)


def test_event_request_helper_matches_what_the_simulator_sends() -> None:
    assert event_request(SAMPLE_MACHINE, 3, 0, 268435466) == reconstructed(
        "09_event_error_hash_mismatch_nonprod_server"
    )
