"""OmahaControl inside a real mitmproxy context (taddons): options, hooks and commands."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.mitm.common import META_UPSTREAM, action, reason
from omaha_proxy.mitm.control import OPTIONS, OmahaControl
from omaha_proxy.protocol.decode import encode, parse_response
from omaha_proxy.protocol.model import Response
from omaha_proxy.store.store import Store
from tests.conftest import REPO
from tests.test_policy import NOUPDATE, check, offer

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def flow_for(request_xml: bytes, response: Response | None = None) -> http.HTTPFlow:
    req = tutils.treq(
        method=b"POST",
        host="127.0.0.1",
        port=8000,
        scheme=b"http",
        path=b"/v1/update/",
        content=request_xml,
        headers=http.Headers(content_type="text/xml"),
    )
    resp: http.Response | bool = False
    if response is not None:
        resp = http.Response.make(200, encode(response), {"Content-Type": "text/xml"})
    return tflow.tflow(req=req, resp=resp)


@pytest.fixture
def control():
    addon = OmahaControl(clock=lambda: NOW)
    with taddons.context(addon) as tctx:
        yield addon, tctx


def sent(flow: http.HTTPFlow):
    assert flow.response is not None and flow.response.status_code == 200
    return update_engine_verdict(flow.response.content)


def test_block_answers_locally_and_marks_the_flow(control):
    addon, tctx = control
    tctx.configure(addon, omaha_block="true")
    flow = flow_for(encode(check()))
    addon.request(flow)
    assert sent(flow).kind == "noupdate"
    assert flow.response.headers["content-type"] == "text/xml"
    assert action(flow) == "blocked" and "blocked (all)" in reason(flow)
    assert flow.marked == ":no_entry:" and "blocked" in flow.comment
    addon.response(flow)  # the response hook leaves the synthetic answer alone
    assert sent(flow).kind == "noupdate"


def test_pin_rewrites_the_upstream_offer_and_keeps_the_original(control):
    addon, tctx = control
    tctx.configure(addon, omaha_pin="4081.2.0")
    flow = flow_for(encode(check()), offer("4152.2.0"))
    original = flow.response.content
    addon.response(flow)
    assert sent(flow).kind == "noupdate"
    assert flow.metadata[META_UPSTREAM] == original
    assert action(flow) == "rewritten" and "pin 4081.2.0" in reason(flow)
    assert flow.marked


def test_pin_below_replays_an_offer_seen_earlier_in_the_run(control):
    addon, tctx = control
    tctx.configure(addon, omaha_pin="4081.2.0")
    seen = flow_for(encode(check("3975.2.0", machine="a" * 32)), offer("4081.2.0"))
    addon.response(seen)  # upstream offered exactly the pin to someone: passed and remembered
    assert sent(seen).version == "4081.2.0"
    flow = flow_for(encode(check("3975.2.0")), offer("4152.2.0"))
    addon.response(flow)
    result = sent(flow)
    assert (result.kind, result.version) == ("update", "4081.2.0")
    assert parse_response(flow.response.content).apps[0].updatecheck == offer("4081.2.0").apps[0].updatecheck
    assert "4081.2.0 (amd64-usr)" in addon.status()


def test_without_a_policy_answers_are_not_even_parsed(control):
    addon, _ = control
    flow = flow_for(encode(check("3975.2.0")), NOUPDATE)
    flow.response.content = b"<response>not even well-formed"
    addon.response(flow)  # must not parse, decide or touch anything
    assert flow.response.content == b"<response>not even well-formed"
    assert action(flow) == "forwarded" and addon.offers == {}


def test_rollout_holds_the_third_machine(control):
    addon, tctx = control
    tctx.configure(addon, omaha_rollout="max=2/1h")
    kinds = []
    for i in range(3):
        flow = flow_for(encode(check(machine=f"{i:032x}")), offer("4152.2.0"))
        addon.response(flow)
        kinds.append((sent(flow).kind, action(flow)))
    assert kinds == [("update", "forwarded"), ("update", "forwarded"), ("noupdate", "held")]
    assert "current period: 2" in addon.status()


def test_noupdate_answers_pass_untouched(control):
    addon, tctx = control
    tctx.configure(addon, omaha_pin="4081.2.0", omaha_rollout="max=1/1h")
    flow = flow_for(encode(check("3975.2.0")), NOUPDATE)
    before = flow.response.content
    addon.response(flow)
    assert flow.response.content == before and META_UPSTREAM not in flow.metadata


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("omaha_block", "group:x"),
        ("omaha_pin", "latest"),
        ("omaha_rollout", "max=2"),
        ("omaha_block_events", "drop"),
    ],
)
def test_bad_values_are_refused_with_valid_forms_and_nothing_half_applies(control, option, value):
    addon, tctx = control
    tctx.configure(addon, omaha_pin="4081.2.0")
    before = addon.state
    with pytest.raises(exceptions.OptionsError, match="valid"):
        tctx.configure(addon, **{"omaha_block": "true", option: value})  # one bad value in the batch
    assert addon.state == before
    assert tctx.options.omaha_block == ""


def test_commands_change_the_options_live(control):
    addon, tctx = control
    out = tctx.master.commands.call("omaha.block", "track:beta")
    assert "block: track:beta" in out and addon.state.block is not None
    tctx.master.commands.call("omaha.unblock")
    assert addon.state.block is None
    tctx.master.commands.call("omaha.block")  # no argument: every machine
    assert tctx.options.omaha_block == "true"
    tctx.master.commands.call("omaha.unblock")
    tctx.master.commands.call("omaha.pin", "stable=4081.2.0")
    assert tctx.options.omaha_pin == "stable=4081.2.0"
    tctx.master.commands.call("omaha.unpin")
    tctx.master.commands.call("omaha.rollout", "percent=10")
    assert "rollout: 10%" in tctx.master.commands.call("omaha.status")
    with pytest.raises(exceptions.OptionsError):
        tctx.master.commands.call("omaha.pin", "soon")
    assert tctx.options.omaha_pin == ""


def test_warns_when_block_needs_a_lazy_connection_strategy(control, caplog):
    addon, tctx = control
    tctx.options.add_option("connection_strategy", str, "eager", "owned by mitmproxy's proxyserver addon")
    tctx.configure(
        addon, mode=["reverse:http://127.0.0.1:1"], connection_strategy="eager", omaha_block="true"
    )
    assert "connection_strategy=lazy" in caplog.text


def log_offer(path, machine: str, version: str, *, ts: float, from_version: str = "3975.2.0") -> None:
    """Log one forwarded upstream offer the way the observe addon does."""
    with Store(path) as store:
        store.record_exchange(
            flow_id=f"{machine}-{version}-{ts}",
            ts=ts,
            request_xml=encode(check(from_version, machine=machine)),
            response_xml=encode(offer(version)),
        )


def test_pin_replays_an_offer_seen_in_the_log(tmp_path):
    db = tmp_path / "omaha.db"
    log_offer(db, "a" * 32, "4081.2.0", ts=NOW.timestamp() - 86400)
    addon = OmahaControl(clock=lambda: NOW)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("omaha_db", str, "", "owned by OmahaObserve")
        tctx.configure(addon, omaha_db=str(db), omaha_pin="4081.2.0")
        flow = flow_for(encode(check("3975.2.0")), NOUPDATE)
        addon.response(flow)
        assert (sent(flow).kind, sent(flow).version) == ("update", "4081.2.0")
        assert (
            parse_response(flow.response.content).apps[0].updatecheck == offer("4081.2.0").apps[0].updatecheck
        )


def test_rollout_counts_grants_from_the_log_after_a_restart(tmp_path):
    db = tmp_path / "omaha.db"
    for i in range(2):
        log_offer(db, f"{i:032x}", "4152.2.0", ts=NOW.timestamp() - 600)
    addon = OmahaControl(clock=lambda: NOW)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("omaha_db", str, "", "owned by OmahaObserve")
        tctx.configure(addon, omaha_db=str(db), omaha_rollout="max=2/1h")
        again = flow_for(encode(check(machine=f"{1:032x}")), offer("4152.2.0"))
        addon.response(again)
        assert sent(again).kind == "update"  # already granted: re-served
        third = flow_for(encode(check(machine=f"{2:032x}")), offer("4152.2.0"))
        addon.response(third)
        assert sent(third).kind == "noupdate" and action(third) == "held"


def test_readme_documents_every_control_option_and_command():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("<!-- section:control -->") : readme.index("<!-- /section:control -->")]
    commands = ("omaha.block", "omaha.unblock", "omaha.pin", "omaha.unpin", "omaha.rollout", "omaha.status")
    missing = [name for name in (*OPTIONS, *commands) if f"`{name}" not in section]
    assert not missing


FLEET = [  # (machine's version, track, upstream answer): a fleet's mix, each asked many times
    (version, track, answer)
    for version in ("3975.2.0", "4081.2.0", "4152.2.0")
    for track in ("stable", "beta")
    for answer in (offer("4152.2.0"), offer("4081.2.0"), offer("3975.2.0"), NOUPDATE)
]


def _through(addon: OmahaControl, memo: bool) -> list[tuple[bytes, str, str | None, str]]:
    """Every fleet question five times (distinct machines), noupdate answers first (before
    any offer of the pin is seen), then in order: what each machine got."""
    questions = [q for q in FLEET if q[2] is NOUPDATE] + FLEET
    seen = []
    for n in range(5 * len(questions)):
        version, track, answer = questions[n % len(questions)]
        flow = flow_for(encode(check(version, machine=f"{n:032x}", track=track)), answer)
        addon._memo_ok = addon._memo_ok and memo
        addon.response(flow)
        seen.append((flow.response.content, action(flow), reason(flow), flow.marked))
    return seen


@pytest.mark.parametrize("pin", ["4081.2.0", "beta=4152.2.0,3975.2.0", "track:stable=4081.2.0"])
def test_remembered_decisions_are_the_decisions(pin: str) -> None:
    """A fleet asking the same questions gets from the memo exactly what deciding each
    flow gives, including offers replayed once the pinned version has been seen."""
    results = {}
    for memo in (True, False):
        addon = OmahaControl(clock=lambda: NOW)
        with taddons.context(addon) as tctx:
            tctx.configure(addon, omaha_pin=pin)
            results[memo] = _through(addon, memo)
            if memo:
                # each question decided once per set of offers seen, not once per machine
                assert 0 < len(addon._memo) < 2 * len(FLEET) < 5 * len(FLEET)
    assert results[True] == results[False]


def test_decisions_that_depend_on_the_machine_are_never_remembered(control) -> None:
    addon, tctx = control
    tctx.configure(addon, omaha_pin=f"machine:{'0' * 31}1=4081.2.0")
    assert not addon._memo_ok
    tctx.configure(addon, omaha_pin="4081.2.0", omaha_rollout="max=1/1h")
    assert not addon._memo_ok
    tctx.configure(addon, omaha_rollout="")
    assert addon._memo_ok
