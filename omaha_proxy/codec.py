"""Omaha v3 codec: bytes in, typed objects out, and back (sans-IO, lxml).

The parser is hardened: documents with a DOCTYPE are refused (real Omaha documents never
have one), entities are never resolved, nothing is loaded from the network, and bodies over
``max_size`` are refused before parsing. Every error is a :class:`CodecError` with the
line and column libxml2 reports.

Nothing is lost: attributes the model does not name go to ``extra`` and unknown child
elements to ``unknown`` (both in document order), so ``encode(parse(x))`` keeps every
element, attribute and value of ``x``. Known attributes are written in the model's order
(update_engine's for requests, Nebraska's for responses); whitespace and quoting may differ.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Literal

from lxml import etree

from omaha_proxy.errors import CodecError
from omaha_proxy.model import (
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
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

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


def parse_request(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Request:
    """Decode an Omaha ``<request>`` document.

    Returns the :class:`Request`; raises :class:`CodecError` (with line/column where known)
    for an empty, oversized, malformed, DOCTYPE-carrying or non-request document.
    """
    root = _parse_xml(data, max_size)
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


def _wrapped[T](el: Any, item: str, cls: type[T], unknown: list[XmlElement]) -> tuple[T, ...]:
    out = []
    for child in el:
        if child.tag == item:
            out.append(_leaf(child, cls))
        elif isinstance(child.tag, str):
            unknown.append(_unknown(child))
    return tuple(out)


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


def parse_response(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Response:
    """Decode an Omaha ``<response>`` document.

    Returns the :class:`Response`; raises :class:`CodecError` like :func:`parse_request`.
    """
    root = _parse_xml(data, max_size)
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


def parse(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Document:
    """Decode either document kind, chosen by its root element (see :func:`parse_request`)."""
    if sniff(data) == "response":
        return parse_response(data, max_size=max_size)
    return parse_request(data, max_size=max_size)


# ------------------------------------------------------------------------------ encoding

_ATTR_ESCAPE = re.compile(r'[&<>"\t\n\r]')
_TEXT_ESCAPE = re.compile(r"[&<>\r]")
_ATTR_TABLE = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}
_TEXT_TABLE = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}


def _esc_attr(value: str) -> str:
    if _ATTR_ESCAPE.search(value) is None:
        return value
    return _ATTR_ESCAPE.sub(lambda m: _ATTR_TABLE[m.group()], value)


def _esc_text(value: str) -> str:
    if _TEXT_ESCAPE.search(value) is None:
        return value
    return _TEXT_ESCAPE.sub(lambda m: _TEXT_TABLE[m.group()], value)


def _split_clark(name: str) -> tuple[str | None, str]:
    if name[0] == "{":
        uri, _, local = name[1:].partition("}")
        return uri, local
    return None, name


class _Writer:
    """Accumulates the document; ``indent`` None means compact (Nebraska's shape)."""

    __slots__ = ("depth", "indent", "out")

    def __init__(self, indent: str | None) -> None:
        self.out: list[str] = []
        self.indent = indent
        self.depth = 0

    def open(self, tag: str, attrs: str) -> None:
        if self.indent is not None and self.out:
            self.out.append("\n" + self.indent * self.depth)
        self.out.append(f"<{tag}{attrs}>")
        self.depth += 1

    def close(self, tag: str, had_children: bool) -> None:
        self.depth -= 1
        if had_children and self.indent is not None:
            self.out.append("\n" + self.indent * self.depth)
        self.out.append(f"</{tag}>")

    def empty(self, tag: str, attrs: str, text: str | None = None) -> None:
        # Never self-closing: update_engine/ue-rs/Nebraska all accept <x></x>; go-omaha writes it.
        if self.indent is not None and self.out:
            self.out.append("\n" + self.indent * self.depth)
        if text:
            self.out.append(f"<{tag}{attrs}>{_esc_text(text)}</{tag}>")
        else:
            self.out.append(f"<{tag}{attrs}></{tag}>")


_XML_NAMES: dict[type, dict[str, str]] = {}


def _model_attrs(obj: Any) -> str:
    """The element's attributes as ` name="value"` text.

    Walks the instance's own fields: a decoded object holds only the attributes that were
    present, in document order (so the original order survives a round trip); an object
    built in code holds every field, in declaration order, which is the model's order.
    """
    cls = type(obj)
    names = _XML_NAMES.get(cls)
    if names is None:
        names = _XML_NAMES[cls] = {field: xml for field, xml, _ in cls._ATTRS}
    out = ""
    for field, value in obj.__dict__.items():
        if value is None:
            continue
        xml = names.get(field)
        if xml is None:
            continue
        if type(value) is str:
            if _ATTR_ESCAPE.search(value) is not None:
                value = _esc_attr(value)
        out += f' {xml}="{value}"'
    extra = obj.extra
    if extra:
        out += _extra_attrs(extra)
    return out


def _extra_attrs(pairs: tuple[tuple[str, str], ...]) -> str:
    parts = []
    declared: dict[str, str] = {}
    for key, value in pairs:
        uri, local = _split_clark(key)
        if uri is not None:
            prefix = declared.get(uri)
            if prefix is None:
                prefix = declared[uri] = f"ns{len(declared)}"
                parts.append(f' xmlns:{prefix}="{_esc_attr(uri)}"')
            key = f"{prefix}:{local}"
        parts.append(f' {key}="{_esc_attr(value)}"')
    return "".join(parts)


def _write_unknown(w: _Writer, el: XmlElement) -> None:
    uri, tag = _split_clark(el.tag)
    attrs = (f' xmlns="{_esc_attr(uri)}"' if uri is not None else "") + _extra_attrs(el.attrs)
    if not el.children:
        w.empty(tag, attrs, el.text)
        return
    _write_mixed(w, tag, attrs, el.text, el.children)


def _write_leaf(w: _Writer, tag: str, obj: Any, text: str | None = None) -> None:
    if not obj.unknown:
        w.empty(tag, _model_attrs(obj), text)
        return
    _write_mixed(w, tag, _model_attrs(obj), text, obj.unknown)


def _write_mixed(w: _Writer, tag: str, attrs: str, text: str | None, children: Any) -> None:
    w.open(tag, attrs)
    indent = w.indent
    if text:
        # Mixed content: indenting the children would change the text on the way back.
        w.out.append(_esc_text(text))
        w.indent = None
    for child in children:
        _write_unknown(w, child)
    w.indent = indent
    w.close(tag, not text)


def _write_children(w: _Writer, tag: str, attrs: str, children: list[tuple[str, Any]], unknown: Any) -> None:
    if not children and not unknown:
        w.empty(tag, attrs)
        return
    w.open(tag, attrs)
    for child_tag, child in children:
        if child_tag == "data":
            _write_leaf(w, "data", child, child.text)
        else:
            _write_leaf(w, child_tag, child)
    for el in unknown:
        _write_unknown(w, el)
    w.close(tag, True)


def _write_wrapper(w: _Writer, tag: str, item: str, items: tuple[Any, ...]) -> None:
    if not items:
        w.empty(tag, "")
        return
    w.open(tag, "")
    for obj in items:
        _write_leaf(w, item, obj)
    w.close(tag, True)


def _write_app_request(w: _Writer, app: AppRequest) -> None:
    children: list[tuple[str, Any]] = []
    if app.ping is not None:
        children.append(("ping", app.ping))
    if app.updatecheck is not None:
        children.append(("updatecheck", app.updatecheck))
    children.extend(("event", e) for e in app.events)
    children.extend(("data", d) for d in app.data)
    _write_children(w, "app", _model_attrs(app), children, app.unknown)


def _write_request(w: _Writer, req: Request) -> None:
    w.open("request", _model_attrs(req))
    if req.hw is not None:
        _write_leaf(w, "hw", req.hw)
    if req.os is not None:
        _write_leaf(w, "os", req.os)
    for app in req.apps:
        _write_app_request(w, app)
    for el in req.unknown:
        _write_unknown(w, el)
    w.close("request", bool(req.hw or req.os or req.apps or req.unknown))


def _write_manifest(w: _Writer, m: Manifest) -> None:
    w.open("manifest", _model_attrs(m))
    if m.packages is not None:
        _write_wrapper(w, "packages", "package", m.packages)
    if m.actions is not None:
        _write_wrapper(w, "actions", "action", m.actions)
    for el in m.unknown:
        _write_unknown(w, el)
    w.close("manifest", m.packages is not None or m.actions is not None or bool(m.unknown))


def _write_updatecheck(w: _Writer, uc: UpdateCheckResponse) -> None:
    if uc.urls is None and not uc.manifests and not uc.unknown:
        w.empty("updatecheck", _model_attrs(uc))
        return
    w.open("updatecheck", _model_attrs(uc))
    if uc.urls is not None:
        _write_wrapper(w, "urls", "url", uc.urls)
    for m in uc.manifests:
        _write_manifest(w, m)
    for el in uc.unknown:
        _write_unknown(w, el)
    w.close("updatecheck", True)


def _write_app_response(w: _Writer, app: AppResponse) -> None:
    attrs = _model_attrs(app)
    if app.ping is None and app.updatecheck is None and not app.events and not app.data and not app.unknown:
        w.empty("app", attrs)
        return
    w.open("app", attrs)
    if app.ping is not None:
        _write_leaf(w, "ping", app.ping)
    if app.updatecheck is not None:
        _write_updatecheck(w, app.updatecheck)
    for e in app.events:
        _write_leaf(w, "event", e)
    for d in app.data:
        _write_leaf(w, "data", d, d.text)
    for el in app.unknown:
        _write_unknown(w, el)
    w.close("app", True)


def _write_response(w: _Writer, resp: Response) -> None:
    w.open("response", _model_attrs(resp))
    if resp.daystart is not None:
        _write_leaf(w, "daystart", resp.daystart)
    for app in resp.apps:
        _write_app_response(w, app)
    for el in resp.unknown:
        _write_unknown(w, el)
    w.close("response", bool(resp.daystart or resp.apps or resp.unknown))


def encode(doc: Document, *, indent: bool | str = False) -> bytes:
    """Encode a :class:`Request` or :class:`Response` to UTF-8 bytes.

    Writes the XML declaration, no namespaces, no self-closing tags. Compact by default
    (Nebraska's shape); ``indent=True`` indents by two spaces (or by the given string).
    Returns the bytes; raises :class:`CodecError` for anything that is not a document.
    """
    w = _Writer("  " if indent is True else (indent or None))
    if isinstance(doc, Request):
        _write_request(w, doc)
    elif isinstance(doc, Response):
        _write_response(w, doc)
    else:
        raise CodecError(f"cannot encode {type(doc).__name__}: expected Request or Response")
    body = "".join(w.out)
    if w.indent is not None:
        body += "\n"
    return XML_DECLARATION + body.encode("utf-8")
