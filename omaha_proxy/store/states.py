"""Nebraska's instance state machine, derived from the traffic alone (reference §2.5).

Pure functions over a small frozen :class:`InstanceStatus`: the store feeds each exchange
through :func:`advance` and keeps the result in its ``instances`` table, so the fleet view
shows what a Nebraska behind the proxy would show (UpdateGranted, Downloading, Downloaded,
Complete, Error, OnHold, Undefined).

Nebraska's rules, in the order it applies them to one ``<app>``:

1. every ``<event>`` is registered, but only while an update is in progress
   (``ErrNoUpdateInProgress`` otherwise) and only for the six (type, result) pairs of its
   ``event_type`` table; the routine 3/2 heartbeat "unsticks" an instance to Undefined;
2. the ``<updatecheck>`` answer: a grant (``ok``) is UpdateGranted, a rate-limit refusal is
   OnHold, an already granted instance that now runs the granted version is Complete.

Entering Complete, Error, Undefined or OnHold ends the update in progress.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from omaha_proxy.protocol.codes import EventResult, EventType, InstanceState
from omaha_proxy.protocol.model import AppRequest, AppResponse, Event
from omaha_proxy.protocol.versions import compare_versions

FLATCAR_APPID: Final = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"

# Nebraska answers these app statuses when its rollout policy holds an instance back.
ON_HOLD_STATUSES: Final = frozenset(
    {
        "error-maxUpdatesPerPeriodLimitReached",
        "error-maxConcurrentUpdatesLimitReached",
        "error-maxTimedOutUpdatesLimitReached",
    }
)

# Previous versions update_engine sends in the routine update-check event (not a reboot).
_ROUTINE_PREVIOUS: Final = frozenset({"", "0.0.0.0"})

_ENDS_UPDATE: Final = frozenset(
    {InstanceState.COMPLETE, InstanceState.ERROR, InstanceState.UNDEFINED, InstanceState.ON_HOLD}
)


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """Where one instance stands: its state, whether an update is in progress, and the
    version it was granted (None when no grant has been seen)."""

    state: InstanceState = InstanceState.UNDEFINED
    update_in_progress: bool = False
    granted_version: str | None = None


def is_flatcar(appid: str | None) -> bool:
    """True for Flatcar's own appid, with or without braces, in any case."""
    return (appid or "").strip("{}").lower() == FLATCAR_APPID


def _enter(status: InstanceStatus, state: InstanceState) -> InstanceStatus:
    in_progress = status.update_in_progress and state not in _ENDS_UPDATE
    return replace(status, state=state, update_in_progress=in_progress)


def apply_event(status: InstanceStatus, event: Event, *, appid: str | None = None) -> InstanceStatus:
    """Return the status after Nebraska registers ``event`` (api/events.go).

    Events arriving while no update is in progress, and (type, result) pairs outside
    Nebraska's table (3/9, 13/0, 14/0...), leave the status unchanged.
    """
    if not status.update_in_progress:
        return status
    kind, result = event.eventtype, event.eventresult or 0
    if kind == EventType.UPDATE_DOWNLOAD_STARTED and result == EventResult.SUCCESS:
        return _enter(status, InstanceState.DOWNLOADING)
    if kind == EventType.UPDATE_DOWNLOAD_FINISHED and result == EventResult.SUCCESS:
        return _enter(status, InstanceState.DOWNLOADED)
    if kind == EventType.INSTALLED_HELD and result == EventResult.SUCCESS:
        return _enter(status, InstanceState.INSTALLED)
    if kind == EventType.UPDATE_COMPLETE and result == EventResult.SUCCESS:
        # Flatcar special case: "applied, needs reboot" is not completion, stay Downloaded.
        return status if is_flatcar(appid) else _enter(status, InstanceState.COMPLETE)
    if kind == EventType.UPDATE_COMPLETE and result == EventResult.SUCCESS_REBOOT:
        if (event.previousversion or "") in _ROUTINE_PREVIOUS:
            return _enter(status, InstanceState.UNDEFINED)  # routine check event unsticks
        return _enter(status, InstanceState.COMPLETE)  # rebooted into the new version
    if kind == EventType.UPDATE_COMPLETE and result == EventResult.ERROR:
        return _enter(status, InstanceState.ERROR)
    return status


def _runs(version: str | None, granted: str | None) -> bool:
    """True when ``version`` is at least ``granted`` (both dotted numbers)."""
    if not version or not granted:
        return False
    order = compare_versions(version, granted)
    return order is not None and order >= 0


def apply_updatecheck(
    status: InstanceStatus,
    *,
    update_status: str | None,
    offered_version: str | None = None,
    app_status: str | None = None,
    instance_version: str | None = None,
    held: bool = False,
) -> InstanceStatus:
    """Return the status after the answer to an update check (api/updates.go).

    ``update_status`` is the ``updatecheck@status`` the client got, ``app_status`` the
    ``app@status``; ``held`` means the proxy itself held the instance back (rollout rule).
    """
    if status.state == InstanceState.UPDATE_GRANTED and _runs(instance_version, status.granted_version):
        # Nebraska re-serves the grant until the instance runs it, then marks it Complete.
        return _enter(status, InstanceState.COMPLETE)
    if update_status == "ok":
        return InstanceStatus(InstanceState.UPDATE_GRANTED, True, offered_version)
    if held or app_status in ON_HOLD_STATUSES:
        return _enter(status, InstanceState.ON_HOLD)
    return status


def advance(
    status: InstanceStatus,
    app: AppRequest,
    answer: AppResponse | None,
    *,
    held: bool = False,
) -> InstanceStatus:
    """Run one request ``<app>`` and the response ``<app>`` answering it through the machine.

    Events first, then the update check (Nebraska's order). ``answer`` is None when the
    exchange had no parseable response (transport error): only the events count then.
    """
    for event in app.events:
        status = apply_event(status, event, appid=app.appid)
    if app.updatecheck is None or answer is None or answer.updatecheck is None:
        return status
    uc = answer.updatecheck
    manifest = uc.manifest
    return apply_updatecheck(
        status,
        update_status=uc.status,
        offered_version=manifest.version if manifest else None,
        app_status=answer.status,
        instance_version=app.version,
        held=held,
    )
