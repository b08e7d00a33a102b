"""Table-driven tests of the block, pin and rollout policies.

Every response a policy produces is checked with update_engine's verdict: a withheld update
must read as ``noupdate`` (never an error), a replayed offer as the update that was seen.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.policy.decide import (
    Decision,
    DecisionAction,
    Grant,
    PolicyState,
    decide,
    decide_block,
    decide_pin,
    decide_rollout,
    offer_in,
    offers_from,
    parse_block_spec,
    parse_pin_spec,
    parse_rollout_spec,
)
from omaha_proxy.protocol.decode import encode, parse_request, parse_response
from omaha_proxy.protocol.model import Manifest, Request, Response, Url
from omaha_proxy.protocol.versions import compare_versions
from tests.conftest import sample

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
CHECK = parse_request(
    sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
)
PING = parse_request(
    sample("flatcar-update_engine-0.4.10__request_11_ping_only_waiting_for_reboot.RECONSTRUCTED.xml")
)
EVENT = parse_request(
    sample("flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml")
)
OFFER_DOC = parse_response(sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml"))
NOUPDATE = parse_response(sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml"))


def check(
    version: str = "4081.2.0", *, machine: str = MACHINE, track: str = "stable", alias: str = ""
) -> Request:
    """The steady-state update check of a machine running ``version``."""
    app = replace(CHECK.apps[0], version=version, machineid=machine, track=track, machinealias=alias)
    return replace(CHECK, apps=(app,))


def offer(version: str, *, poll: str | None = None) -> Response:
    """Nebraska's offer of ``version`` (codebase, manifest and DisplayVersion follow it)."""
    app = OFFER_DOC.apps[0]
    uc = app.updatecheck
    assert uc is not None and uc.manifest is not None
    manifest: Manifest = replace(uc.manifest, version=version)
    urls = (Url(codebase=f"https://update.release.flatcar-linux.net/amd64-usr/{version}/"),)
    uc = replace(uc, urls=urls, manifests=(manifest,), poll_interval=poll)
    return replace(OFFER_DOC, apps=(replace(app, updatecheck=uc),))


def verdict(decision: Decision, upstream: Response | None = None):
    """update_engine's reading of what the proxy sends (the upstream's when forwarded)."""
    sent = decision.response if decision.response is not None else upstream
    assert sent is not None
    return update_engine_verdict(encode(sent))


def state(**kw) -> PolicyState:
    for key, parse in (("block", parse_block_spec), ("pin", parse_pin_spec), ("rollout", parse_rollout_spec)):
        if isinstance(kw.get(key), str):
            kw[key] = parse(kw[key])
    return PolicyState(**kw)


# ------------------------------------------------------------------------------ parse specs


@pytest.mark.parametrize(
    ("spec", "blocked", "free"),
    [
        ("true", [check()], []),
        ("track:beta", [check(track="beta")], [check()]),
        (f"machine:{{{MACHINE.upper()}}}", [check()], [check(machine="f" * 32)]),
        ("alias:canary-*", [check(alias="canary-1")], [check(alias="prod-1"), check()]),
        ("track:beta, alias:web?", [check(track="beta"), check(alias="web1")], [check(alias="web12")]),
    ],
)
def test_block_selectors_match_tracks_machines_and_alias_globs(spec, blocked, free):
    block = parse_block_spec(spec)
    assert block is not None
    assert all(block.match(r.apps[0]) for r in blocked)
    assert not any(block.match(r.apps[0]) for r in free)


@pytest.mark.parametrize("spec", ["", "false", " off "])
def test_block_off_values_parse_to_none(spec):
    assert parse_block_spec(spec) is None


@pytest.mark.parametrize("spec", ["maybe", "track:", "group:beta", "track:beta,,"])
def test_bad_block_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="valid forms"):
        parse_block_spec(spec)


def test_pin_prefers_machine_then_alias_then_track_then_default():
    pin = parse_pin_spec(f"4000.0.0,stable=4081.2.0,alias:db-*=4050.0.0,machine:{MACHINE}=3975.2.0")
    assert pin is not None
    assert pin.pin_for(check().apps[0]) == ("3975.2.0", f"machine:{MACHINE}")
    assert pin.pin_for(check(machine="a" * 32, alias="db-1").apps[0]) == ("4050.0.0", "alias:db-*")
    assert pin.pin_for(check(machine="a" * 32).apps[0]) == ("4081.2.0", "track:stable")
    assert pin.pin_for(check(machine="a" * 32, track="beta").apps[0]) == ("4000.0.0", "all")


@pytest.mark.parametrize("spec", ["latest", "stable=", "=4081.2.0", "4081.2.0,4152.0.0", "group:x=1.2.3"])
def test_bad_pin_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="valid forms"):
        parse_pin_spec(spec)


def test_rollout_spec_combines_max_percent_and_windows():
    rollout = parse_rollout_spec("max=2/1h30m, percent=25; salt=s1; window=Mon-Fri 09:00-17:00 Europe/Berlin")
    assert rollout is not None
    assert (rollout.max_grants, rollout.period, rollout.percent, rollout.salt) == (
        2,
        timedelta(minutes=90),
        25,
        "s1",
    )
    assert rollout.windows[0].days == frozenset(range(5))
    assert rollout.windows[0].tz == "Europe/Berlin"


@pytest.mark.parametrize(
    "spec",
    ["max=2", "max=x/1h", "max=2/1y", "percent=120", "window=Mon 9-17", "window=Xyz 09:00-10:00",
     "window=09:00-10:00 Mars/Olympus", "limit=3", "salt=abc"],
)  # fmt: skip
def test_bad_rollout_spec_lists_valid_forms(spec):
    with pytest.raises(ValueError, match="valid forms"):
        parse_rollout_spec(spec)


@pytest.mark.parametrize(
    ("window", "when", "inside"),
    [
        ("Mon-Fri 09:00-17:00 Europe/Berlin", datetime(2026, 11, 25, 8, 30, tzinfo=UTC), True),  # 09:30 CET
        ("Mon-Fri 09:00-17:00 Europe/Berlin", datetime(2026, 11, 25, 7, 30, tzinfo=UTC), False),
        ("Mon-Fri 09:00-17:00 Europe/Berlin", datetime(2026, 11, 28, 10, 0, tzinfo=UTC), False),  # Saturday
        ("Fri 22:00-02:00", datetime(2026, 11, 28, 1, 0, tzinfo=UTC), True),  # Saturday 01:00, Friday's night
        ("Fri 22:00-02:00", datetime(2026, 11, 29, 1, 0, tzinfo=UTC), False),
        ("Sat,Sun 00:00-24:00", datetime(2026, 11, 29, 23, 59, tzinfo=UTC), True),
    ],
)
def test_rollout_window_uses_days_hours_and_timezone(window, when, inside):
    rollout = parse_rollout_spec(f"window={window}")
    assert rollout is not None
    assert rollout.windows[0].contains(when) is inside


# ------------------------------------------------------------------------------------ block


@pytest.mark.parametrize("request_", [CHECK, replace(CHECK, apps=(replace(CHECK.apps[0], events=()),))])
def test_block_answers_update_check_noupdate_before_upstream(request_):
    decision = decide(request_, None, state(block="true"), NOW)
    assert (decision.action, decision.outcome) == (DecisionAction.NOUPDATE, "blocked")
    assert verdict(decision).kind == "noupdate"
    app = decision.response.apps[0]
    assert app.appid == request_.apps[0].appid and app.ping is not None
    assert len(app.events) == len(request_.apps[0].events)
    assert "blocked (all)" in decision.reason


@pytest.mark.parametrize("request_", [PING, EVENT])
def test_block_forwards_pings_and_events_by_default(request_):
    decision = decide_block(request_, None, state(block="true"), NOW)
    assert decision.response is None and "forwarded" in decision.reason


@pytest.mark.parametrize("request_", [PING, EVENT])
def test_block_acks_pings_and_events_locally_when_asked(request_):
    decision = decide_block(request_, None, state(block="true", block_events_local=True), NOW)
    assert decision.outcome == "blocked"
    encoded = encode(decision.response)
    assert b'status="ok"' in encoded and b"<updatecheck" not in encoded


def test_block_leaves_other_machines_alone():
    decision = decide(check(track="stable"), None, state(block="track:beta"), NOW)
    assert decision.response is None and decision.outcome == "forwarded"


def test_block_withholds_an_offer_after_upstream_keeping_the_acks():
    decision = decide(check(track="beta"), offer("4152.2.0", poll="3600"), state(block="track:beta"), NOW)
    assert decision.outcome == "blocked" and verdict(decision).kind == "noupdate"
    app = decision.response.apps[0]
    assert app.updatecheck.poll_interval == "3600" and app.ping is not None and app.events


# -------------------------------------------------------------------------------------- pin

SEEN = {"4081.2.0": offer("4081.2.0"), "3975.2.0": offer("3975.2.0")}


@pytest.mark.parametrize(
    ("machine", "pin", "upstream", "downgrade", "action", "kind", "version"),
    [
        # offers above the pin are withheld (no seen offer of the pin -> noupdate)
        ("4081.2.0", "4081.2.0", "4152.2.0", False, "noupdate", "noupdate", None),
        # exactly the pin, or below it, passes
        ("3975.2.0", "4081.2.0", "4081.2.0", False, "forward", "update", "4081.2.0"),
        ("3760.2.0", "4081.2.0", "3975.2.0", False, "forward", "update", "3975.2.0"),
        # a machine below the pin gets the seen offer of the pin instead of the newer one ...
        ("3975.2.0", "4081.2.0", "4152.2.0", False, "offer", "update", "4081.2.0"),
        # ... or when upstream offers nothing
        ("3975.2.0", "4081.2.0", None, False, "offer", "update", "4081.2.0"),
        # no seen offer of the pin: nothing to replay
        ("3975.2.0", "4000.0.0", None, False, "forward", "noupdate", None),
        ("3975.2.0", "4000.0.0", "4152.2.0", False, "noupdate", "noupdate", None),
        # on the pin already
        ("4081.2.0", "4081.2.0", None, False, "forward", "noupdate", None),
        # above the pin: a downgrade only with the opt-in
        ("4152.2.0", "4081.2.0", None, False, "forward", "noupdate", None),
        ("4152.2.0", "4081.2.0", None, True, "offer", "update", "4081.2.0"),
        ("4152.2.0", "4081.2.0", "4230.0.0", False, "noupdate", "noupdate", None),
        ("4152.2.0", "4081.2.0", "4230.0.0", True, "offer", "update", "4081.2.0"),
    ],
)  # fmt: skip
def test_pin_table(machine, pin, upstream, downgrade, action, kind, version):
    upstream_doc = NOUPDATE if upstream is None else offer(upstream)
    st = state(pin=pin, allow_downgrade=downgrade, offers=offers_from(SEEN))
    decision = decide_pin(check(machine), upstream_doc, st, NOW)
    assert decision.action == action, decision.reason
    result = verdict(decision, upstream_doc)
    assert result.kind == kind and (version is None or result.version == version)
    if action != "forward":
        assert decision.outcome == "rewritten" and f"pin {pin}" in decision.reason


def test_pin_replays_the_seen_offer_intact_with_the_request_appid():
    seen = offer("4081.2.0")
    other_appid = "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}"
    upstream = replace(NOUPDATE, apps=(replace(NOUPDATE.apps[0], appid=other_appid),))
    decision = decide_pin(check("3975.2.0"), upstream, state(pin="4081.2.0", offers=offers_from(SEEN)), NOW)
    app = decision.response.apps[0]
    assert app.updatecheck == offer_in(seen)  # URLs, packages, extension packages, hashes, actions
    assert app.appid == other_appid and app.ping is not None and app.events  # the upstream's echo and acks
    result = verdict(decision)
    assert result.disable_payload_backoff and result.urls[0].endswith(
        "/4081.2.0/flatcar_production_update.gz"
    )
    package = app.updatecheck.manifest.packages[1]
    assert package.name == "oem-qemu.gz" and len(package.hash_sha256) == 64


def test_pin_withheld_offer_keeps_poll_interval_and_acks():
    upstream = offer("4152.2.0", poll="7200")
    decision = decide_pin(check(), upstream, state(pin="4081.2.0"), NOW)
    uc = decision.response.apps[0].updatecheck
    assert (uc.status, uc.poll_interval, uc.urls, uc.manifests) == ("noupdate", "7200", (), ())
    assert decision.response.apps[0].status == "ok" and decision.response.server == upstream.server


def test_pin_passes_upstream_errors():
    upstream = parse_response(sample("nebraska-shape__updatecheck_error_updatesDisabled.GENERATED.xml"))
    decision = decide_pin(check("3975.2.0"), upstream, state(pin="4081.2.0", offers=offers_from(SEEN)), NOW)
    assert decision.response is None


def test_pin_per_track_leaves_other_tracks_alone():
    decision = decide_pin(check(track="beta"), offer("4152.2.0"), state(pin="stable=4081.2.0"), NOW)
    assert decision.response is None


# ---------------------------------------------------------------------------------- rollout


def machines(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(1, n + 1)]


def run_fleet(
    st: PolicyState, ids: list[str], when: datetime, version: str = "4152.2.0"
) -> tuple[list, PolicyState]:
    """Each machine checks in once; grants accumulate like the addon keeps them."""
    results = []
    for machine in ids:
        decision = decide(check(machine=machine), offer(version), st, when)
        results.append(verdict(decision, offer(version)).kind)
        assert decision.outcome in ("forwarded", "held"), decision
        st = replace(st, grants=(*st.grants, *decision.grants))
    return results, st


def test_rollout_grants_two_per_period_to_five_machines():
    st = state(rollout="max=2/1h")
    kinds, st = run_fleet(st, machines(5), NOW)
    assert kinds == ["update", "update", "noupdate", "noupdate", "noupdate"]
    # the granted ones keep being granted; the others still wait
    kinds, st = run_fleet(st, machines(5), NOW + timedelta(minutes=10))
    assert kinds == ["update", "update", "noupdate", "noupdate", "noupdate"]
    # next period: two more
    kinds, st = run_fleet(st, machines(5), NOW + timedelta(minutes=61))
    assert kinds == ["update", "update", "update", "update", "noupdate"]


def test_rollout_held_reason_says_why():
    st = state(rollout="max=1/1h", grants=(Grant("a" * 32, "4152.2.0", NOW),))
    decision = decide_rollout(check(), offer("4152.2.0"), st, NOW)
    assert decision.outcome == "held" and "limit 1 per 1:00:00 reached" in decision.reason
    assert verdict(decision).kind == "noupdate"


def test_rollout_percent_is_stable_and_roughly_proportional():
    st = state(rollout="percent=25; salt=fleet")
    kinds, _ = run_fleet(st, machines(400), NOW)
    again, _ = run_fleet(st, machines(400), NOW + timedelta(days=3))
    assert kinds == again
    assert 70 <= kinds.count("update") <= 130


def test_rollout_window_holds_outside_office_hours():
    st = state(rollout="window=Mon-Fri 09:00-17:00 Europe/Berlin")
    inside = decide_rollout(check(), offer("4152.2.0"), st, NOW)
    outside = decide_rollout(check(), offer("4152.2.0"), st, NOW.replace(hour=20))
    assert inside.response is None
    assert outside.outcome == "held" and "outside window Mon-Fri 09:00-17:00 Europe/Berlin" in outside.reason


def test_rollout_ignores_noupdate_answers():
    assert decide_rollout(check(), NOUPDATE, state(rollout="max=0/1h"), NOW).response is None


# ------------------------------------------------------------------------------ composition


def test_pinned_replay_is_subject_to_the_rollout():
    st = state(pin="4081.2.0", rollout="max=1/1h", offers=offers_from(SEEN))
    first = decide(check("3975.2.0", machine="a" * 32), NOUPDATE, st, NOW)
    assert first.action == DecisionAction.OFFER and verdict(first).version == "4081.2.0"
    assert [g.version for g in first.grants] == ["4081.2.0"]
    st = replace(st, grants=first.grants)
    second = decide(check("3975.2.0", machine="b" * 32), NOUPDATE, st, NOW)
    assert second.outcome == "held" and verdict(second).kind == "noupdate"
    assert second.action == DecisionAction.NOUPDATE


def test_block_wins_over_pin():
    st = state(block="track:stable", pin="4081.2.0", offers=offers_from(SEEN))
    decision = decide(check("3975.2.0"), NOUPDATE, st, NOW)
    assert decision.response is None


def test_no_policy_forwards_and_counts_the_grant():
    decision = decide(check(), offer("4152.2.0"), PolicyState(), NOW)
    assert decision.response is None and decision.outcome == "forwarded"
    assert decision.grants == (Grant(MACHINE, "4152.2.0", NOW),)


# ------------------------------------------------------------------------------- properties

VERSIONS = st.sampled_from(["3760.2.0", "3975.2.0", "4081.2.0", "4152.2.0", "4230.0.0"])


@settings(max_examples=200, deadline=None)
@given(
    machine=VERSIONS,
    pin=VERSIONS,
    upstream=st.none() | VERSIONS,
    downgrade=st.booleans(),
    seen=st.lists(VERSIONS, max_size=3),
    limit=st.integers(min_value=0, max_value=2),
)
def test_no_update_above_the_pin_ever_goes_out_and_noupdate_is_never_an_error(
    machine, pin, upstream, downgrade, seen, limit
):
    upstream_doc = NOUPDATE if upstream is None else offer(upstream)
    st_ = state(
        pin=pin,
        rollout=f"max={limit}/1h",
        allow_downgrade=downgrade,
        offers=offers_from({v: offer(v) for v in seen}),
    )
    decision = decide(check(machine), upstream_doc, st_, NOW)
    result = verdict(decision, upstream_doc)
    assert result.kind in ("update", "noupdate")
    if result.kind == "update":
        assert compare_versions(result.version, pin) <= 0
        assert result.disable_payload_backoff and limit > 0
        if compare_versions(result.version, machine) < 0:  # the proxy itself only downgrades on opt-in
            assert downgrade or result.version == upstream
