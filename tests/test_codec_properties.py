"""Property-based round trips: any model the codec can express survives encode -> parse."""

from __future__ import annotations

import contextlib
from dataclasses import fields
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omaha_proxy import CodecError, encode, parse, parse_request, parse_response
from omaha_proxy.protocol.encode import _compact_response, _write_response, _Writer
from omaha_proxy.protocol.model import (
    Ack,
    Action,
    AppRequest,
    AppResponse,
    Data,
    DayStart,
    Event,
    Hw,
    Manifest,
    Os,
    Package,
    Ping,
    Request,
    Response,
    UpdateCheck,
    UpdateCheckResponse,
    Url,
    XmlElement,
)
from tests.conftest import DATA

# XML 1.0 characters only (no control characters, no surrogates); attribute values may be anything else.
_xml_char = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\t\n")
text = st.text(_xml_char, max_size=12)
maybe_text = st.none() | text
maybe_int = st.none() | st.integers(min_value=-(2**31), max_value=2**40)
name = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}\Z", fullmatch=True)
# Element text is kept only when it is not blank (indentation is formatting).
content = st.none() | st.text(_xml_char, min_size=1, max_size=12).filter(lambda s: s.strip() != "")


def _extra(cls: type) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    known = {xml for _, xml, _ in cls._ATTRS}  # type: ignore[attr-defined]
    keys = name.filter(lambda k: k not in known and not k.startswith("xml"))
    return st.lists(st.tuples(keys, text), max_size=2, unique_by=lambda kv: kv[0]).map(tuple)


xml_element = st.recursive(
    st.builds(
        XmlElement,
        tag=name,
        attrs=st.lists(st.tuples(name, text), max_size=2, unique_by=lambda kv: kv[0]).map(tuple),
        text=content,
    ),
    lambda children: st.builds(
        XmlElement,
        tag=name,
        attrs=st.just(()),
        text=st.none(),
        children=st.lists(children, min_size=1, max_size=2).map(tuple),
    ),
    max_leaves=4,
)
unknown = st.lists(xml_element.filter(lambda e: e.tag not in _RESERVED), max_size=1).map(tuple)
_RESERVED = {
    "ping",
    "updatecheck",
    "event",
    "data",
    "app",
    "os",
    "hw",
    "daystart",
    "urls",
    "url",
    "manifest",
    "packages",
    "package",
    "actions",
    "action",
}


def model(cls: type, **overrides: Any) -> st.SearchStrategy[Any]:
    """A strategy for ``cls`` with every attribute field drawn (ints where the model says so)."""
    ints = {field for field, _, is_int in cls._ATTRS if is_int}  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif f.name == "extra":
            kwargs[f.name] = _extra(cls)
        elif f.name == "unknown":
            kwargs[f.name] = unknown
        elif f.name in {a for a, _, _ in cls._ATTRS}:  # type: ignore[attr-defined]
            kwargs[f.name] = maybe_int if f.name in ints else maybe_text
    return st.builds(cls, **kwargs)


event = model(Event, eventtype=st.integers(min_value=0, max_value=2**32))
data = model(Data, text=content)
app_request = model(
    AppRequest,
    ping=st.none() | model(Ping),
    updatecheck=st.none() | model(UpdateCheck),
    events=st.lists(event, max_size=2).map(tuple),
    data=st.lists(data, max_size=1).map(tuple),
)
request = model(
    Request,
    hw=st.none() | model(Hw),
    os=st.none() | model(Os),
    apps=st.lists(app_request, max_size=2).map(tuple),
)
manifest = model(
    Manifest,
    packages=st.none() | st.lists(model(Package), max_size=2).map(tuple),
    actions=st.none() | st.lists(model(Action), max_size=2).map(tuple),
)
updatecheck = model(
    UpdateCheckResponse,
    urls=st.none() | st.lists(model(Url), max_size=2).map(tuple),
    manifests=st.lists(manifest, max_size=2).map(tuple),
)
app_response = model(
    AppResponse,
    ping=st.none() | model(Ack),
    updatecheck=st.none() | updatecheck,
    events=st.lists(model(Ack), max_size=2).map(tuple),
    data=st.lists(data, max_size=1).map(tuple),
)
response = model(
    Response, daystart=st.none() | model(DayStart), apps=st.lists(app_response, max_size=2).map(tuple)
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(request, st.booleans())
def test_any_request_survives_encode_then_parse(doc: Request, indent: bool) -> None:
    assert parse_request(encode(doc, indent=indent)) == doc


@SETTINGS
@given(response, st.booleans())
def test_any_response_survives_encode_then_parse(doc: Response, indent: bool) -> None:
    assert parse_response(encode(doc, indent=indent)) == doc


def _general_writer(doc: Response) -> str:
    w = _Writer(None)
    _write_response(w, doc)
    return "".join(w.out)


@SETTINGS
@given(response)
def test_the_compact_response_fast_path_writes_what_the_general_writer_writes(doc: Response) -> None:
    assert _compact_response(doc) == _general_writer(doc)


def test_the_compact_response_fast_path_matches_on_every_sample() -> None:
    responses = [p for p in DATA.glob("*.xml") if "MALFORMED" not in p.name]
    checked = 0
    for path in responses:
        with contextlib.suppress(CodecError):
            doc = parse_response(path.read_bytes())
            assert _compact_response(doc) == _general_writer(doc), path.name
            checked += 1
    assert checked >= 20


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_anything_but_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        parse(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request, st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
def test_corrupted_documents_fail_cleanly(doc: Request, at: int, junk: bytes) -> None:
    encoded = encode(doc)
    at = min(at, len(encoded))
    with contextlib.suppress(CodecError):
        parse(encoded[:at] + junk + encoded[at:])
