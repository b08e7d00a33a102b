"""Omaha v3 encoder: frozen models to bytes, in the shape update_engine, ue-rs and Nebraska accept.

XML declaration, no namespaces, never self-closing (``<urls></urls>``), compact by default
(byte-identical to Nebraska's output), optionally indented.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import (
    AppRequest,
    AppResponse,
    Document,
    Manifest,
    Request,
    Response,
    UpdateCheckResponse,
    XmlElement,
)

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


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
_FULL_WRITERS: dict[type, tuple[int, Any]] = {}


def _full_writer(cls: type) -> tuple[int, Any]:
    """A function, generated once per model class, writing every attribute in model order.

    Used for objects built in code (their ``__dict__`` holds every field): one look-up per
    attribute instead of a loop over all fields, children included.
    """
    entry = _FULL_WRITERS.get(cls)
    if entry is None:
        lines = ["def write(d):", "    out = ''"]
        for field, xml, is_int in cls._ATTRS:  # type: ignore[attr-defined]
            lines.append(f"    v = d[{field!r}]")
            lines.append("    if v is not None:")
            if is_int:
                lines.append(f"        out += ' {xml}=\"' + str(v) + '\"'")
            else:
                lines.append("        if search(v) is not None: v = escape(v)")
                lines.append(f"        out += ' {xml}=\"' + v + '\"'")
        lines.append("    return out")
        namespace: dict[str, Any] = {"search": _ATTR_ESCAPE.search, "escape": _esc_attr}
        exec("\n".join(lines), namespace)  # source built from the model's own tables
        entry = _FULL_WRITERS[cls] = (len(dataclasses.fields(cls)), namespace["write"])
    return entry


def _model_attrs(obj: Any) -> str:
    """The element's attributes as ` name="value"` text.

    A decoded object holds only the attributes that were present, in document order, and
    is written in that order (so the original order survives a round trip); an object
    built in code holds every field and is written in the model's order.
    """
    cls = type(obj)
    values = obj.__dict__
    size, write_all = _FULL_WRITERS.get(cls) or _full_writer(cls)
    if len(values) == size:
        out = write_all(values)
        extra = values["extra"]
        return out + _extra_attrs(extra) if extra else out
    else:
        names = _XML_NAMES.get(cls)
        if names is None:
            names = _XML_NAMES[cls] = {field: xml for field, xml, _ in cls._ATTRS}
        out = ""
        for field, value in values.items():
            if value is None:
                continue
            xml = names.get(field)
            if xml is None:
                continue
            if type(value) is str and _ATTR_ESCAPE.search(value) is not None:
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
        if w.indent is None and not text:  # the common case, inlined: compact, no content
            w.out.append(f"<{tag}{_model_attrs(obj)}></{tag}>")
        else:
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
    if w.indent is None:  # compact: one append per item (packages, actions, urls)
        append = w.out.append
        for obj in items:
            if obj.unknown:
                _write_leaf(w, item, obj)
            else:
                append(f"<{item}{_model_attrs(obj)}></{item}>")
    else:
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


# ----------------------------------------------------------------------------- compact responses
# The proxy's hot path (every rewrite, answer and replay) is a compact response: the same
# output as the _Writer functions above (tests compare them), with direct appends instead of
# a writer object's method calls. Elements the model does not name go through _Writer.


def _compact_unknown(out: list[str], unknown: Any) -> None:
    w = _Writer(None)
    w.out = out
    for el in unknown:
        _write_unknown(w, el)


def _compact_leaf(out: list[str], tag: str, obj: Any) -> None:
    if obj.unknown:
        w = _Writer(None)
        w.out = out
        _write_leaf(w, tag, obj)
    else:
        out.append(f"<{tag}{_model_attrs(obj)}></{tag}>")


def _compact_items(out: list[str], tag: str, item: str, items: tuple[Any, ...]) -> None:
    out.append(f"<{tag}>")
    for obj in items:
        _compact_leaf(out, item, obj)
    out.append(f"</{tag}>")


def _compact_updatecheck(out: list[str], uc: UpdateCheckResponse) -> None:
    out.append(f"<updatecheck{_model_attrs(uc)}>")
    if uc.urls is not None:
        _compact_items(out, "urls", "url", uc.urls)
    for m in uc.manifests:
        out.append(f"<manifest{_model_attrs(m)}>")
        if m.packages is not None:
            _compact_items(out, "packages", "package", m.packages)
        if m.actions is not None:
            _compact_items(out, "actions", "action", m.actions)
        if m.unknown:
            _compact_unknown(out, m.unknown)
        out.append("</manifest>")
    if uc.unknown:
        _compact_unknown(out, uc.unknown)
    out.append("</updatecheck>")


def _compact_response(resp: Response) -> str:
    out = [f"<response{_model_attrs(resp)}>"]
    if resp.daystart is not None:
        _compact_leaf(out, "daystart", resp.daystart)
    for app in resp.apps:
        out.append(f"<app{_model_attrs(app)}>")
        if app.ping is not None:
            _compact_leaf(out, "ping", app.ping)
        uc = app.updatecheck
        if uc is not None:
            if uc.urls is None and not uc.manifests and not uc.unknown:
                out.append(f"<updatecheck{_model_attrs(uc)}></updatecheck>")
            else:
                _compact_updatecheck(out, uc)
        for e in app.events:
            _compact_leaf(out, "event", e)
        if app.data or app.unknown:
            w = _Writer(None)
            w.out = out
            for d in app.data:
                _write_leaf(w, "data", d, d.text)
            for el in app.unknown:
                _write_unknown(w, el)
        out.append("</app>")
    if resp.unknown:
        _compact_unknown(out, resp.unknown)
    out.append("</response>")
    return "".join(out)


def encode(doc: Document, *, indent: bool | str = False) -> bytes:
    """Encode a :class:`Request` or :class:`Response` to UTF-8 bytes.

    Writes the XML declaration, no namespaces, no self-closing tags. Compact by default
    (Nebraska's shape); ``indent=True`` indents by two spaces (or by the given string).
    Returns the bytes; raises :class:`CodecError` for anything that is not a document.
    """
    if not indent and type(doc) is Response:
        return XML_DECLARATION + _compact_response(doc).encode("utf-8")
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
