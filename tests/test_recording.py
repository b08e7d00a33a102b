"""Recordings: the file format, the loader's refusals, scrubbing, facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omaha_proxy.protocol.errors import RecordingError
from omaha_proxy.replay import recording
from omaha_proxy.replay.recording import PayloadRef, RecordingBuilder, Scrubber
from tests.support.replay_data import MACHINE, OLD, request, response, update_walk, walk_recording

BOOT = "{3f1c5a4e-9b0d-4a7e-8c2f-1d6e0b9a7c55}"


def test_round_trip_keeps_every_exchange_byte_exact(tmp_path: Path) -> None:
    rec = walk_recording()
    path = tmp_path / "walk.json"
    recording.dump(rec, path)
    loaded = recording.load(path)
    assert loaded.exchanges == rec.exchanges
    assert loaded.base_dir == tmp_path
    assert [e.kind for e in loaded.exchanges] == [
        "updatecheck", "event", "event", "event", "ping", "updatecheck", "updatecheck",
    ]  # fmt: skip


def test_file_is_pretty_json_with_format_header_and_one_key_per_line(tmp_path: Path) -> None:
    path = tmp_path / "walk.json"
    recording.dump(walk_recording(), path)
    text = path.read_text()
    data = json.loads(text)
    assert (data["format"], data["version"], data["source"]) == ("omaha-proxy-recording", 1, "tests")
    assert text.splitlines()[1] == '  "format": "omaha-proxy-recording",'
    assert '      "seq": 1,' in text.splitlines()
    assert text.endswith("}\n")


def test_facts_describe_each_exchange_for_the_reader() -> None:
    first, second, *_, reboot, _steady = walk_recording().exchanges
    assert first.facts["version"] == OLD
    assert first.facts["events"] == ["3/2"]
    assert first.facts["response"] == "ok"
    assert first.facts["offered_version"] == "4081.2.0"
    assert first.facts["packages"] == ["flatcar_production_update.gz", "oem-qemu.gz"]
    assert second.facts["events"] == ["13/1"]
    assert second.facts["response"] == "ack"
    assert reboot.facts["previousversion"] == OLD
    assert reboot.facts["response"] == "noupdate"


def test_loader_refuses_unknown_format_version_with_clear_message(tmp_path: Path) -> None:
    data = recording.to_json(walk_recording())
    data["version"] = 99
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordingError, match=r"format version 99 is not supported .*reads version 1"):
        recording.load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "something-else", "version": 1}', "not an omaha-proxy recording"),
        ('{"format": "omaha-proxy-recording", "version": 1, "exchanges": [{"seq": 1}]}', "malformed"),
    ],
)
def test_loader_refuses_what_is_not_a_recording(text: str, message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        recording.loads(text)


def test_loader_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match=r"cannot read recording .*missing\.json"):
        recording.load(tmp_path / "missing.json")


def test_scrubbing_replaces_ids_with_stable_placeholders_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "walk.json"
    recording.dump(walk_recording(MACHINE, "0123456789abcdef0123456789abcdef"), path)
    text = path.read_text()
    assert MACHINE not in text and "0123456789abcdef" not in text and BOOT not in text
    rec = recording.load(path)
    assert rec.machines == ("machine-1", "machine-2")
    assert 'machineid="machine-1"' in rec.exchanges[0].request.body.decode()
    # Both machines share the sample's boot id: one value, one placeholder.
    assert all('bootid="{boot-1}"' in e.request.body.decode() for e in rec.exchanges)


def test_keep_ids_records_real_ids() -> None:
    rec = walk_recording(keep_ids=True)
    assert rec.machines == (MACHINE,)
    assert BOOT in rec.exchanges[0].request.body.decode()


def test_scrubbing_covers_aliases_client_addresses_and_credentials() -> None:
    builder = RecordingBuilder(source="tests")
    body = request("01_updatecheck_steady_state").replace(b'machinealias=""', b'machinealias="web-7"')
    ex = builder.add(
        body,
        response("updatecheck_noupdate"),
        request_headers=[
            ("X-Forwarded-For", "10.1.2.3, 2001:db8::7"),
            ("Authorization", "Bearer secret"),
            ("Content-Length", "812"),
        ],
        response_headers=[("Content-Type", "text/xml"), ("X-Seen-Machine", MACHINE)],
    )
    assert b'machinealias="alias-1"' in ex.request.body
    assert dict(ex.request.headers) == {"X-Forwarded-For": "client-1, client-2"}
    assert dict(ex.response.headers)["X-Seen-Machine"] == "machine-1"


def test_scrubber_gives_the_same_placeholder_to_the_same_value() -> None:
    s = Scrubber()
    assert s.placeholder("machineid", "a" * 32) == "machine-1"
    assert s.placeholder("machineid", "b" * 32) == "machine-2"
    assert s.placeholder("machineid", "a" * 32) == "machine-1"
    assert s.placeholder("bootid", "{x}") == "{boot-1}"
    assert s.placeholder("machinealias", "") == ""


def test_undecodable_bodies_are_kept_and_marked() -> None:
    builder = RecordingBuilder(source="tests")
    ex = builder.add(b'<request protocol="3.0"><app machinealias="a"b"></app>', b"\xff\xfe", status=502)
    assert ex.kind == "other"
    assert "error" in ex.facts
    again = recording.loads(recording.dumps(builder.recording()))
    assert again.exchanges[0].response.body == b"\xff\xfe"
    assert again.exchanges[0].response.status == 502


def test_payload_entries_resolve_relative_to_the_recording(tmp_path: Path) -> None:
    builder = RecordingBuilder(source="tests")
    for req, resp in update_walk():
        builder.add(req, resp)
    builder.add_payload(PayloadRef("flatcar_production_update.gz", "payloads/update.gz", "ab" * 32, 10))
    recording.dump(builder.recording(), tmp_path / "r.json")
    rec = recording.load(tmp_path / "r.json")
    assert rec.payload_file("flatcar_production_update.gz") == tmp_path / "payloads/update.gz"
    assert rec.payload("flatcar_production_update.gz").size == 10  # type: ignore[union-attr]
    assert rec.payload_file("nope.gz") is None


@given(
    machines=st.lists(
        st.text("0123456789abcdef", min_size=32, max_size=32), min_size=1, max_size=4, unique=True
    ),
    order=st.lists(st.integers(0, 3), min_size=1, max_size=12),
)
@settings(max_examples=40, deadline=None)
def test_scrubbing_leaves_no_id_and_gives_each_machine_one_placeholder(
    machines: list[str], order: list[int]
) -> None:
    builder = RecordingBuilder(source="tests")
    sent = [machines[i % len(machines)] for i in order]
    for machine in sent:
        builder.add(request("06_event_download_started", machine=machine), response("event_ack"))
    text = recording.dumps(builder.recording())
    assert not any(m in text for m in machines)
    placeholders = [e.machine for e in builder.recording().exchanges]
    # Same machine -> same placeholder; different machines -> different placeholders.
    assert len(set(zip(sent, placeholders, strict=True))) == len(set(sent)) == len(set(placeholders))
