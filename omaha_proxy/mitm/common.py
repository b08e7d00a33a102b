"""Helpers every omaha-proxy addon shares: which flows are Omaha, one cached parse per flow,
and the per-flow action metadata the logger reads.

Per-flow state lives in ``flow.metadata`` (tnetstring-serialisable, so ``-w`` keeps it):

- ``omaha_action``: what the proxy did, one of :data:`ACTIONS` (``forwarded`` when unset);
- ``omaha_reason``: a short human text saying why;
- ``omaha_upstream_response``: the upstream's original body (bytes) when a rewrite changed it.

The parsed request is cached outside the metadata (models are not serialisable) in a weak
map keyed by the flow, so each addon in the chain can ask for it and the body is parsed once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mitmproxy import http

from omaha_proxy.protocol.decode import encode, parse_request, parse_response_shared, sniff
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import Request, Response

ACTIONS: Final = ("forwarded", "rewritten", "blocked", "held", "replayed", "served", "cached")
"""Every value ``flow.metadata["omaha_action"]`` may take."""

SYNTHETIC_ACTIONS: Final = frozenset({"blocked", "held", "replayed", "served", "cached"})
"""Actions whose response the proxy made up instead of forwarding the upstream's."""

META_ACTION: Final = "omaha_action"
META_REASON: Final = "omaha_reason"
META_UPSTREAM: Final = "omaha_upstream_response"

# A malformed body still counts as an Omaha request if "<request" appears near its start
# (update_engine does not escape '"' in MACHINE_ALIAS, so real requests can be broken XML).
_HINT_WINDOW: Final = 512


@dataclass(slots=True)
class _Body:
    """What is known about one message body; valid while ``raw`` is the message's raw content."""

    raw: bytes | None
    body: bytes
    omaha: bool | None = None  # is_omaha_request's answer, once asked
    parsed: bool = False
    doc: Request | Response | None = None
    error: str | None = None


# One decode and one parse per flow and side, reused by every addon (and every call) while
# the body stays the same object; a rewrite replaces raw_content, which starts afresh.
_requests: weakref.WeakKeyDictionary[http.HTTPFlow, _Body] = weakref.WeakKeyDictionary()
_responses: weakref.WeakKeyDictionary[http.HTTPFlow, _Body] = weakref.WeakKeyDictionary()


def _decode(message: http.Message) -> bytes:
    """The decoded body, or the raw bytes when the content encoding is broken."""
    try:
        return message.get_content(strict=False) or b""
    except ValueError:
        return message.raw_content or b""


def _entry(cache: weakref.WeakKeyDictionary[http.HTTPFlow, _Body], flow: http.HTTPFlow,
           message: http.Message | None) -> _Body:  # fmt: skip
    if message is None:
        return _Body(None, b"")
    raw = message.raw_content
    entry = cache.get(flow)
    if entry is None or entry.raw is not raw:
        entry = cache[flow] = _Body(raw, _decode(message) if raw else b"")
    return entry


def _parsed(entry: _Body, parse: Callable[[bytes], Request | Response]) -> _Body:
    if not entry.parsed and entry.body:
        try:
            entry.doc = parse(entry.body)
        except CodecError as e:
            entry.error = str(e)
        except Exception as e:  # a codec bug must not break the proxy: log it as a parse error
            entry.error = f"{type(e).__name__}: {e}"
        entry.parsed = True
    return entry


def request_body(flow: http.HTTPFlow) -> bytes:
    """The request body as update_engine sent it (content-decoded), b"" when empty."""
    return _entry(_requests, flow, flow.request).body


def response_body(flow: http.HTTPFlow) -> bytes:
    """The response body (content-decoded), b"" when there is no response yet."""
    return _entry(_responses, flow, flow.response).body


def is_omaha_request(flow: http.HTTPFlow) -> bool:
    """True for a POST whose body is (or tries to be) an Omaha request, whatever the path.

    Cheap (no parse): the body sniffs as an Omaha request, or is XML-ish with ``<request``
    near its start (broken bodies are logged with their parse error, forwarded untouched).
    """
    if flow.request.method != "POST":
        return False
    entry = _entry(_requests, flow, flow.request)
    if entry.omaha is None:  # every addon asks, several times per flow: sniff once per body
        entry.omaha = _sniff_request(entry.body)
    return entry.omaha


def _sniff_request(body: bytes) -> bool:
    if not body:
        return False
    kind = sniff(body)
    if kind is not None:
        return kind == "request"
    head = body[:_HINT_WINDOW]
    return head.lstrip().startswith(b"<") and b"<request" in head


def omaha_request(flow: http.HTTPFlow) -> Request | None:
    """The flow's request parsed as Omaha (cached per flow and body), or None if it is not.

    Never raises: a body that does not parse gives None; :func:`request_error` says why.
    """
    if not is_omaha_request(flow):
        return None
    doc = _parsed(_entry(_requests, flow, flow.request), parse_request).doc
    return doc if isinstance(doc, Request) else None


def request_error(flow: http.HTTPFlow) -> str | None:
    """Why the flow's Omaha request did not parse, or None when it did (or is not Omaha)."""
    if not is_omaha_request(flow):
        return None
    return _parsed(_entry(_requests, flow, flow.request), parse_request).error


def omaha_response(flow: http.HTTPFlow) -> Response | None:
    """The flow's current response body parsed as Omaha (cached per flow and body), or None
    (no response, empty body, or not parseable: :func:`response_error` says why). Never raises."""
    doc = _parsed(_entry(_responses, flow, flow.response), parse_response_shared).doc
    return doc if isinstance(doc, Response) else None


def response_error(flow: http.HTTPFlow) -> str | None:
    """Why the flow's response body did not parse as Omaha, or None (parsed, or empty)."""
    return _parsed(_entry(_responses, flow, flow.response), parse_response_shared).error


def action(flow: http.HTTPFlow) -> str:
    """What the proxy did with this flow so far (``forwarded`` unless an addon said otherwise)."""
    return str(flow.metadata.get(META_ACTION, "forwarded"))


def reason(flow: http.HTTPFlow) -> str | None:
    """The short reason an addon gave with its action, or None."""
    value = flow.metadata.get(META_REASON)
    return None if value is None else str(value)


def set_action(flow: http.HTTPFlow, action: str, reason: str | None = None) -> None:
    """Record what the proxy did with ``flow`` (read by the logger). Raises ValueError for an
    action not in :data:`ACTIONS`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown omaha action {action!r}; valid: {', '.join(ACTIONS)}")
    flow.metadata[META_ACTION] = action
    if reason is None:
        flow.metadata.pop(META_REASON, None)
    else:
        flow.metadata[META_REASON] = reason


def keep_upstream_response(flow: http.HTTPFlow) -> None:
    """Save the upstream's original body before a rewrite (first rewrite wins)."""
    if flow.response is not None and META_UPSTREAM not in flow.metadata:
        flow.metadata[META_UPSTREAM] = response_body(flow)


def upstream_response(flow: http.HTTPFlow) -> bytes | None:
    """The upstream's original body when a rewrite changed it, else None."""
    value = flow.metadata.get(META_UPSTREAM)
    return value if isinstance(value, bytes) else None


def is_answered(flow: http.HTTPFlow) -> bool:
    """True when the proxy, not the upstream, produced (or is producing) this flow's response:
    an addon recorded a synthetic action (blocked, held, replayed, served, cached) or
    mitmproxy's own server replay answered it.

    Rewrite rules in ``response`` hooks use it to leave synthetic answers alone; ``request``
    hooks should also skip flows whose ``flow.response`` is already set.
    """
    return action(flow) in SYNTHETIC_ACTIONS or flow.is_replay == "response"


class _Idle:
    """Stands in for a flow hook while its feature is off (see :func:`hooks_active`)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __call__(self, *args: object, **kwargs: object) -> None:
        return None

    def __repr__(self) -> str:
        return "<idle omaha hook>"


IDLE: Final = _Idle()


def hooks_active(addon: object, active: bool, *names: str) -> None:
    """Switch an addon's flow hooks ``names`` on (its methods) or off (:data:`IDLE`).

    mitmproxy looks up every hook of every addon for every event of every flow and skips a
    falsy one (``AddonManager._iter_hooks``: ``if func:``), so a feature that is off (no
    replay, no cache, no policy) costs nothing per flow, not even the call. Called directly,
    an idle hook does nothing, as the real one would with its feature off; and a mitmproxy
    that called it anyway would get the same.
    """
    for name in names:
        if active:
            vars(addon).pop(name, None)  # the class's method shows through again
        else:
            setattr(addon, name, IDLE)


class FeatureAddon:
    """Base of an addon whose flow hooks idle while its feature is off (:func:`hooks_active`).

    A subclass implements ``_configure`` (what ``configure`` would do) and ``_sync_hooks``
    (switch its hooks to match its state); every option change re-syncs the hooks, a refused
    one included.
    """

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        finally:
            self._sync_hooks()

    def _configure(self, updated: set[str]) -> None:
        raise NotImplementedError

    def _sync_hooks(self) -> None:
        raise NotImplementedError


def answer(flow: http.HTTPFlow, response: Response, action: str, reason: str | None = None) -> None:
    """Answer ``flow`` without the upstream: HTTP 200 ``text/xml`` with ``response`` encoded.

    Sets ``flow.response`` (so mitmproxy skips the upstream when called from a ``request``
    hook) and records ``action``/``reason``. Raises ValueError for an unknown action.
    """
    set_action(flow, action, reason)
    # update_engine only needs 200 + well-formed XML; Nebraska sends text/xml.
    flow.response = http.Response.make(200, encode(response), {"Content-Type": "text/xml"})
