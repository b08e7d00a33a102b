"""Control policies: block, pin and rollout, as pure decisions over Omaha documents.

Every decision function has the same shape::

    decide_x(request, upstream, state, now) -> Decision

``upstream`` is the server's parsed answer, or None before the request went upstream (only
the block policy can decide then: it answers update checks locally). ``state`` holds the
parsed options plus what the proxy has seen (offers, grants); ``now`` is an aware datetime.
Nothing here touches mitmproxy, sqlite or the clock: the addon gathers the state and applies
the decision.

Every response a decision produces is one update_engine 0.4.10 accepts as meant: a withheld
update is ``<updatecheck status="noupdate">`` (never ``error-*``, which update_engine turns
into error events and backoff), and a replayed offer is the seen ``<updatecheck>`` verbatim
(URLs, packages, extension packages, hashes, ``DisablePayloadBackoff``). Everything else in
the upstream response (app status, ping and event acks, ``PollInterval``) is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from omaha_proxy.policy.specs import (
    BlockSpec,
    PinSpec,
    RolloutSpec,
    describe_rollout,
    parse_block_events,
    parse_block_spec,
    parse_duration,
    parse_pin_spec,
    parse_rollout_spec,
)
from omaha_proxy.protocol.build import as_noupdate, noupdate_response
from omaha_proxy.protocol.model import AppRequest, AppResponse, Request, Response, UpdateCheckResponse
from omaha_proxy.protocol.versions import compare_versions

__all__ = [
    "Decision",
    "DecisionAction",
    "Grant",
    "OfferLookup",
    "PolicyState",
    "decide",
    "decide_block",
    "decide_pin",
    "decide_rollout",
    "describe_rollout",
    "offer_in",
    "offers_from",
    "parse_block_events",
    "parse_block_spec",
    "parse_duration",
    "parse_pin_spec",
    "parse_rollout_spec",
]


class DecisionAction(StrEnum):
    """What the proxy does with the exchange."""

    FORWARD = "forward"  # send the upstream's answer (or the request) unchanged
    NOUPDATE = "noupdate"  # answer noupdate: blocked, held, or pinned below the offer
    OFFER = "offer"  # replay a seen offer (pin below / downgrade)
    REWRITE = "rewrite"  # several apps got different treatments


@dataclass(frozen=True, slots=True)
class Grant:
    """An update offered to a machine: the unit a rollout counts."""

    machine_id: str
    version: str
    at: datetime


OfferLookup = Callable[[str, AppRequest], UpdateCheckResponse | None]
"""``(version, app) -> a seen <updatecheck status="ok">`` offering that version to such an
app (same board), or None."""


def _no_offers(version: str, app: AppRequest) -> UpdateCheckResponse | None:
    return None


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything a decision depends on besides the documents and the time."""

    block: BlockSpec | None = None
    block_events_local: bool = False
    pin: PinSpec | None = None
    allow_downgrade: bool = False
    rollout: RolloutSpec | None = None
    grants: Sequence[Grant] = ()
    offers: OfferLookup = _no_offers


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision: ``response`` is what to send (None = leave the exchange unchanged).

    ``outcome`` is the value for ``flow.metadata["omaha_action"]`` (``forwarded``,
    ``blocked``, ``held``, ``rewritten``); ``grants`` are the updates the final response
    offers, for the rollout count.
    """

    action: DecisionAction = DecisionAction.FORWARD
    reason: str = ""
    response: Response | None = None
    outcome: str = "forwarded"
    grants: tuple[Grant, ...] = ()


# ---------------------------------------------------------------------------------- helpers


def _norm_id(value: str | None) -> str:
    return (value or "").strip().strip("{}").lower()


def offer_in(response: Response, version: str | None = None) -> UpdateCheckResponse | None:
    """The first ``status="ok"`` updatecheck with a manifest (of ``version`` when given)."""
    for app in response.apps:
        uc = app.updatecheck
        if uc is None or uc.status != "ok" or uc.manifest is None or not uc.urls:
            continue
        if version is None or uc.manifest.version == version:
            return uc
    return None


def offers_from(known: Mapping[str, UpdateCheckResponse | Response]) -> OfferLookup:
    """An :data:`OfferLookup` over a ``{version: offer}`` mapping (e.g. from a recording)."""

    def lookup(version: str, app: AppRequest) -> UpdateCheckResponse | None:
        found = known.get(version)
        return offer_in(found, version) if isinstance(found, Response) else found

    return lookup


def _pairs(request: Request, response: Response) -> list[tuple[AppRequest, int]]:
    """Each update-checking request app with the index of its response app (by appid echo)."""
    pairs = []
    answered = [_norm_id(r.appid) if r.appid else None for r in response.apps]
    for i, app in enumerate(request.apps):
        if app.updatecheck is None:
            continue
        appid = _norm_id(app.appid)
        match = next((j for j, r in enumerate(answered) if r == appid and r is not None), None)
        if match is None and i < len(answered):
            match = i
        if match is not None:
            pairs.append((app, match))
    return pairs


def _offered(app: AppResponse) -> str | None:
    """The version an app response offers, or None when it offers nothing."""
    uc = app.updatecheck
    if uc is None or uc.status != "ok" or uc.manifest is None:
        return None
    return uc.manifest.version or ""


def _set_uc(response: Response, index: int, uc: UpdateCheckResponse) -> Response:
    apps = list(response.apps)
    apps[index] = replace(apps[index], updatecheck=uc)
    return replace(response, apps=tuple(apps))


def per_machine(state: PolicyState) -> bool:
    """True when a decision may depend on more than the apps' id, version, track and board
    and the upstream's answer: a rollout (grants, time), or machine/alias selectors."""
    if state.rollout is not None:
        return True
    return any(spec is not None and (spec.machines or spec.aliases) for spec in (state.block, state.pin))


def grants_made(request: Request, response: Response | None, now: datetime) -> tuple[Grant, ...]:
    """The update grants ``response`` makes to the machines of ``request`` (its ``ok`` offers)."""
    if response is None:
        return ()
    out = []
    for app, i in _pairs(request, response):
        version = _offered(response.apps[i])
        if version is not None:
            out.append(Grant(_norm_id(app.machineid), version, now))
    return tuple(out)


def _combine(actions: Iterable[DecisionAction]) -> DecisionAction:
    kinds = set(actions) - {DecisionAction.FORWARD}
    if not kinds:
        return DecisionAction.FORWARD
    return kinds.pop() if len(kinds) == 1 else DecisionAction.REWRITE


# ------------------------------------------------------------------------------------ block


def decide_block(request: Request, upstream: Response | None, state: PolicyState, now: datetime) -> Decision:
    """Block: answer blocked machines' update checks with noupdate.

    Before upstream (``upstream`` None) a request whose apps are all blocked is answered
    locally when it checks for updates (or, with ``block_events_local``, when it only pings
    or reports events); pings and events of blocked machines are otherwise forwarded. After
    upstream, blocked apps of mixed requests get their updatecheck turned into noupdate.
    """
    if state.block is None:
        return Decision()
    matches = [(app, state.block.match(app)) for app in request.apps]
    blocked = [(app, sel) for app, sel in matches if sel is not None]
    if not blocked:
        return Decision()
    selectors = ", ".join(sorted({sel for _, sel in blocked if sel}))
    checks = any(app.updatecheck is not None for app, _ in blocked)
    if upstream is None:
        if len(blocked) < len(request.apps) or not (checks or state.block_events_local):
            what = "decided after upstream" if checks else "ping/event forwarded"
            return Decision(reason=f"blocked ({selectors}): {what}")
        what = "update check answered noupdate locally" if checks else "ping/event acknowledged locally"
        return Decision(
            DecisionAction.NOUPDATE,
            f"blocked ({selectors}): {what}",
            noupdate_response(request),
            "blocked",
        )
    response = upstream
    blocked_ids = {id(app) for app, _ in blocked}
    for app, i in _pairs(request, upstream):
        if id(app) in blocked_ids and _offered(response.apps[i]) is not None:
            response = _set_uc(response, i, as_noupdate(response.apps[i].updatecheck))
    if response is upstream:
        return Decision()
    return Decision(DecisionAction.NOUPDATE, f"blocked ({selectors}): offer withheld", response, "blocked")


# -------------------------------------------------------------------------------------- pin


def _replacement(app: AppRequest, pin: str, state: PolicyState) -> tuple[UpdateCheckResponse | None, str]:
    """A seen offer of ``pin`` for ``app`` when the machine may move to it, and why (not)."""
    current = compare_versions(app.version or "", pin)
    if current is None:
        return None, f"machine version {app.version!r} not comparable"
    if current == 0:
        return None, f"machine already on {pin}"
    if current > 0 and not state.allow_downgrade:
        return None, f"machine on {app.version} above the pin, downgrade not allowed"
    seen = state.offers(pin, app)
    if seen is None:
        return None, f"no offer of {pin} seen yet"
    verb = "downgrade" if current > 0 else "upgrade"
    return seen, f"{verb} {app.version} -> {pin} with the seen offer"


def decide_pin(request: Request, upstream: Response | None, state: PolicyState, now: datetime) -> Decision:
    """Pin: withhold offers above the pin; offer the pin to machines below it when seen.

    An upstream offer above the pin becomes noupdate (or the seen offer of the pin, when the
    machine is below it); an offer of exactly the pin, or below it, passes. When the upstream
    offers nothing (``noupdate``), a machine below the pin gets the seen offer of the pin
    replayed; a machine above it only with ``allow_downgrade``. Upstream errors pass.
    """
    if state.pin is None or upstream is None:
        return Decision()
    response = upstream
    actions, reasons = [], []
    for app, i in _pairs(request, upstream):
        pinned = state.pin.pin_for(app)
        if pinned is None or (state.block is not None and state.block.match(app)):
            continue
        pin, selector = pinned
        uc = upstream.apps[i].updatecheck
        offered = _offered(upstream.apps[i])
        status = uc.status if uc is not None else None
        prefix = f"pin {pin} ({selector})"
        if offered is not None:
            order = compare_versions(offered, pin)
            if order is not None and order <= 0:
                reasons.append(f"{prefix}: offer {offered} passes")
                continue
            seen, why = _replacement(app, pin, state)
            what = (
                f"offer {offered} above the pin" if order is not None else f"offer {offered!r} not comparable"
            )
            if seen is not None:
                response = _set_uc(response, i, seen)
                actions.append(DecisionAction.OFFER)
                reasons.append(f"{prefix}: {what} replaced, {why}")
            else:
                response = _set_uc(response, i, as_noupdate(uc))
                actions.append(DecisionAction.NOUPDATE)
                reasons.append(f"{prefix}: {what} withheld ({why})")
        elif status == "noupdate":
            seen, why = _replacement(app, pin, state)
            if seen is not None:
                response = _set_uc(response, i, seen)
                actions.append(DecisionAction.OFFER)
            reasons.append(f"{prefix}: upstream noupdate, {why}")
        else:
            reasons.append(f"{prefix}: upstream status {status!r} passes")
    action = _combine(actions)
    if action is DecisionAction.FORWARD:
        return Decision(reason="; ".join(reasons))
    return Decision(action, "; ".join(reasons), response, "rewritten")


# ---------------------------------------------------------------------------------- rollout


def _hold_reason(rollout: RolloutSpec, machine: str, grants: Sequence[Grant], now: datetime) -> str | None:
    """Why ``machine`` is held back now, or None when it may be granted."""
    if rollout.windows and not any(w.contains(now) for w in rollout.windows):
        return "outside window " + " | ".join(w.text for w in rollout.windows)
    if rollout.percent is not None:
        bucket = rollout.bucket(machine)
        if bucket >= rollout.percent:
            return f"not in the {rollout.percent:g}% rollout (bucket {bucket:.2f})"
    if rollout.max_grants is not None and rollout.period is not None:
        # A re-served grant is not a new one: count each (machine, version) at its first grant.
        first: dict[tuple[str, str], datetime] = {}
        for g in grants:
            key = (g.machine_id, g.version)
            first[key] = min(first.get(key, g.at), g.at)
        since = now - rollout.period
        recent = {machine for (machine, _), at in first.items() if since <= at <= now}
        if len(recent) >= rollout.max_grants:
            return f"limit {rollout.max_grants} per {rollout.period} reached ({len(recent)} granted)"
    return None


def decide_rollout(
    request: Request, upstream: Response | None, state: PolicyState, now: datetime
) -> Decision:
    """Rollout: let an offer through only inside the windows, for the machine's percentage
    bucket, and while fewer than max distinct machines were granted in the last period.

    A machine already granted the offered version keeps being granted (Nebraska re-serves an
    UpdateGranted instance's package), so the limit counts distinct machines.
    """
    if state.rollout is None or upstream is None:
        return Decision()
    response = upstream
    grants = list(state.grants)
    held, reasons = False, []
    for app, i in _pairs(request, upstream):
        version = _offered(upstream.apps[i])
        if version is None:
            continue
        machine = _norm_id(app.machineid)
        if any(g.machine_id == machine and g.version == version for g in grants):
            reasons.append(f"rollout: {version} already granted to this machine")
            continue
        why = _hold_reason(state.rollout, machine, grants, now)
        if why is None:
            grants.append(Grant(machine, version, now))
            reasons.append(f"rollout: {version} granted")
            continue
        response = _set_uc(response, i, as_noupdate(upstream.apps[i].updatecheck))
        held = True
        reasons.append(f"rollout: {version} held, {why}")
    if not held:
        return Decision(reason="; ".join(reasons))
    return Decision(DecisionAction.NOUPDATE, "; ".join(reasons), response, "held")


# ------------------------------------------------------------------------------------- all


_OUTCOME_RANK = {"forwarded": 0, "rewritten": 1, "held": 2, "blocked": 3}


def decide(request: Request, upstream: Response | None, state: PolicyState, now: datetime) -> Decision:
    """All policies in order: block, then pin, then rollout on the pinned result.

    Before upstream only block decides. After upstream the final decision carries the
    combined reasons, the strongest outcome (blocked > held > rewritten > forwarded), the
    final response (None when nothing changed) and the grants that response makes.
    """
    if upstream is None:
        return decide_block(request, None, state, now)
    current = upstream
    steps = []
    for policy in (decide_block, decide_pin, decide_rollout):
        step = policy(request, current, state, now)
        steps.append(step)
        if step.response is not None:
            current = step.response
    reason = "; ".join(s.reason for s in steps if s.reason)
    grants = grants_made(request, current, now)
    if current is upstream:
        return Decision(reason=reason, grants=grants)
    outcome = max((s.outcome for s in steps), key=_OUTCOME_RANK.__getitem__)
    action = _final_action(request, upstream, current)
    if action is None:  # e.g. a replayed offer then held: same as upstream, named by the last step
        action = next(s.action for s in reversed(steps) if s.action is not DecisionAction.FORWARD)
    return Decision(action, reason, current, outcome, grants)


def _final_action(request: Request, upstream: Response, final: Response) -> DecisionAction | None:
    """Name what the final response does to each app compared with the upstream's."""
    actions = []
    for _app, i in _pairs(request, final):
        if final.apps[i].updatecheck == upstream.apps[i].updatecheck:
            continue
        offered = _offered(final.apps[i]) is not None
        actions.append(DecisionAction.OFFER if offered else DecisionAction.NOUPDATE)
    return _combine(actions) if actions else None
