"""Bounded fuzzing of everything that reads untrusted bytes: the codec, the proxy's Omaha
detection and the log. Invariants (the same as ``tools/fuzz.py``'s longer atheris run):

- ``parse``/``parse_request``/``parse_response`` either return a document or raise
  :class:`CodecError` — never another exception, never a hang;
- a parsed document survives ``encode`` -> ``parse`` unchanged (what the proxy rewrites and
  forwards is what it read);
- ``sniff`` and the proxy's flow helpers never raise;
- the log stores any body, byte for byte.

Inputs: arbitrary bytes, and mutations (byte flips, cuts, splices, duplicated slices) of the
real sample documents, which reach much deeper into the codec than random bytes do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from mitmproxy.test import tflow

from omaha_proxy import CodecError, encode, parse, parse_request, parse_response
from omaha_proxy.mitm import common
from omaha_proxy.protocol.decode import sniff
from omaha_proxy.store.store import Store
from tests.support.hostile import hostile_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _roundtrip(data: bytes) -> None:
    for fn in (parse, parse_request, parse_response):
        try:
            doc = fn(data)
        except CodecError:
            continue
        assert parse(encode(doc)) == doc


@FUZZ
@given(hostile_bytes)
def test_codec_raises_only_codec_errors_and_round_trips_what_it_accepts(data: bytes) -> None:
    sniff(data)
    _roundtrip(data)


@FUZZ
@given(hostile_bytes)
def test_proxy_flow_helpers_never_raise_on_any_body(data: bytes) -> None:
    flow = tflow.tflow(resp=True)
    flow.request.method = "POST"
    flow.request.content = data
    flow.response.content = data
    common.is_omaha_request(flow)
    common.omaha_request(flow)
    common.request_error(flow)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("fuzz") / "omaha.db")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=hostile_bytes, response=hostile_bytes)
def test_log_keeps_any_body_byte_for_byte(store: Store, request: bytes, response: bytes) -> None:
    flow_id = f"fuzz-{store.count()}"
    exchange_id = store.record_exchange(flow_id=flow_id, ts=0.0, request_xml=request, response_xml=response)
    row = store.exchange(exchange_id)
    assert row is not None
    assert (row["request_xml"] or b"") == request and (row["response_xml"] or b"") == response


CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_inputs_the_fuzzers_found_parse_or_refuse_cleanly_and_round_trip(path: Path) -> None:
    """Every crash the fuzzers found (tests/fuzz_corpus/) stays fixed."""
    _roundtrip(path.read_bytes())
