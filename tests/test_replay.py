"""Replay by meaning: matchers, per-machine play state, misses that explain themselves."""

from __future__ import annotations

import pytest

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.protocol import decode as codec
from omaha_proxy.protocol.errors import ReplayMiss
from omaha_proxy.replay.player import (
    DEFAULT_MATCHERS,
    MATCHERS,
    Hit,
    Miss,
    MissPolicy,
    Player,
    miss_answer,
    parse_matchers,
    parse_miss_policy,
)
from omaha_proxy.replay.recording import PayloadRef, RecordingBuilder
from tests.support.replay_data import MACHINE, NEW, OLD, request, update_walk, walk_recording

OTHER = "0123456789abcdef0123456789abcdef"


def play(player: Player, body: bytes, **kw: object) -> Hit | Miss:
    return player.play(codec.parse_request(body), **kw)  # type: ignore[arg-type]


def test_a_machine_walking_a_recorded_update_gets_every_answer_in_order() -> None:
    player = Player(walk_recording())
    for i, (req, resp) in enumerate(update_walk(OTHER), start=1):
        hit = play(player, req)
        assert isinstance(hit, Hit), hit
        assert hit.exchange is not None and hit.exchange.seq == i
        assert hit.answer.body == resp
        assert not hit.repeat
    assert player.bindings == {OTHER: "machine-1"}


def test_the_offer_is_what_update_engine_takes_as_an_update() -> None:
    hit = play(Player(walk_recording()), update_walk()[0][0])
    assert isinstance(hit, Hit)
    verdict = update_engine_verdict(hit.answer.body)
    assert (verdict.kind, verdict.version) == ("update", NEW)


def test_steady_state_polling_repeats_the_latest_matching_answer() -> None:
    player = Player(walk_recording())
    for req, _ in update_walk():
        play(player, req)
    again = play(player, request("01_updatecheck_steady_state"))
    assert isinstance(again, Hit) and again.repeat
    assert again.exchange is not None and again.exchange.seq == 7


def test_several_machines_replay_independently() -> None:
    player = Player(walk_recording(MACHINE, OTHER))
    a, b = "a" * 32, "b" * 32
    walk_a, walk_b = update_walk(a), update_walk(b)
    # Interleave: a checks, b checks, a downloads, b downloads...
    for (req_a, resp_a), (req_b, resp_b) in zip(walk_a, walk_b, strict=True):
        hit_a, hit_b = play(player, req_a), play(player, req_b)
        assert isinstance(hit_a, Hit) and hit_a.answer.body == resp_a
        assert isinstance(hit_b, Hit) and hit_b.answer.body == resp_b
    assert player.bindings == {a: "machine-1", b: "machine-2"}


def test_machine_at_another_version_binds_to_the_recorded_machine_at_that_version() -> None:
    builder = RecordingBuilder(source="tests")
    builder.add(request("01_updatecheck_steady_state", version=OLD), update_walk()[0][1])
    builder.add(request("01_updatecheck_steady_state", machine=OTHER), update_walk()[-1][1])
    player = Player(builder.recording())
    hit = play(player, request("01_updatecheck_steady_state", machine="c" * 32))
    assert isinstance(hit, Hit) and hit.track == "machine-2"


def test_an_unmatched_update_check_is_a_miss_that_names_the_failed_matcher() -> None:
    player = Player(walk_recording())
    miss = play(player, request("01_updatecheck_steady_state", version="9999.0.0"))
    assert isinstance(miss, Miss)
    text = miss.explanation
    assert "9999.0.0" in text and "not bound" in text
    assert "nearest recorded exchanges:" in text
    assert "failed version (live '9999.0.0', recorded '3975.2.1')" in text
    assert player.misses == 1
    with pytest.raises(ReplayMiss, match="no recorded exchange matches"):
        raise miss.error()


def test_a_bound_machine_misses_within_its_own_session() -> None:
    player = Player(walk_recording())
    play(player, update_walk()[0][0])
    miss = play(player, request("01_updatecheck_steady_state", previous="1.2.3"))
    assert isinstance(miss, Miss)
    assert "bound to recorded machine-1" in miss.explanation
    assert "failed previousversion" in miss.explanation


def test_unrecorded_events_and_pings_are_acked() -> None:
    player = Player(walk_recording())
    hit = play(player, request("10_event_error_http_503_nonprod_server"))
    assert isinstance(hit, Hit) and hit.synthesized and hit.reason == "acked"
    assert codec.parse_response(hit.answer.body).apps[0].events[0].status == "ok"


def test_an_event_matching_nothing_gets_a_recorded_answer_to_the_same_kind_of_event() -> None:
    player = Player(walk_recording())
    hit = play(player, request("06_event_download_started", version="9.9.9"))
    assert isinstance(hit, Hit) and hit.exchange is not None
    assert (hit.exchange.seq, hit.reason, hit.repeat) == (2, "like #2 (machine-1)", True)
    assert player.bindings == {}  # no recorded session was entered


def test_matchers_are_chosen_by_name() -> None:
    # Without "version", a machine at any version replays the recorded offer.
    player = Player(walk_recording(), matchers="appid,track,kind")
    hit = play(player, request("01_updatecheck_steady_state", version="1.0.0"))
    assert isinstance(hit, Hit) and hit.exchange is not None and hit.exchange.seq == 1


def test_machine_matcher_needs_ids_kept() -> None:
    scrubbed = Player(walk_recording(), matchers=(*DEFAULT_MATCHERS, "machine"))
    kept = Player(walk_recording(keep_ids=True), matchers=(*DEFAULT_MATCHERS, "machine"))
    first = update_walk()[0][0]
    assert isinstance(play(scrubbed, first), Miss)
    assert isinstance(play(kept, first), Hit)


@pytest.mark.parametrize(
    ("name", "body", "key"),
    [
        ("appid", request("01_updatecheck_steady_state"), ("e96281a6-d1af-4bde-9a0a-97b76e56dc57",)),
        ("version", request("01_updatecheck_steady_state"), (NEW,)),
        ("track", request("01_updatecheck_steady_state"), ("stable",)),
        ("board", request("01_updatecheck_steady_state"), ("amd64-usr",)),
        ("kind", request("01_updatecheck_steady_state"), ("updatecheck",)),
        ("kind", request("06_event_download_started"), ("event 13/1",)),
        ("kind", request("11_ping_only_waiting_for_reboot"), ("ping",)),
        ("errorcode", request("09_event_error_hash_mismatch_nonprod_server"), ((268435466,),)),
        ("previousversion", request("04_updatecheck_after_reboot_into_new_version"), (("3975.2.1",),)),
        ("machine", request("01_updatecheck_steady_state"), (MACHINE,)),
        ("installsource", request("02_updatecheck_interactive"), "ondemandupdate"),
    ],
)
def test_each_matcher_keys_on_one_meaning(name: str, body: bytes, key: object) -> None:
    assert MATCHERS[name](codec.parse_request(body)) == key


def test_parse_matchers_lists_valid_names_on_error() -> None:
    assert parse_matchers("") == DEFAULT_MATCHERS
    assert parse_matchers(" appid, kind ,appid") == ("appid", "kind")
    with pytest.raises(ValueError, match="unknown matcher 'bogus'; valid matchers: appid, track"):
        parse_matchers("appid,bogus")


def test_parse_miss_policy_lists_valid_values_on_error() -> None:
    assert parse_miss_policy("NoUpdate") is MissPolicy.NOUPDATE
    with pytest.raises(ValueError, match="valid values: forward, noupdate, error"):
        parse_miss_policy("drop")


def test_miss_answers_follow_the_policy() -> None:
    player = Player(walk_recording())
    req = codec.parse_request(request("01_updatecheck_steady_state", version="9.9.9"))
    miss = player.play(req)
    assert isinstance(miss, Miss)
    assert miss_answer(req, miss, MissPolicy.FORWARD) is None
    noupdate = miss_answer(req, miss, MissPolicy.NOUPDATE)
    assert noupdate is not None and noupdate.status == 200
    assert update_engine_verdict(noupdate.body).kind == "noupdate"
    error = miss_answer(req, miss, MissPolicy.ERROR)
    assert error is not None and error.status == 404
    assert b"failed version" in error.body


def test_offer_codebase_points_at_the_replayer_when_all_payloads_are_recorded() -> None:
    builder = RecordingBuilder(source="tests")
    for req, resp in update_walk():
        builder.add(req, resp)
    base = "http://127.0.0.1:9/omaha-proxy/payloads/"
    first = update_walk()[0][0]
    builder.add_payload(PayloadRef("flatcar_production_update.gz", "p/update.gz"))
    partial = play(Player(builder.recording()), first, payload_base=base)
    assert isinstance(partial, Hit) and b"update.release.flatcar-linux.net" in partial.answer.body
    builder.add_payload(PayloadRef("oem-qemu.gz", "p/oem-qemu.gz"))
    full = play(Player(builder.recording()), first, payload_base=base)
    assert isinstance(full, Hit)
    verdict = update_engine_verdict(full.answer.body)
    assert verdict.urls == (base + "flatcar_production_update.gz",)


def test_reset_starts_every_session_over() -> None:
    player = Player(walk_recording())
    for req, _ in update_walk():
        play(player, req)
    player.reset()
    hit = play(player, update_walk()[0][0])
    assert isinstance(hit, Hit) and not hit.repeat and hit.exchange is not None and hit.exchange.seq == 1
