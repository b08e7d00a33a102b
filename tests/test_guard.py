"""OmahaGuard's options and hooks, without a proxy (mitmproxy's taddons); the real mitmdump
behaviour is in test_hostile.py (huge bodies) and test_faults.py (fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.mitm import common
from omaha_proxy.mitm.guard import OmahaGuard, _Head, parse_fallback, parse_max_body
from omaha_proxy.replay.recording import RecordingBuilder, dump
from tests.support.hostile import REQUEST
from tests.support.upstream import OFFER


def test_max_body_below_4096_bytes_is_refused() -> None:
    assert parse_max_body(4096) == 4096
    with pytest.raises(ValueError, match="at least 4096"):
        parse_max_body(100)


def test_fallback_spec_is_off_noupdate_or_a_recording(tmp_path: Path) -> None:
    assert parse_fallback("") is None and parse_fallback("off") is None
    fallback = parse_fallback("noupdate")
    assert fallback is not None and fallback.player is None
    with pytest.raises(ValueError, match="off, noupdate or a recording file"):
        parse_fallback(str(tmp_path / "missing.json"))
    rec = tmp_path / "r.json"
    builder = RecordingBuilder(source="test", created="2026-11-27T00:00:00Z")
    builder.add(REQUEST, OFFER)
    dump(builder.recording(), rec)
    loaded = parse_fallback(str(rec))
    assert loaded is not None and loaded.player is not None


def test_guard_streams_large_bodies_and_switches_to_lazy_for_a_fallback() -> None:
    guard = OmahaGuard()
    with taddons.context(Proxyserver(), guard) as tctx:
        tctx.configure(guard, omaha_max_body=1 << 20)  # as at load: every option is 'updated'
        assert tctx.options.stream_large_bodies == str(1 << 20)
        tctx.configure(guard, omaha_max_body=8192)
        assert tctx.options.stream_large_bodies == "8192"
        tctx.configure(guard, stream_large_bodies="5000")  # a smaller user choice is kept
        assert tctx.options.stream_large_bodies == "5000"
        tctx.configure(guard, omaha_fallback="noupdate")
        assert tctx.options.connection_strategy == "lazy"
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(guard, omaha_max_body=10)
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(guard, omaha_fallback="/nonexistent.json")


def test_head_passes_every_chunk_through_and_keeps_only_the_limit() -> None:
    head = _Head(10)
    assert [head(b"abcdef"), head(b"ghijkl"), head(b"")] == [b"abcdef", b"ghijkl", b""]
    assert (bytes(head.head), head.total) == (b"abcdefghij", 12)


def test_garbage_answer_is_replaced_by_noupdate_with_the_upstreams_body_kept() -> None:
    guard = OmahaGuard()
    with taddons.context(guard) as tctx:
        tctx.configure(guard, omaha_fallback="noupdate")
        flow = tflow.tflow(resp=True)
        flow.request.method = "POST"
        flow.request.content = REQUEST
        flow.response.content = b"<html>oops</html>"
        guard.response(flow)
    assert update_engine_verdict(flow.response.content or b"").kind == "noupdate"
    assert common.action(flow) == "replayed" and "garbage" in (common.reason(flow) or "")
    assert common.upstream_response(flow) == b"<html>oops</html>"


@pytest.mark.parametrize("status", [500, 503])
def test_500_and_503_are_left_alone_so_update_engine_backs_off(status: int) -> None:
    guard = OmahaGuard()
    with taddons.context(guard) as tctx:
        tctx.configure(guard, omaha_fallback="noupdate")
        flow = tflow.tflow(resp=True)
        flow.request.method = "POST"
        flow.request.content = REQUEST
        flow.response.status_code = status
        flow.response.content = b"busy"
        guard.response(flow)
    assert flow.response.content == b"busy" and common.action(flow) == "forwarded"
