"""Decoded documents as plain JSON-able data, with codes named and error flags split.

Used by ``omaha-proxy decode`` (which adds update_engine's verdict to a response) and anything
that wants a readable dump of a document.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omaha_proxy.protocol.describe import app_kind
from omaha_proxy.protocol.model import AppRequest, Document, Event, Response, XmlElement


def _element(el: XmlElement) -> dict[str, Any]:
    out: dict[str, Any] = {"tag": el.tag, "attrs": dict(el.attrs)}
    if el.text:
        out["text"] = el.text
    if el.children:
        out["children"] = [_element(c) for c in el.children]
    return out


def _event(event: Event) -> dict[str, Any]:
    out = _plain(event)
    out["type_name"] = getattr(event.type, "name", None)
    out["result_name"] = getattr(event.result, "name", None)
    if event.error is not None:
        info = event.error
        out["error"] = {"raw": info.raw, "base": info.base, "name": info.name, "flags": list(info.flag_names)}
    return out


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if value is None or value == () or (field.name == "unknown" and not value):
            continue
        if field.name == "extra":
            out["extra"] = dict(value)
        elif isinstance(value, XmlElement):
            out[field.name] = _element(value)
        elif isinstance(value, Event):
            out[field.name] = _event(value)
        elif dataclasses.is_dataclass(value):
            out[field.name] = _plain(value)
        elif isinstance(value, tuple):
            out[field.name] = [_convert(v) for v in value]
        else:
            out[field.name] = value
    if isinstance(obj, AppRequest):
        out["kind"] = app_kind(obj).value
    return out


def _convert(value: Any) -> Any:
    if isinstance(value, Event):
        return _event(value)
    if isinstance(value, XmlElement):
        return _element(value)
    if dataclasses.is_dataclass(value):
        return _plain(value)
    return value


def to_json(doc: Document) -> dict[str, Any]:
    """Return ``{"type": "request"|"response", ...fields}``."""
    out: dict[str, Any] = {"type": "response" if isinstance(doc, Response) else "request"}
    out.update(_plain(doc))
    return out
