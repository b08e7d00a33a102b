"""Omaha v3 codec: bytes in, typed objects out, and back (sans-IO, lxml).

The parser is hardened: documents with a DOCTYPE are refused (real Omaha documents never
have one), entities are never resolved, nothing is loaded from the network, and bodies over
``max_size`` are refused before parsing. Every error is a :class:`CodecError` with the
line and column libxml2 reports.

The encoder lives in :mod:`omaha_proxy.protocol.encode`; ``encode`` is re-exported here.

The tree lxml parses is turned into the model by the compiled walker (``_cwalk.pyx``) when
it was built at install, else by the Python walker below, which is the reference
(``IMPLEMENTATION`` says which; ``OMAHA_PROXY_PURE=1`` forces the Python one).

Nothing is lost: attributes the model does not name go to ``extra`` and unknown child
elements to ``unknown`` (both in document order), so ``encode(parse(x))`` keeps every
element, attribute and value of ``x``. Known attributes are written in the model's order
(update_engine's for requests, Nebraska's for responses); whitespace and quoting may differ.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from typing import Any, Literal

from lxml import etree

from omaha_proxy.protocol.encode import XML_DECLARATION, encode
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import (
    Ack,
    Action,
    AppRequest,
    AppResponse,
    Data,
    DayStart,
    Document,
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

DEFAULT_MAX_SIZE = 1 << 20  # 1 MiB; Nebraska caps requests at 64 KiB, real bodies are < 4 KiB

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe: one per thread. No DTD, no entity expansion, no
    # network, no huge trees (reference §6 "XML parser exposure").
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_blank_text=True,  # indentation is formatting; also makes the tree smaller
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
        _local.parser = parser
    return parser


# ------------------------------------------------------------------------------- parsing


_POSITION = re.compile(r",? line \d+, column \d+$")


def _parse_xml(data: bytes, max_size: int) -> Any:
    if not data:
        raise CodecError("empty body")
    if len(data) > max_size:
        raise CodecError(f"body of {len(data)} bytes exceeds the limit of {max_size} bytes")
    # A one-byte search first: it is memchr-fast, a two-byte one is not.
    if b"!" in data and (b"<!DOCTYPE" in data or b"<!ENTITY" in data):
        raise CodecError("document has a DOCTYPE; Omaha documents never do (refused for safety)")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        if not data.strip():
            raise CodecError("empty body") from e
        line, column = e.position if e.position else (None, None)
        message = _POSITION.sub("", e.msg or str(e))
        raise CodecError(f"not well-formed XML: {message}", line=line, column=column) from e
    except (ValueError, TypeError) as e:
        raise CodecError(f"cannot parse body: {e}") from e
    if data[:1] != b"<" and getattr(root.getroottree().docinfo, "doctype", None):
        # Other encodings (UTF-16...) escape the byte check above.
        raise CodecError("document has a DOCTYPE; Omaha documents never do (refused for safety)")
    return root


def sniff(data: bytes) -> Literal["request", "response"] | None:
    """Cheaply tell whether ``data`` looks like an Omaha request or response document.

    Looks only at the first element name (after an optional BOM, XML declaration, comments
    or whitespace). Returns None for anything else. Never raises.
    """
    head = data[:512]
    m = _SNIFF.search(head)
    if m is None:
        return None
    name = m.group(1)
    if name == b"request":
        return "request"
    if name == b"response":
        return "response"
    return None


_SNIFF = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<(request|response)[\s>/]", re.S
)

_XML_NS = "{http://www.w3.org/XML/1998/namespace}"


def _attr_name(key: str) -> str:
    if key[0] == "{":
        if key.startswith(_XML_NS):
            return "xml:" + key[len(_XML_NS) :]
        return key  # Clark notation; the encoder declares the namespace
    return key


def _where(el: Any) -> str:
    return f" (line {el.sourceline})" if el.sourceline else ""


def _int(value: str, name: str, el: Any) -> int:
    try:
        return int(value)
    except ValueError:
        raise CodecError(
            f"<{el.tag}> attribute {name}={value!r} is not an integer", line=el.sourceline
        ) from None


class _Spec:
    """Per-class decoding table derived from the model's ``_ATTRS``."""

    __slots__ = ("absent", "ints", "names", "rename")

    def __init__(self, cls: type) -> None:
        attrs = cls._ATTRS  # type: ignore[attr-defined]
        # Attributes whose model default is not None (Ack.status="ok", Request.protocol="3.0")
        # must decode to None when absent, not to the default.
        self.absent = {f: None for f, _, _ in attrs if getattr(cls, f, None) is not None}
        self.names = frozenset(xml for _, xml, _ in attrs)
        self.rename = {xml: field for field, xml, _ in attrs if field != xml}
        self.ints = tuple((xml, field) for field, xml, is_int in attrs if is_int)


_SPECS: dict[type, _Spec] = {}
_new = object.__new__


def _make[T](cls: type[T], kw: dict[str, Any]) -> T:
    """Build a model instance from decoded fields without running the dataclass ``__init__``.

    Absent fields fall back to the class-level defaults, so the result equals
    ``cls(**kw)``; the decoder always supplies the fields that have no default.
    """
    obj = _new(cls)
    obj.__dict__.update(kw)
    return obj


def _attrs(el: Any, cls: type) -> dict[str, Any]:
    """Return the model fields of an element's attributes; unknown ones go to ``extra``."""
    items = el.items()
    spec = _SPECS[cls]
    if not items:
        return dict(spec.absent)
    kw = dict(items)
    if not spec.names.issuperset(kw):
        kw = {}
        extra = []
        for key, value in items:
            if key in spec.names:
                kw[key] = value
            else:
                extra.append((_attr_name(key), value))
        kw["extra"] = tuple(extra)
    if spec.ints:
        for xml, field in spec.ints:
            value = kw.get(xml)
            if value is not None:
                kw[field] = _int(value, xml, el)
    if spec.rename:
        rename = spec.rename
        kw = {rename.get(k, k): v for k, v in kw.items()}  # keeps document order
    if spec.absent:
        for field in spec.absent:
            kw.setdefault(field, None)
    return kw


_SPECS.update(
    (cls, _Spec(cls))
    for cls in (Request, Hw, Os, AppRequest, Ping, UpdateCheck, Event, Data, Response, DayStart,
                AppResponse, Ack, UpdateCheckResponse, Url, Manifest, Package, Action)
)  # fmt: skip


def _unknown(el: Any) -> XmlElement:
    children = tuple(_unknown(c) for c in el if isinstance(c.tag, str))
    return XmlElement(
        tag=el.tag,
        attrs=tuple((_attr_name(k), v) for k, v in el.items()),
        text=el.text if el.text is not None and (el.text.strip() or not children) else None,
        children=children,
    )


def _children(el: Any) -> tuple[XmlElement, ...]:
    return tuple(_unknown(c) for c in el if isinstance(c.tag, str))


def _leaf[T](el: Any, cls: type[T]) -> T:
    """An element whose children the model does not name: all of them go to ``unknown``."""
    kw = _attrs(el, cls)
    if len(el):
        kw["unknown"] = _children(el)
    return _make(cls, kw)


def _data(el: Any) -> Data:
    kw = _attrs(el, Data)
    kw["text"] = el.text
    if len(el):
        kw["unknown"] = _children(el)
    return _make(Data, kw)


def _event(el: Any) -> Event:
    event = _leaf(el, Event)
    if "eventtype" not in event.__dict__:
        raise CodecError("<event> has no eventtype attribute", line=el.sourceline)
    return event


def _app_request(el: Any) -> AppRequest:
    kw = _attrs(el, AppRequest)
    events: list[Event] = []
    data: list[Data] = []
    unknown: list[XmlElement] = []
    for child in el:
        tag = child.tag
        if tag == "ping" and "ping" not in kw:
            kw["ping"] = _leaf(child, Ping)
        elif tag == "updatecheck" and "updatecheck" not in kw:
            kw["updatecheck"] = _leaf(child, UpdateCheck)
        elif tag == "event":
            events.append(_event(child))
        elif tag == "data":
            data.append(_data(child))
        elif isinstance(tag, str):
            unknown.append(_unknown(child))  # includes a repeated <ping>/<updatecheck>
    if events:
        kw["events"] = tuple(events)
    if data:
        kw["data"] = tuple(data)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(AppRequest, kw)


def _check_root(root: Any, name: str) -> None:
    if root.tag != name:
        tag = root.tag if isinstance(root.tag, str) else "?"
        raise CodecError(f"expected an Omaha <{name}> document, got <{tag}>", line=root.sourceline)


def _request(root: Any) -> Request:
    """The Request of a parsed root element (the reference walker; see _load_compiled)."""
    _check_root(root, "request")
    kw = _attrs(root, Request)
    apps: list[AppRequest] = []
    unknown: list[XmlElement] = []
    for child in root:
        tag = child.tag
        if tag == "app":
            apps.append(_app_request(child))
        elif tag == "os" and "os" not in kw:
            kw["os"] = _leaf(child, Os)
        elif tag == "hw" and "hw" not in kw:
            kw["hw"] = _leaf(child, Hw)
        elif isinstance(tag, str):
            unknown.append(_unknown(child))
    kw["apps"] = tuple(apps)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Request, kw)


def _wrapped[T](el: Any, item: str, cls: type[T], unknown: list[XmlElement]) -> tuple[T, ...] | None:
    """The items of a wrapper (``<urls>``, ``<packages>``, ``<actions>``), or None when the
    wrapper has attributes or foreign children: the model has no place for those, so the
    whole wrapper is kept verbatim in ``unknown`` (splitting it would move or drop parts
    on re-encoding; found by fuzzing)."""
    if el.attrib or any(child.tag != item and isinstance(child.tag, str) for child in el):
        unknown.append(_unknown(el))
        return None
    return tuple(_leaf(child, cls) for child in el if child.tag == item)


def _manifest(el: Any) -> Manifest:
    kw = _attrs(el, Manifest)
    unknown: list[XmlElement] = []
    for child in el:
        tag = child.tag
        if tag == "packages" and "packages" not in kw:
            kw["packages"] = _wrapped(child, "package", Package, unknown)
        elif tag == "actions" and "actions" not in kw:
            kw["actions"] = _wrapped(child, "action", Action, unknown)
        elif isinstance(tag, str):
            unknown.append(_unknown(child))
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Manifest, kw)


def _updatecheck_response(el: Any) -> UpdateCheckResponse:
    kw = _attrs(el, UpdateCheckResponse)
    manifests: list[Manifest] = []
    unknown: list[XmlElement] = []
    for child in el:
        tag = child.tag
        if tag == "urls" and "urls" not in kw:
            kw["urls"] = _wrapped(child, "url", Url, unknown)
        elif tag == "manifest":
            manifests.append(_manifest(child))
        elif isinstance(tag, str):
            unknown.append(_unknown(child))
    if manifests:
        kw["manifests"] = tuple(manifests)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(UpdateCheckResponse, kw)


def _app_response(el: Any) -> AppResponse:
    kw = _attrs(el, AppResponse)
    events: list[Ack] = []
    data: list[Data] = []
    unknown: list[XmlElement] = []
    for child in el:
        tag = child.tag
        if tag == "ping" and "ping" not in kw:
            kw["ping"] = _leaf(child, Ack)
        elif tag == "updatecheck" and "updatecheck" not in kw:
            kw["updatecheck"] = _updatecheck_response(child)
        elif tag == "event":
            events.append(_leaf(child, Ack))
        elif tag == "data":
            data.append(_data(child))
        elif isinstance(tag, str):
            unknown.append(_unknown(child))
    if events:
        kw["events"] = tuple(events)
    if data:
        kw["data"] = tuple(data)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(AppResponse, kw)


def _response(root: Any) -> Response:
    """The Response of a parsed root element (the reference walker; see _load_compiled)."""
    _check_root(root, "response")
    kw = _attrs(root, Response)
    apps: list[AppResponse] = []
    unknown: list[XmlElement] = []
    for child in root:
        tag = child.tag
        if tag == "app":
            apps.append(_app_response(child))
        elif tag == "daystart" and "daystart" not in kw:
            kw["daystart"] = _leaf(child, DayStart)
        elif isinstance(tag, str):
            unknown.append(_unknown(child))
    kw["apps"] = tuple(apps)
    if unknown:
        kw["unknown"] = tuple(unknown)
    return _make(Response, kw)


# ------------------------------------------------------------------ the compiled walker


type _Walkers = tuple[Callable[[Any], Request], Callable[[Any], Response]]


def _load_compiled() -> _Walkers | None:
    """The compiled walkers (``_cwalk.pyx``, built at install when a C compiler is there),
    or None when they were not built.

    The Python walker above is the reference: the compiled one mirrors it function by
    function, returns equal objects and calls back into it for rare elements and errors.
    """
    try:
        from omaha_proxy.protocol import _cwalk
    except (ImportError, ValueError):  # not built; built against an lxml of another ABI
        return None
    _cwalk.bind(
        specs=_SPECS,
        attrs=_attrs,
        unknown=_unknown,
        children=_children,
        data=_data,
        event=_event,
        check_root=_check_root,
        attr_name=_attr_name,
    )
    return _cwalk.walk_request, _cwalk.walk_response


_COMPILED = _load_compiled()
_PURE = os.environ.get("OMAHA_PROXY_PURE", "") not in ("", "0")  # the Python walker, even if built
IMPLEMENTATION: Literal["compiled", "python"] = "python" if _PURE or _COMPILED is None else "compiled"
"""Which walker turns lxml's tree into the model: ``"compiled"`` or ``"python"``."""
_walk_request, _walk_response = (_request, _response) if _PURE or _COMPILED is None else _COMPILED


def parse_request(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Request:
    """Decode an Omaha ``<request>`` document.

    Returns the :class:`Request`; raises :class:`CodecError` (with line/column where known)
    for an empty, oversized, malformed, DOCTYPE-carrying or non-request document.
    """
    return _walk_request(_parse_xml(data, max_size))


def parse_response(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Response:
    """Decode an Omaha ``<response>`` document.

    Returns the :class:`Response`; raises :class:`CodecError` like :func:`parse_request`.
    """
    return _walk_response(_parse_xml(data, max_size))


# A fleet is answered with a handful of distinct bodies: Nebraska's noupdate, and one offer
# per version and group, byte-identical for every machine (the appid echo is the same
# Flatcar appid). Decoded documents are immutable, so identical bodies can share one parse.
_SHARED_MAX = 16 * 1024


@functools.lru_cache(maxsize=64)
def _parse_response_shared(data: bytes) -> Response:
    return parse_response(data)


def parse_response_shared(data: bytes) -> Response:
    """:func:`parse_response`, sharing one decoded (immutable) object between identical
    bodies of up to 16 KiB: the proxy and the log writer see the same few answers again and
    again. Raises :class:`CodecError` like :func:`parse_response` (errors are not cached)."""
    return _parse_response_shared(data) if len(data) <= _SHARED_MAX else parse_response(data)


def parse(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Document:
    """Decode either document kind, chosen by its root element (see :func:`parse_request`)."""
    if sniff(data) == "response":
        return parse_response(data, max_size=max_size)
    return parse_request(data, max_size=max_size)


__all__ = [
    "DEFAULT_MAX_SIZE",
    "IMPLEMENTATION",
    "XML_DECLARATION",
    "encode",
    "parse",
    "parse_request",
    "parse_response",
    "sniff",
]
