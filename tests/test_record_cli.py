"""Making recordings (SQLite log, flow files) and serving them (replay server, CLI)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mitmproxy import io
from mitmproxy.test import tflow

from omaha_proxy.cli import main
from omaha_proxy.cli.replay import parse_listen
from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.replay import recording
from omaha_proxy.replay.from_log import parse_since
from omaha_proxy.replay.recording import PayloadRef, RecordingBuilder
from omaha_proxy.replay.server import recording_server, replay_server
from omaha_proxy.store.store import Store
from tests.support.replay_data import (
    MACHINE,
    omaha_flow,
    post,
    request,
    response,
    update_walk,
    walk_recording,
)

OTHER = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def log_db(tmp_path: Path) -> Path:
    path = tmp_path / "omaha.db"
    with Store(path) as store:
        for i, (req, resp) in enumerate(update_walk(MACHINE) + update_walk(OTHER)):
            store.record_exchange(
                flow_id=f"f{i}", ts=1000.0 + i, request_xml=req, response_xml=resp, http_status=200
            )
        store.record_exchange(
            flow_id="blocked", ts=2000.0, request_xml=update_walk()[0][0],
            response_xml=response("updatecheck_noupdate"), action="blocked", http_status=200,
        )  # fmt: skip
    return path


def test_record_from_the_log_keeps_one_machines_upstream_exchanges(log_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.json"
    assert main(["record", "--db", str(log_db), "--machine", MACHINE, "-o", str(out)]) == 0
    rec = recording.load(out)
    assert [e.response.body for e in rec.exchanges] == [resp for _, resp in update_walk()]
    assert rec.machines == ("machine-1",)
    assert MACHINE not in out.read_text()


def test_record_from_the_log_filters_by_time(log_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.json"
    assert main(["record", "--db", str(log_db), "--since", "1007", "-o", str(out)]) == 0
    assert len(recording.load(out).exchanges) == 7  # the second machine only; "blocked" is skipped
    assert main(["record", "--db", str(log_db), "--since", "3000", "-o", str(tmp_path / "none.json")]) == 1
    assert not (tmp_path / "none.json").exists()


def test_record_from_a_flow_file(tmp_path: Path) -> None:
    flows = tmp_path / "flows.mitm"
    with flows.open("wb") as fh:
        writer = io.FlowWriter(fh)
        for req, resp in update_walk():
            writer.add(omaha_flow(req, resp))
        writer.add(tflow.tflow(resp=True))  # not Omaha: left out
    out = tmp_path / "rec.json"
    assert main(["record", "--from-flows", str(flows), "--keep-ids", "-o", str(out)]) == 0
    rec = recording.load(out)
    assert len(rec.exchanges) == 7 and rec.machines == (MACHINE,)


def test_record_reports_an_unreadable_flow_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mitm"
    bad.write_bytes(b"this is no flow file")
    assert main(["record", "--from-flows", str(bad), "-o", str(tmp_path / "x.json")]) == 1
    assert "cannot read flows" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("1732700000", 1732700000.0),
        ("2h", 10_000 - 7200),
        ("90m", 10_000 - 5400),
        ("1970-01-01T01:00", 3600.0),
    ],
)
def test_parse_since_reads_epoch_iso_and_ages(text: str, when: float) -> None:
    assert parse_since(text, now=10_000) == when


def test_parse_since_says_which_forms_work() -> None:
    with pytest.raises(ValueError, match="epoch seconds, an ISO date"):
        parse_since("yesterday", now=0)


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), (":0", ("127.0.0.1", 0)), ("9000", ("127.0.0.1", 9000))],
)
def test_parse_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


def test_replay_server_replays_an_update_with_its_payloads(tmp_path: Path) -> None:
    builder = RecordingBuilder(source="tests")
    for req, resp in update_walk():
        builder.add(req, resp)
    for name in ("flatcar_production_update.gz", "oem-qemu.gz"):
        (tmp_path / name).write_bytes(name.encode())
        builder.add_payload(PayloadRef(name, name))
    recording.dump(builder.recording(), tmp_path / "r.json")
    with replay_server(recording.load(tmp_path / "r.json")) as server:
        answers = [post(server.omaha_url, req)[1] for req, _ in update_walk(OTHER)]
        verdict = update_engine_verdict(answers[0])
        with urllib.request.urlopen(verdict.urls[0], timeout=10) as resp:
            payload = resp.read()
    assert answers[1:] == [resp for _, resp in update_walk()[1:]]
    assert verdict.urls[0] == f"{server.url}/omaha-proxy/payloads/flatcar_production_update.gz"
    assert payload == b"flatcar_production_update.gz"


def test_recording_server_records_what_the_upstream_answers(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with replay_server(walk_recording()) as upstream, recording_server(upstream.omaha_url, out) as rec_server:
        for req, _ in update_walk():
            post(rec_server.omaha_url, req)
    rec = recording.load(out)
    assert [e.response.body for e in rec.exchanges] == [resp for _, resp in update_walk()]


def test_replay_command_serves_until_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    recording.dump(walk_recording(), path)
    cmd = [str(Path(sys.executable).parent / "omaha-proxy"), "replay", str(path), "--listen", "127.0.0.1:0"]
    # --listen :0 picks a free port; the banner line says which.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("replaying 7 exchanges of 1 machines at http://127.0.0.1:")
        url = banner.rsplit(" ", 1)[1].strip()
        status, body = post(url, request("01_updatecheck_steady_state"))
        assert status == 200 and update_engine_verdict(body).kind == "noupdate"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_record_names_payloads_so_an_offer_replays_offline(tmp_path: Path) -> None:
    source = tmp_path / "live.json"
    recording.dump(walk_recording(), source)
    (tmp_path / "files").mkdir()
    for name in ("flatcar_production_update.gz", "oem-qemu.gz"):
        (tmp_path / "files" / name).write_bytes(b"x" * 10)
    out = tmp_path / "out" / "offline.json"
    args = ["record", "--from-recording", str(source), "-o", str(out)]
    args += ["--payload", f"flatcar_production_update.gz={tmp_path / 'files/flatcar_production_update.gz'}"]
    args += ["--payload", f"oem-qemu.gz={tmp_path / 'files/oem-qemu.gz'}"]
    assert main(args) == 0
    rec = recording.load(out)
    ref = rec.payload("oem-qemu.gz")
    assert ref is not None and (ref.path, ref.size) == ("../files/oem-qemu.gz", 10)
    with replay_server(rec) as server:
        verdict = update_engine_verdict(post(server.omaha_url, update_walk()[0][0])[1])
        with urllib.request.urlopen(verdict.urls[0], timeout=10) as resp:
            assert resp.read() == b"x" * 10


def test_record_refuses_a_malformed_payload_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "live.json"
    recording.dump(walk_recording(), source)
    assert (
        main(
            ["record", "--from-recording", str(source), "--payload", "nopath", "-o", str(tmp_path / "o.json")]
        )
        == 1
    )
    assert "expected NAME=PATH" in capsys.readouterr().err
