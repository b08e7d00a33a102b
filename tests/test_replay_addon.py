"""The OmahaReplay addon in a test master: options, replayed answers, misses, payloads, recording."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.serverplayback import ServerPlayback
from mitmproxy.test import taddons, tflow, tutils

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.mitm.replay import OmahaReplay
from omaha_proxy.replay import recording
from omaha_proxy.replay.recording import PayloadRef, RecordingBuilder
from tests.support.replay_data import MACHINE, omaha_flow, request, response, update_walk, walk_recording


@pytest.fixture
def walk_file(tmp_path: Path) -> Path:
    path = tmp_path / "walk.json"
    recording.dump(walk_recording(), path)
    return path


def test_replay_answers_a_whole_update_without_upstream(walk_file: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_replay=str(walk_file))
        for req, resp in update_walk("f" * 32):
            flow = omaha_flow(req)
            addon.request(flow)
            assert flow.response is not None and flow.response.content == resp
            assert flow.metadata["omaha_action"] == "replayed"
            assert flow.is_replay == "response"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"omaha_replay_match": "appid,colour"}, "unknown matcher 'colour'; valid matchers: appid"),
        ({"omaha_replay_miss": "drop"}, "valid values: forward, noupdate, error"),
    ],
)
def test_bad_options_are_refused_with_the_valid_values(walk_file: Path, options: dict, message: str) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, omaha_replay=str(walk_file), **options)


def test_unknown_recording_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v9.json"
    path.write_text('{"format": "omaha-proxy-recording", "version": 9}')
    addon = OmahaReplay()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="version 9"):
        tctx.configure(addon, omaha_replay=str(path))


def test_replay_is_refused_together_with_server_replay(walk_file: Path, tmp_path: Path) -> None:
    flows = tmp_path / "flows.mitm"
    flows.write_bytes(b"")
    addon = OmahaReplay()
    with taddons.context(ServerPlayback(), addon) as tctx:
        tctx.configure(addon, omaha_replay=str(walk_file))
        with pytest.raises(exceptions.OptionsError, match="server_replay"):
            tctx.options.update(server_replay=[str(flows)])


def test_replay_switches_connection_strategy_to_lazy(walk_file: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(Proxyserver(), addon) as tctx:
        assert tctx.options.connection_strategy == "eager"
        tctx.configure(addon, omaha_replay=str(walk_file))
        assert tctx.options.connection_strategy == "lazy"


@pytest.mark.parametrize(("miss", "status"), [("noupdate", 200), ("error", 404)])
def test_a_miss_gets_the_configured_answer_and_is_logged_with_its_explanation(
    walk_file: Path, miss: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_replay=str(walk_file), omaha_replay_miss=miss)
        flow = omaha_flow(request("01_updatecheck_steady_state", version="9.9.9"))
        with caplog.at_level(logging.WARNING):
            addon.request(flow)
        assert flow.response is not None and flow.response.status_code == status
        assert flow.metadata["omaha_reason"] == f"replay miss: {miss}"
        assert "failed version (live '9.9.9'" in caplog.text
        if miss == "noupdate":
            assert update_engine_verdict(flow.response.content or b"").kind == "noupdate"


def test_a_forwarded_miss_is_left_to_the_upstream(walk_file: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_replay=str(walk_file), omaha_replay_miss="forward")
        flow = omaha_flow(request("01_updatecheck_steady_state", version="9.9.9"))
        addon.request(flow)
        assert flow.response is None
        assert flow.metadata["omaha_action"] == "forwarded"


def test_flows_answered_by_another_addon_are_left_alone(walk_file: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_replay=str(walk_file))
        flow = omaha_flow(update_walk()[0][0], b"<already/>")
        addon.request(flow)
        assert flow.response is not None and flow.response.content == b"<already/>"


def _payload_recording(tmp_path: Path) -> Path:
    builder = RecordingBuilder(source="tests")
    for req, resp in update_walk():
        builder.add(req, resp)
    (tmp_path / "payloads").mkdir()
    for name in ("flatcar_production_update.gz", "oem-qemu.gz"):
        (tmp_path / "payloads" / name).write_bytes(name.encode() * 10)
        builder.add_payload(PayloadRef(name, f"payloads/{name}"))
    path = tmp_path / "with-payloads.json"
    recording.dump(builder.recording(), path)
    return path


def test_recorded_payloads_are_served_and_offers_point_at_them(tmp_path: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_replay=str(_payload_recording(tmp_path)))
        offer = omaha_flow(update_walk()[0][0])
        addon.request(offer)
        assert offer.response is not None
        (url,) = update_engine_verdict(offer.response.content or b"").urls
        assert url == "http://up.example:80/omaha-proxy/payloads/flatcar_production_update.gz"
        get = tflow.tflow(
            req=tutils.treq(method=b"GET", path=b"/omaha-proxy/payloads/oem-qemu.gz", content=b"")
        )
        get.request.headers["Range"] = "bytes=0-5"
        addon.request(get)
        assert get.response is not None and get.response.status_code == 206
        assert get.response.content == b"oem-qe"
        assert get.metadata["omaha_action"] == "served"


def test_live_exchanges_are_recorded_scrubbed_but_replayed_ones_are_not(
    tmp_path: Path, walk_file: Path
) -> None:
    out = tmp_path / "out.json"
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_record=str(out))
        live = omaha_flow(update_walk()[0][0], response("updatecheck_update_ok"))
        live.request.headers["X-Forwarded-For"] = "10.0.0.7"
        addon.response(live)
        tctx.configure(addon, omaha_replay=str(walk_file))
        replayed = omaha_flow(update_walk()[0][0])
        addon.request(replayed)
        addon.response(replayed)
    rec = recording.load(out)
    assert len(rec.exchanges) == 1
    assert rec.machines == ("machine-1",)
    assert MACHINE not in out.read_text() and "10.0.0.7" not in out.read_text()
    assert dict(rec.exchanges[0].request.headers)["X-Forwarded-For"] == "client-1"


def test_keep_ids_records_real_machine_ids(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_record=str(out), omaha_record_keep_ids=True)
        addon.response(omaha_flow(update_walk()[0][0], response("updatecheck_update_ok")))
    assert recording.load(out).machines == (MACHINE,)


def test_commands_show_and_reset_the_play_state(walk_file: Path) -> None:
    addon = OmahaReplay()
    with taddons.context(addon) as tctx:
        assert tctx.master.commands.call("omaha.replay.status") == "omaha_replay is off"
        tctx.configure(addon, omaha_replay=str(walk_file))
        for req, _ in update_walk()[:2]:
            addon.request(omaha_flow(req))
        status = tctx.master.commands.call("omaha.replay.status")
        assert "2 hits, 0 misses" in status and f"{MACHINE} -> machine-1" in status
        tctx.master.commands.call("omaha.replay.reset")
        again = omaha_flow(update_walk()[0][0])
        addon.request(again)
        assert again.metadata["omaha_reason"] == "recorded #1 (machine-1)"
