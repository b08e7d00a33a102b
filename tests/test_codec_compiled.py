"""The compiled walker (``omaha_proxy/protocol/_cwalk.pyx``) decodes exactly as the Python one.

codec.py's Python walker is the reference. For every sample, every fuzz-corpus entry,
hand-made corner cases, mutated samples and generated documents, both walkers get the same
parsed bytes and must return the same objects (down to each instance's ``__dict__``) or
raise the same :class:`CodecError` (message, line, column).

The rest of the suite runs whichever walker is active (``codec.IMPLEMENTATION``): the
compiled one when it was built, the Python one with ``OMAHA_PROXY_PURE=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omaha_proxy import encode
from omaha_proxy.protocol import decode as codec
from omaha_proxy.protocol.errors import CodecError
from tests.conftest import DATA
from tests.support.hostile import hostile_bytes
from tests.test_codec_properties import request, response

PURE = os.environ.get("OMAHA_PROXY_PURE", "") not in ("", "0")
COMPILED = codec._COMPILED
needs_compiled = pytest.mark.skipif(
    COMPILED is None, reason="compiled walker not built (no C compiler at install?): nothing to compare"
)
FILES = sorted([*DATA.glob("*.xml"), *(DATA.parent / "fuzz_corpus").glob("*")])

# Corner cases the samples do not reach: each hits a rule of codec.py's walker.
CORNERS = {
    "namespaced attributes": b'<request xmlns:p="urn:p" p:protocol="3.0" xml:lang="en" version="1"/>',
    "namespaced elements": b'<request xmlns:p="urn:p"><p:app appid="x"/><app><p:ping active="1"/></app></request>',
    "default namespace root": b'<request xmlns="urn:omaha" protocol="3.0"/>',
    "wrong root": b'<response protocol="3.0"><app/></response>',
    "two bad integers (first in the model's order wins)": b'<request><app><ping a="x" active="y"/></app></request>',
    "integer with spaces and underscores": b'<request><app><ping active=" 1_0 " rd="-3"/></app></request>',
    "event without eventtype": b'<request><app><event eventresult="1"/></app></request>',
    "event with bad eventtype": b'<request><app><event eventtype="three"/></app></request>',
    "repeated ping and updatecheck": b"<request><app><ping/><ping a='1'/><updatecheck/><updatecheck/></app></request>",
    "repeated os and hw": b"<request><os/><os platform='x'/><hw/><hw sse='1'/></request>",
    "entities and references in attributes": b'<request version="a&amp;b&#10;c&lt;&#x263A;" dedup=""/>',
    "unknown attributes interleaved": b'<request z="1" protocol="3.0" a="2" version="v" m=""/>',
    "attributes out of the model's order": b'<request><app fp="f" appid="a" tag="t" version="v" cohort="c"/></request>',
    "absent defaults": b"<response><app><ping/><event/><event status='x'/></app></response>",
    "data with text, CDATA and children": b"<request><app><data name='n'>t<![CDATA[c]]><x/></data><data/></app></request>",
    "leaf with children and text": b"<request><os>text<x a='1'>y</x><y/></os></request>",
    "unknown elements everywhere": b"<request><foo/><app><bar b='1'><baz/></bar></app><hw><q/></hw></request>",
    "wrapper with attribute": b"<response><app><updatecheck><urls x='1'><url codebase='c'/></urls></updatecheck></app></response>",
    "wrapper with foreign child": b"<response><app><updatecheck><urls><url/><link/></urls></updatecheck></app></response>",
    "wrapper with namespaced item": b"<response xmlns:p='urn:p'><app><updatecheck><urls><p:url/></urls></updatecheck></app></response>",
    "repeated wrappers": b"<response><app><updatecheck><urls/><urls><url/></urls><manifest><packages/><packages><package size='1'/></packages><actions/><actions><action event='x'/></actions></manifest></updatecheck></app></response>",
    "bad package size": b"<response><app><updatecheck><manifest><packages><package size='big'/></packages></manifest></updatecheck></app></response>",
    "renamed attributes": b"<response><app><updatecheck PollInterval='5' status='ok'><manifest><actions><action DisplayVersion='1' display_version='2'/></actions></manifest></updatecheck></app></response>",
    "text and tails around children": b"<request>a<app>b<ping/>c</app>d<os/>e</request>",
}


def _state(value: Any) -> Any:
    """Everything a decoded value holds: == on dataclasses compares fields only, this also
    compares each instance's ``__dict__`` (which keys were set) and the exact types."""
    if is_dataclass(value):
        return type(value).__name__, {k: _state(v) for k, v in sorted(vars(value).items())}
    if isinstance(value, tuple):
        return tuple(_state(v) for v in value)
    return type(value).__name__, value


def _outcome(walk: Callable[[Any], Any], data: bytes) -> Any:
    try:
        return _state(walk(codec._parse_xml(data, codec.DEFAULT_MAX_SIZE)))
    except CodecError as e:
        return "CodecError", str(e), e.line, e.column


def _assert_same(data: bytes) -> None:
    assert COMPILED is not None
    walk_request, walk_response = COMPILED
    assert _outcome(walk_request, data) == _outcome(codec._request, data)
    assert _outcome(walk_response, data) == _outcome(codec._response, data)


def test_the_active_walker_is_reported() -> None:
    """Shows in the summary (-ra) when the suite did not run the compiled walker."""
    if PURE:
        assert codec.IMPLEMENTATION == "python"
        pytest.skip("OMAHA_PROXY_PURE is set: the suite runs the Python walker")
    if COMPILED is None:
        assert codec.IMPLEMENTATION == "python"
        pytest.skip("compiled walker not built: the suite runs the Python walker")
    assert codec.IMPLEMENTATION == "compiled"


@needs_compiled
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_sample_decodes_the_same(path: Path) -> None:
    _assert_same(path.read_bytes())


@needs_compiled
@pytest.mark.parametrize("data", CORNERS.values(), ids=list(CORNERS))
def test_corner_cases_decode_the_same(data: bytes) -> None:
    _assert_same(data)


def test_corner_cases_reach_both_outcomes() -> None:
    """The corner cases include documents that decode and documents that fail."""
    outcomes = {_outcome(codec._request, d)[0] == "CodecError" for d in CORNERS.values()}
    assert outcomes == {True, False}


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_compiled
@SETTINGS
@given(st.one_of(request, response), st.booleans())
def test_generated_documents_decode_the_same(doc: Any, indent: bool) -> None:
    _assert_same(encode(doc, indent=indent))


@needs_compiled
@SETTINGS
@given(hostile_bytes)
def test_mutated_samples_and_arbitrary_bytes_decode_the_same(data: bytes) -> None:
    _assert_same(data)
