"""OmahaObserve in a real mitmproxy context (taddons), with tflow flows carrying the samples."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from omaha_proxy.mitm import common
from omaha_proxy.mitm.observe import OmahaObserve, parse_db_path, parse_paths
from omaha_proxy.protocol.decode import parse_response
from omaha_proxy.store.store import Store
from tests.conftest import REPO, sample

CHECK = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
HASH_MISMATCH = sample(
    "flatcar-update_engine-0.4.10__request_09_event_error_hash_mismatch_nonprod_server.RECONSTRUCTED.xml"
)
OFFER = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml")
NOUPDATE = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
ACK = sample("nebraska-shape__event_ack.GENERATED.xml")
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"


def omaha_flow(body: bytes, *, method: bytes = b"POST", path: bytes = b"/v1/update/") -> http.HTTPFlow:
    req = tutils.treq(
        method=method, path=path, content=body, headers=http.Headers(content_type="text/xml"),
        host="public.update.flatcar-linux.net", port=443, scheme=b"https",
    )  # fmt: skip
    return tflow.tflow(req=req)


def upstream_answer(flow: http.HTTPFlow, body: bytes) -> None:
    flow.response = http.Response.make(200, body, {"Content-Type": "text/xml"})
    flow.response.timestamp_end = flow.request.timestamp_start + 1


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading the addon opens its default log, ./omaha.db, before a test can point it elsewhere.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def observe(tmp_path: Path) -> Iterator[tuple[OmahaObserve, taddons.context]]:
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_db=str(tmp_path / "omaha.db"))
        yield addon, tctx
    addon.done()


def run(addon: OmahaObserve, flow: http.HTTPFlow, response: bytes | None = ACK) -> Awaitable[None] | None:
    """The hooks mitmproxy calls for one flow; the upstream answers ``response`` unless an
    addon already answered or the flow has an error. Returns what the response hook returned
    (on a running loop: the awaitable that holds the answer until its exchange is committed)."""
    addon.request(flow)
    if flow.error is not None:
        addon.error(flow)
        return None
    if flow.response is None and response is not None:
        upstream_answer(flow, response)
    return addon.response(flow)


def test_update_check_is_logged_commented_and_forwarded_with_x_forwarded_for(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(CHECK)
    flow.request.headers["X-Forwarded-For"] = "6.6.6.6, 7.7.7.7"  # spoofed by the client
    run(addon, flow, OFFER)
    assert flow.request.headers.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert flow.request.content == CHECK
    assert flow.comment == "updatecheck 4081.2.0 stable → ok 4081.2.0"
    assert not flow.marked
    [ex] = addon.store.recent(5)
    assert (ex["flow_id"], ex["machine_id"], ex["client_ip"], ex["action"]) == (
        flow.id,
        MACHINE,
        "127.0.0.1",
        "forwarded",
    )
    assert (ex["request_xml"], ex["response_xml"], ex["duration_ms"]) == (CHECK, OFFER, 1000.0)
    assert addon.store.instance(MACHINE)["state_label"] == "UpdateGranted"


def test_error_event_comment_names_the_error(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(HASH_MISMATCH)
    run(addon, flow)
    assert "PayloadHashMismatch" in flow.comment and "non-production-server" in flow.comment


@pytest.mark.parametrize(
    ("method", "body"),
    [(b"GET", b""), (b"POST", b'{"json": true}'), (b"POST", OFFER), (b"GET", CHECK), (b"POST", b"")],
    ids=["get", "json", "omaha-response-posted", "get-with-omaha-body", "empty-post"],
)
def test_non_omaha_flows_pass_untouched_and_unlogged(observe, method: bytes, body: bytes) -> None:
    addon, _ = observe
    flow = omaha_flow(body, method=method)
    flow.request.headers["X-Forwarded-For"] = "6.6.6.6"
    run(addon, flow, b"hello")
    assert flow.request.headers["X-Forwarded-For"] == "6.6.6.6"
    assert flow.comment == "" and addon.store.count() == 0


def test_malformed_request_is_logged_with_its_error_and_forwarded_untouched(observe) -> None:
    addon, _ = observe
    # update_engine does not escape '"' in MACHINE_ALIAS
    broken = CHECK.replace(b'machinealias=""', b'machinealias="my "box""')
    flow = omaha_flow(broken)
    run(addon, flow, b"")
    assert flow.request.content == broken
    assert flow.request.headers["X-Forwarded-For"] == "127.0.0.1"
    [ex] = addon.store.recent(1)
    assert ex["request_xml"] == broken and ex["error"].startswith("request: not well-formed XML")
    assert flow.comment.startswith("unparsed request → HTTP 200 ! request: not well-formed XML")


def test_the_request_path_does_not_matter_unless_omaha_paths_is_set(observe) -> None:
    addon, tctx = observe
    run(addon, omaha_flow(CHECK, path=b"/anything/else?x=1"))
    assert addon.store.count() == 1
    tctx.configure(addon, omaha_paths=["/v1/update"])
    run(addon, omaha_flow(CHECK, path=b"/anything/else"))
    run(addon, omaha_flow(CHECK, path=b"/v1/update/"))
    assert addon.store.count() == 2


def test_transport_errors_are_logged(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(CHECK)
    flow.error = tflow.terr("server disconnected")
    run(addon, flow)
    [ex] = addon.store.recent(1)
    assert (ex["http_status"], ex["error"]) == (None, "server disconnected")
    assert flow.comment == "updatecheck 4081.2.0 stable → no response ! server disconnected"


def test_synthetic_answers_are_logged_with_their_action_and_marked(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(CHECK)
    common.answer(flow, parse_response(NOUPDATE), "blocked", "updates paused")  # an earlier addon
    run(addon, flow)
    assert flow.response.status_code == 200 and flow.response.headers["Content-Type"] == "text/xml"
    assert "X-Forwarded-For" not in flow.request.headers  # never went upstream
    assert flow.marked == ":no_entry:"
    assert flow.comment.endswith("→ noupdate [blocked: updates paused]")
    [ex] = addon.store.recent(1)
    assert (ex["action"], ex["reason"]) == ("blocked", "updates paused")


def test_rewritten_responses_keep_the_upstream_original(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(CHECK)
    addon.request(flow)
    upstream_answer(flow, OFFER)
    common.keep_upstream_response(flow)
    flow.response.content = NOUPDATE
    common.set_action(flow, "rewritten", "pinned to 4000")
    addon.response(flow)
    assert flow.marked == ":pencil2:"
    assert addon.store.latest_offer() == OFFER
    assert addon.store.recent(1)[0]["response_xml"] == NOUPDATE


def test_flows_seen_again_are_logged_once(observe) -> None:
    addon, _ = observe
    flow = omaha_flow(CHECK)
    run(addon, flow)
    flow.live = False  # as when mitmweb re-runs the hooks on uploaded or loaded flows
    addon.response(flow)
    assert addon.store.count() == 1


def test_redact_option_hashes_machine_ids(observe) -> None:
    addon, tctx = observe
    tctx.configure(addon, omaha_redact=True)
    run(addon, omaha_flow(CHECK))
    [ex] = addon.store.recent(1)
    assert ex["machine_id"] != MACHINE and MACHINE.encode() not in ex["request_xml"]


def test_omaha_xff_false_leaves_the_header_alone(observe) -> None:
    addon, tctx = observe
    tctx.configure(addon, omaha_xff=False)
    flow = omaha_flow(CHECK)
    run(addon, flow)
    assert "X-Forwarded-For" not in flow.request.headers


HOLDING_WRITERS = ("process", "loop")  # the writers that hold the answer until a later commit


async def answered(held: Awaitable[None] | None) -> None:
    """Wait until the answer is released (None: it never was held, e.g. the write failed)."""
    if held is not None:
        await asyncio.wait_for(held, 10)
    await asyncio.sleep(0)  # what the addon scheduled on the loop (a shutdown) runs now


@pytest.mark.parametrize("writer", HOLDING_WRITERS)
async def test_a_failed_log_write_shuts_the_proxy_down_unless_opted_out(
    tmp_path: Path, caplog, writer: str
) -> None:
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:  # on the test's running loop: shutdown() is scheduled there
        tctx.configure(
            addon, omaha_db=str(tmp_path / "omaha.db"), omaha_log_writer=writer, omaha_log_hold=True
        )
        addon.store.db.conn.execute("DROP TABLE events")  # the writer process sees it too
        await answered(run(addon, omaha_flow(HASH_MISMATCH)))  # released all the same
        assert tctx.master.should_exit.is_set()
        assert "cannot write to the Omaha log" in caplog.text and "shutting down" in caplog.text
        tctx.master.should_exit.clear()
        tctx.configure(addon, omaha_log_required=False)
        flow = omaha_flow(HASH_MISMATCH)
        await answered(run(addon, flow))
        assert not tctx.master.should_exit.is_set()
        assert flow.response.content == ACK  # traffic is never blocked by the log
        addon.done()


def committed(path: Path) -> int:
    """Exchanges another connection sees (what the CLI and other processes read)."""
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT COUNT(*) FROM exchanges").fetchone()[0])


@pytest.mark.parametrize("writer", HOLDING_WRITERS)
async def test_with_omaha_log_hold_each_answer_waits_for_its_commit(tmp_path: Path, writer: str) -> None:
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, omaha_db=str(tmp_path / "omaha.db"), omaha_log_writer=writer, omaha_log_hold=True
        )
        held = [run(addon, omaha_flow(CHECK)) for _ in range(3)]
        assert all(answer is not None and not answer.done() for answer in held)
        await asyncio.wait_for(asyncio.gather(*held), 10)  # type: ignore[arg-type]
        assert committed(tmp_path / "omaha.db") == 3  # visible to other connections once released
        tctx.configure(addon, omaha_log_writer="hook")
        assert run(addon, omaha_flow(CHECK)) is None  # committed in the hook, nothing to wait for
        assert committed(tmp_path / "omaha.db") == 4
        addon.done()


async def test_the_writer_process_holds_the_answer_while_the_log_is_locked(tmp_path: Path) -> None:
    """Held means held: while another connection holds the write lock the writer cannot
    commit, and the answer does not leave; it leaves as soon as the commit succeeds."""
    path = tmp_path / "omaha.db"
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_db=str(path), omaha_log_hold=True)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock (the writer waits: busy_timeout 5 s)
        answer = run(addon, omaha_flow(CHECK))
        await asyncio.sleep(1.0)
        assert answer is not None and not answer.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(answer, 10)
        assert committed(path) == 1
        addon.done()


async def test_by_default_the_answer_leaves_at_once_and_its_exchange_follows(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_db=str(path))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the log is locked: the answers must not wait for it
        assert [run(addon, omaha_flow(CHECK)) for _ in range(3)] == [None, None, None]
        other.execute("COMMIT")
        other.close()
        for _ in range(100):  # committed shortly after (the writer process waited for the lock)
            await asyncio.sleep(0.05)
            if committed(path) == 3:
                break
        assert committed(path) == 3
        tctx.configure(addon, omaha_log_writer="loop")  # on the loop: committed on its next turn
        assert run(addon, omaha_flow(CHECK)) is None
        await asyncio.sleep(0)
        assert committed(path) == 4
        addon.done()


async def test_a_lost_writer_process_releases_its_answers_and_is_loud(tmp_path: Path, caplog) -> None:
    path = tmp_path / "omaha.db"
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_db=str(path), omaha_log_required=False, omaha_log_hold=True)
        await asyncio.wait_for(run(addon, omaha_flow(CHECK)), 10)
        assert addon._writer is not None
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # keeps the next exchange waiting in the writer
        answer = run(addon, omaha_flow(CHECK))
        os.kill(addon._writer.pid, signal.SIGKILL)
        await asyncio.wait_for(answer, 10)  # released: traffic is never blocked by the log
        other.execute("COMMIT")
        other.close()
        assert "log writer exited" in caplog.text and "1 exchange(s) not logged" in caplog.text
        # From then on the exchanges are written on the event loop, still held until committed.
        await asyncio.wait_for(run(addon, omaha_flow(CHECK)), 10)
        assert "writing the log on the event loop" in caplog.text
        assert committed(path) == 2
        addon.done()


async def test_a_writer_lost_with_nothing_pending_is_replaced_by_the_loop_without_a_shutdown(
    tmp_path: Path, caplog
) -> None:
    path = tmp_path / "omaha.db"
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_db=str(path), omaha_log_hold=True)
        await asyncio.wait_for(run(addon, omaha_flow(CHECK)), 10)  # committed and acknowledged
        assert addon._writer is not None
        os.kill(addon._writer.pid, signal.SIGKILL)
        for _ in range(100):  # the loop notices the writer's end of the pipe closing
            await asyncio.sleep(0.02)
            if not addon._writer.alive:
                break
        assert "nothing was waiting to be logged" in caplog.text
        await answered(run(addon, omaha_flow(CHECK)))  # written on the event loop instead
        assert not tctx.master.should_exit.is_set() and committed(path) == 2
        addon.done()


async def test_a_failed_commit_on_the_loop_is_loud_but_releases_the_answers(tmp_path: Path, caplog) -> None:
    addon = OmahaObserve()
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, omaha_db=str(tmp_path / "omaha.db"), omaha_log_required=False, omaha_log_writer="loop",
            omaha_log_hold=True,
        )  # fmt: skip
        waiter = run(addon, omaha_flow(CHECK))
        addon.store.db.conn.close()  # the commit will fail
        await asyncio.wait_for(waiter, 1)
        assert "cannot commit to the Omaha log" in caplog.text
        addon.done()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("omaha_db", "/nonexistent/dir/omaha.db", "does not exist"),
        ("omaha_db", "", "must be a file path"),
        ("omaha_paths", ["v1/update"], "starting with '/'"),
        ("omaha_log_writer", "thread", "process, loop, hook"),
    ],
)
def test_bad_options_are_refused_with_a_message_naming_valid_values(observe, option, value, message) -> None:
    addon, tctx = observe
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, **{option: value})


def test_option_parsers() -> None:
    assert parse_paths(["/v1/update", "/"]) == ("/v1/update", "/")
    assert parse_db_path("x.db") == Path("x.db")
    with pytest.raises(ValueError, match="directory"):
        parse_db_path(str(REPO))


def test_changing_omaha_db_moves_the_log(observe, tmp_path: Path) -> None:
    addon, tctx = observe
    tctx.configure(addon, omaha_db=str(tmp_path / "other.db"))
    run(addon, omaha_flow(CHECK))
    with Store(tmp_path / "other.db") as other:
        assert other.count() == 1


def test_common_parses_each_body_once_and_validates_actions() -> None:
    flow = omaha_flow(CHECK)
    assert common.is_omaha_request(flow)
    first = common.omaha_request(flow)
    assert first is common.omaha_request(flow) and first.apps[0].machineid == MACHINE
    flow.request.content = HASH_MISMATCH  # another addon rewrote the body: parse again
    assert common.omaha_request(flow).apps[0].events[0].errorcode == 268435466
    with pytest.raises(ValueError, match="valid: forwarded, rewritten"):
        common.set_action(flow, "eaten")
    assert common.omaha_response(flow) is None and common.response_error(flow) is None
    upstream_answer(flow, OFFER)
    assert common.omaha_response(flow) is common.omaha_response(flow)
    flow.response.content = b"<html>"
    assert common.omaha_response(flow) is None and "not well-formed" in common.response_error(flow)
    assert not common.is_answered(flow)
    common.set_action(flow, "replayed", "recording r1")
    assert common.is_answered(flow) and common.reason(flow) == "recording r1"


def test_entry_script_loads_the_observer_and_the_contentview(tmp_path: Path) -> None:
    from mitmproxy import contentviews

    with taddons.context() as tctx:
        module = tctx.script(str(REPO / "addons" / "omaha.py"))
        assert [type(a).__name__ for a in module.addons][-1] == "OmahaObserve"
        assert "omaha" in contentviews.registry
        for addon in module.addons:
            if hasattr(addon, "done"):
                addon.done()
