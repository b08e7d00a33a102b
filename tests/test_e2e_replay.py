"""A real mitmdump replays a recorded update with no upstream running, and records live traffic."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from omaha_proxy.client.machine import Machine
from omaha_proxy.client.simulator import simulate
from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.replay import recording
from omaha_proxy.replay.recording import PayloadRef, RecordingBuilder
from omaha_proxy.replay.server import replay_server
from tests.conftest import REPO
from tests.support.mitmdump_run import run_mitmdump
from tests.support.replay_data import MACHINE, post, request, update_walk, walk_recording

pytestmark = pytest.mark.e2e


def dead_upstream() -> str:
    """A URL nothing listens on (a port bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


@pytest.fixture
def walk_with_payloads(tmp_path: Path) -> Path:
    builder = RecordingBuilder(source="tests")
    for req, resp in update_walk():
        builder.add(req, resp)
    (tmp_path / "payloads").mkdir()
    for name in ("flatcar_production_update.gz", "oem-qemu.gz"):
        (tmp_path / "payloads" / name).write_bytes(b"payload of " + name.encode())
        builder.add_payload(PayloadRef(name, f"payloads/{name}"))
    recording.dump(builder.recording(), tmp_path / "walk.json")
    return tmp_path / "walk.json"


def test_mitmdump_replays_a_whole_update_offline(walk_with_payloads: Path) -> None:
    args = ["--mode", f"reverse:{dead_upstream()}", "--set", f"omaha_replay={walk_with_payloads}"]
    with run_mitmdump(*args) as md:
        answers = [post(md.url + "/v1/update/", req) for req, _ in update_walk("e" * 32)]
        offer = update_engine_verdict(answers[0][1])
        payload = get(offer.urls[0])
    assert [status for status, _ in answers] == [200] * len(answers)
    # Every answer but the offer (whose codebase now points at the proxy) is the recorded one.
    assert [body for _, body in answers[1:]] == [resp for _, resp in update_walk()[1:]]
    assert offer.kind == "update" and offer.urls[0].startswith(md.url + "/omaha-proxy/payloads/")
    assert payload == b"payload of flatcar_production_update.gz"
    assert "connection_strategy=lazy" in md.output


def test_mitmdump_miss_gets_configured_answer_and_logs_explanation(tmp_path: Path) -> None:
    path = tmp_path / "walk.json"
    recording.dump(walk_recording(), path)
    args = ["--mode", f"reverse:{dead_upstream()}", "--set", f"omaha_replay={path}"]
    with run_mitmdump(*args, "--set", "omaha_replay_miss=error") as md:
        status, body = post(md.url + "/v1/update/", request("01_updatecheck_steady_state", version="9.9.9"))
        assert md.wait_for("nearest recorded exchanges")
    assert status == 404
    assert b"failed version (live '9.9.9', recorded '3975.2.1')" in body
    assert "failed version (live '9.9.9'" in md.output


def test_mitmdump_records_what_the_upstream_answers(tmp_path: Path) -> None:
    upstream_rec = tmp_path / "upstream.json"
    recording.dump(walk_recording(), upstream_rec)
    out = tmp_path / "recorded.json"
    # The "upstream" is itself a replay server: a scripted Omaha server on 127.0.0.1.
    with replay_server(recording.load(upstream_rec)) as upstream:
        args = ["--mode", f"reverse:{upstream.url}", "--set", f"omaha_record={out}"]
        with run_mitmdump(*args) as md:
            for req, _ in update_walk():
                post(md.url + "/v1/update/", req)
    rec = recording.load(out)
    assert [e.response.body for e in rec.exchanges] == [resp for _, resp in update_walk()]
    assert rec.machines == ("machine-1",)
    assert MACHINE not in out.read_text()


def test_simulated_machines_update_through_mitmdump_from_a_bundled_recording() -> None:
    """The simulator walks the recorded fleet: checks, payloads and events all come from the proxy."""
    args = ["--mode", f"reverse:{dead_upstream()}", "--set", f"omaha_replay={REPO / 'recordings/fleet.json'}"]
    with run_mitmdump(*args, "--set", "omaha_replay_miss=error") as md:
        machines = [
            Machine.random(version=v, track=t)
            for v, t in (
                ("3975.2.1", "stable"),
                ("4054.1.0", "stable"),
                ("4081.2.0", "stable"),
                ("3975.2.1", "beta"),
            )
        ]
        report = simulate(f"{md.url}/v1/update/", machines, cycles=4, concurrency=4, timeout=30)
    assert [m.outcome for m in report.machines] == ["updated", "updated", "current", "updated"]
    downloads = [s.detail for m in report.machines for s in m.steps if s.kind == "download"]
    assert len(downloads) == 3 and all(d.startswith(md.url + "/omaha-proxy/payloads/") for d in downloads)
    assert "omaha_replay miss" not in md.output
