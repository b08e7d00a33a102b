"""What a request is asking and what a response answered, in one line.

update_engine sends three flavours (reference §1.3): an update check (ping + updatecheck +
event 3/2), an event report (event only) and a ping only (waiting for reboot).
"""

from __future__ import annotations

from enum import StrEnum

from omaha_proxy.protocol.codes import EventResult, EventType
from omaha_proxy.protocol.model import AppRequest, AppResponse, Event, Request, Response


class RequestKind(StrEnum):
    UPDATECHECK = "updatecheck"
    EVENT = "event"
    PING = "ping"
    OTHER = "other"


def app_kind(app: AppRequest) -> RequestKind:
    """Classify one ``<app>``: an update check wins over its 3/2 heartbeat event."""
    if app.updatecheck is not None:
        return RequestKind.UPDATECHECK
    if app.events:
        return RequestKind.EVENT
    if app.ping is not None:
        return RequestKind.PING
    return RequestKind.OTHER


def request_kind(request: Request) -> RequestKind:
    """The kind of the first app (update_engine sends exactly one), or OTHER."""
    return app_kind(request.apps[0]) if request.apps else RequestKind.OTHER


def _name(value: object) -> str:
    return value.name.lower().replace("_", " ") if isinstance(value, EventType | EventResult) else str(value)


def describe_event(event: Event) -> str:
    """``13/1 update download started`` or ``3/0 error 268435466 = PayloadHashMismatch ...``."""
    result = event.eventresult if event.eventresult is not None else 0
    text = f"{event.eventtype}/{result}"
    if event.error is not None and event.errorcode:
        text += f" {event.error}"
    else:
        text += f" {_name(event.type)}"
    if event.previousversion:
        text += f" from {event.previousversion}"
    return text


def describe_app(app: AppRequest) -> str:
    """One line for one app: kind, version, track, and events."""
    kind = app_kind(app)
    parts = [kind.value, app.version or "?", app.track or "?"]
    relevant = (
        [e for e in app.events if not _is_heartbeat(e)] if kind is RequestKind.UPDATECHECK else app.events
    )
    parts.extend(describe_event(e) for e in relevant)
    return " ".join(parts)


def _is_heartbeat(event: Event) -> bool:
    # The 3/2 with previousversion "" / "0.0.0.0" that rides along every update check.
    return event.eventtype == 3 and event.eventresult == 2 and event.previousversion in (None, "", "0.0.0.0")


def describe_request(request: Request) -> str:
    """One line for a request, e.g. ``updatecheck 4081.2.0 stable``."""
    if not request.apps:
        return "request without app"
    return "; ".join(describe_app(app) for app in request.apps)


def describe_app_response(app: AppResponse) -> str:
    uc = app.updatecheck
    if uc is None:
        return "ack"
    status = uc.status or "no status"
    text = status
    if status == "ok" and uc.manifest is not None:
        text += f" {uc.manifest.version}"
    if app.status and app.status != "ok":
        text += f" ({app.status})"
    return text


def describe_response(response: Response) -> str:
    """One line for a response, e.g. ``ok 4152.2.0``, ``noupdate`` or ``ack``."""
    if not response.apps:
        return "empty response"
    return "; ".join(describe_app_response(app) for app in response.apps)
