"""mitmproxy glue for the control policies: block, pin and staged rollouts.

Run (reverse mode in front of the public server; ``lazy`` lets a blocked check be answered
with the upstream down)::

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net \\
        --set connection_strategy=lazy --set omaha_pin=stable=4081.2.0 --set omaha_block=track:beta

The policies themselves are pure (:mod:`omaha_proxy.policy.decide`); this class parses the options,
keeps the state the policies need (offers seen, grants made) and applies the decisions:
block in ``request`` (before upstream), pin and rollout in ``response``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from mitmproxy import command, ctx, exceptions, http

from omaha_proxy.mitm.common import (
    FeatureAddon,
    answer,
    hooks_active,
    is_answered,
    keep_upstream_response,
    omaha_request,
    omaha_response,
    set_action,
)
from omaha_proxy.policy.decide import (
    Grant,
    PolicyState,
    decide,
    describe_rollout,
    grants_made,
    offer_in,
    parse_block_events,
    parse_block_spec,
    parse_pin_spec,
    parse_rollout_spec,
    per_machine,
)
from omaha_proxy.protocol.decode import encode, parse_response, parse_response_shared
from omaha_proxy.protocol.errors import CodecError, StoreError
from omaha_proxy.protocol.model import AppRequest, Request, Response, UpdateCheckResponse
from omaha_proxy.store.store import Store

logger = logging.getLogger(__name__)

OPTIONS = ("omaha_block", "omaha_block_events", "omaha_pin", "omaha_allow_downgrade", "omaha_rollout")
MARKS = {"blocked": ":no_entry:", "held": ":orange_circle:", "rewritten": ":large_blue_circle:"}
BOARDS = ("amd64-usr", "arm64-usr")
GRANT_MEMORY = timedelta(days=30)  # grants older than this no longer matter for re-serving
MAX_GRANTS = 100_000
MEMO_SECONDS = 5.0  # how long a remembered decision may be reused (offers found in the log)
MEMO_SIZE = 4096  # distinct (apps, upstream answer) pairs remembered at most


def _board_fits(offer: UpdateCheckResponse, board: str | None) -> bool:
    """False when the offer's URLs name another board than the machine's (amd64 vs arm64)."""
    if not board:
        return True
    others = [b for b in BOARDS if b != board]
    return not any(b in (url.codebase or "") for url in offer.urls or () for b in others)


def _is_offer(uc: UpdateCheckResponse | None) -> bool:
    """True when an updatecheck is a usable offer (ok, manifest, at least one URL)."""
    return uc is not None and uc.status == "ok" and uc.manifest is not None and bool(uc.urls)


class OmahaControl(FeatureAddon):
    """Owns ``omaha_block``, ``omaha_block_events``, ``omaha_pin``, ``omaha_allow_downgrade``
    and ``omaha_rollout``; answers blocked checks and rewrites upstream answers."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.state = PolicyState(offers=self._offer_for)
        self.grants: list[Grant] = []
        self._state_cache: tuple[PolicyState, list[Grant], int, PolicyState] | None = None
        self._memo: dict[object, tuple[str, str, bytes | None, bool]] = {}
        self._memo_ok = False  # set by _sync_hooks: no rollout, no machine or alias selectors
        self._memo_since = 0.0
        self._offers_seen = 0
        self.offers: dict[tuple[str, str], UpdateCheckResponse] = {}  # (version, board) -> seen offer
        self._store: Store | None = None
        self._store_path: str | None = None
        self._sync_hooks()

    # ------------------------------------------------------------------ options

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "omaha_block", str, "",
            "Answer update checks noupdate without asking upstream: 'true' (all machines), or "
            "selectors 'track:<name>', 'machine:<id>', 'alias:<glob>', comma-separated. "
            "Reverse mode needs connection_strategy=lazy to work with the upstream down.",
        )  # fmt: skip
        loader.add_option(
            "omaha_block_events", str, "forward",
            "What to do with ping-only and event requests of blocked machines: 'forward' them "
            "upstream (default) or 'ack' them locally.",
            choices=("forward", "ack"),
        )  # fmt: skip
        loader.add_option(
            "omaha_pin", str, "",
            "Pin versions: '<version>' for all, or '<track>=<version>', 'machine:<id>=<version>', "
            "'alias:<glob>=<version>', comma-separated. Offers above the pin become noupdate; "
            "machines below it get a seen offer of the pinned version.",
        )  # fmt: skip
        loader.add_option(
            "omaha_allow_downgrade", bool, False,
            "Let omaha_pin offer machines above the pin the (older) pinned version.",
        )  # fmt: skip
        loader.add_option(
            "omaha_rollout", str, "",
            "Stage offers: 'max=<n>/<period>; percent=<0-100>; salt=<s>; "
            "window=[days] HH:MM-HH:MM [timezone]' (any combination). Held machines get noupdate.",
        )  # fmt: skip

    def _sync_hooks(self) -> None:
        """No block, pin or rollout: mitmproxy need not call the flow hooks at all."""
        state = self.state
        self._memo.clear()  # the policy may have changed
        self._memo_ok = not per_machine(state)
        hooks_active(self, state.block is not None, "request")
        hooks_active(
            self, not (state.block is None and state.pin is None and state.rollout is None), "response"
        )

    def _configure(self, updated: set[str]) -> None:
        if not updated & {*OPTIONS, "omaha_db", "connection_strategy", "mode"}:
            return
        opts = ctx.options
        try:  # parse everything first: a bad value leaves the previous state untouched
            state = replace(
                self.state,
                block=parse_block_spec(opts.omaha_block),
                block_events_local=parse_block_events(opts.omaha_block_events),
                pin=parse_pin_spec(opts.omaha_pin),
                allow_downgrade=bool(opts.omaha_allow_downgrade),
                rollout=parse_rollout_spec(opts.omaha_rollout),
            )
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from e
        self.state = state
        if "omaha_db" in updated:
            self._open_store()
        if state.rollout is not None and updated & {"omaha_rollout", "omaha_db"}:
            self._load_grants()
        strategy = getattr(opts, "connection_strategy", "lazy")
        if (
            state.block is not None
            and strategy == "eager"
            and any(m.startswith("reverse") for m in opts.mode)
        ):
            logger.warning(
                "omaha_block is set with connection_strategy=eager: mitmproxy connects upstream "
                "before the addon can answer, so blocked checks fail while the upstream is down. "
                "Add --set connection_strategy=lazy."
            )
        if state.allow_downgrade and state.pin is not None:
            logger.warning(
                "omaha_allow_downgrade is on: machines above their pin may be offered an older version"
            )

    def _open_store(self) -> None:
        path = getattr(ctx.options, "omaha_db", None) or None
        if path == self._store_path:
            return
        if self._store is not None:
            self._store.close()
        self._store, self._store_path = None, path
        if path:
            try:
                self._store = Store(path)
            except StoreError as e:
                raise exceptions.OptionsError(str(e)) from e

    def _load_grants(self) -> None:
        """Rebuild the rollout's grants from the log (after a restart or a new spec)."""
        if self._store is None:
            return
        since = self.clock() - GRANT_MEMORY
        known = {(g.machine_id, g.version, g.at) for g in self.grants}
        for row in self._store.grants_since(since.timestamp()):
            grant = Grant(
                (row["machine_id"] or "").strip("{}").lower(),
                row["version"] or "",
                datetime.fromtimestamp(row["ts"], UTC),
            )
            if (grant.machine_id, grant.version, grant.at) not in known:
                self.grants.append(grant)
        self.grants.sort(key=lambda g: g.at)

    def done(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store, self._store_path = None, None

    # ------------------------------------------------------------------ offers and grants

    def _offer_for(self, version: str, app: AppRequest) -> UpdateCheckResponse | None:
        """A seen offer of ``version`` for the app's board: this run's first, then the log's."""
        seen = self.offers.get((version, app.board or ""))
        if seen is not None:
            return seen
        if self._store is None:
            return None
        try:
            raw = self._store.latest_offer(version=version)
            found = offer_in(parse_response(raw), version) if raw else None
        except (StoreError, CodecError) as e:
            logger.warning("cannot read a seen offer of %s from the log: %s", version, e)
            return None
        return found if found is not None and _board_fits(found, app.board) else None

    def _remember(self, offers: list[tuple[AppRequest, UpdateCheckResponse]]) -> None:
        for app, uc in offers:
            if uc.manifest is not None and uc.manifest.version:
                key = (uc.manifest.version, app.board or "")
                if self.offers.get(key) is not uc:
                    self.offers[key] = uc
                    self._offers_seen += 1  # decisions remembered before may change

    def _add_grants(self, grants: tuple[Grant, ...], now: datetime) -> None:
        self.grants.extend(grants)
        if len(self.grants) > MAX_GRANTS or (self.grants and self.grants[0].at < now - GRANT_MEMORY):
            self.grants = [g for g in self.grants if g.at >= now - GRANT_MEMORY][-MAX_GRANTS:]

    def _state(self) -> PolicyState:
        # One copy per change of the policy or of the grants list, not per flow.
        cached = self._state_cache
        if (
            cached is None
            or cached[0] is not self.state
            or cached[1] is not self.grants
            or cached[2] != len(self.grants)
        ):
            state = replace(self.state, grants=tuple(self.grants))
            self._state_cache = cached = (self.state, self.grants, len(self.grants), state)
        return cached[3]

    # ------------------------------------------------------------------ hooks

    def request(self, flow: http.HTTPFlow) -> None:
        """Answer a blocked machine's update check noupdate without contacting upstream."""
        if self.state.block is None or flow.response is not None or is_answered(flow):
            return
        request = omaha_request(flow)
        if request is None:
            return
        decision = decide(request, None, self._state(), self.clock())
        if decision.response is not None:
            answer(flow, decision.response, decision.outcome, decision.reason)
            self._mark(flow, decision.outcome, decision.reason)
        elif decision.reason:
            set_action(flow, "forwarded", decision.reason)

    def response(self, flow: http.HTTPFlow) -> None:
        """Apply block/pin/rollout to the upstream's answer, keeping the original."""
        if flow.response is None or is_answered(flow) or not flow.live or flow.response.status_code != 200:
            return
        request = omaha_request(flow)
        if request is None:
            return
        state = self.state
        if state.block is None and state.pin is None and state.rollout is None:
            # No policy, nothing to decide: the hot path of a logging-only proxy. Offers seen
            # meanwhile are found in the log (Store.latest_offer) when a pin later needs one.
            return
        upstream = omaha_response(flow)  # parsed once per body, shared with the logger
        if upstream is None:
            return  # not ours to fix: the logger records the parse error
        pairs = zip(request.apps, upstream.apps, strict=False)
        self._remember(
            [(app, r.updatecheck) for app, r in pairs if r.updatecheck and _is_offer(r.updatecheck)]
        )
        now = self.clock()
        outcome, reason, rewritten = self._decide(request, upstream, flow, now)
        if rewritten is None:
            if reason:
                set_action(flow, "forwarded", reason)
            return
        keep_upstream_response(flow)
        flow.response.content = rewritten
        set_action(flow, outcome, reason)
        # No log line per flow: the reason is in the flow's comment and in the log's row (and
        # mitmdump sets the root logger to DEBUG, so even a debug record costs its handlers).
        self._mark(flow, outcome, reason)

    def _decide(
        self, request: Request, upstream: Response, flow: http.HTTPFlow, now: datetime
    ) -> tuple[str, str, bytes | None]:
        """The outcome, reason and rewritten body (None: keep the upstream's) for a flow.

        A fleet asks the same few questions: thousands of machines on one version and track
        get byte-identical upstream answers, and unless a decision may depend on the machine
        itself (:func:`per_machine`: a rollout, machine or alias selectors) they get the same
        decision. Those are remembered, keyed by everything the policies read: the apps' id,
        version, track and board, the upstream's body, and the offers seen so far. The memo
        is dropped when the policy changes and every few seconds (offers found in the log).
        """
        key = None
        if self._memo_ok:
            body = flow.response.raw_content if flow.response is not None else None
            apps = tuple(
                (a.appid, a.version, a.track, a.board, a.updatecheck is not None) for a in request.apps
            )
            key = (apps, body, self._offers_seen)
            if now.timestamp() - self._memo_since > MEMO_SECONDS or len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
                self._memo_since = now.timestamp()
            hit = self._memo.get(key)
            if hit is not None:
                outcome, reason, rewritten, offers = hit
                if offers and rewritten is not None:  # a replaced offer grants this machine the update
                    self._add_grants(grants_made(request, parse_response_shared(rewritten), now), now)
                return outcome, reason, rewritten
        decision = decide(request, upstream, self._state(), now)
        self._add_grants(decision.grants, now)
        rewritten = encode(decision.response) if decision.response is not None else None
        if key is not None:
            self._memo[key] = (decision.outcome, decision.reason, rewritten, bool(decision.grants))
        return decision.outcome, decision.reason, rewritten

    @staticmethod
    def _mark(flow: http.HTTPFlow, outcome: str, reason: str) -> None:
        flow.marked = MARKS.get(outcome, ":large_blue_circle:")
        flow.comment = f"omaha {outcome}: {reason}"

    # ------------------------------------------------------------------ commands

    @command.command("omaha.block")
    def block(self, spec: str = "true") -> str:
        """Block update checks: 'true' or selectors (track:, machine:, alias:)."""
        ctx.options.update(omaha_block=spec)
        return self.status()

    @command.command("omaha.unblock")
    def unblock(self) -> str:
        """Stop blocking."""
        ctx.options.update(omaha_block="")
        return self.status()

    @command.command("omaha.pin")
    def pin(self, spec: str) -> str:
        """Pin versions ('4081.2.0' or 'stable=4081.2.0,machine:<id>=...')."""
        ctx.options.update(omaha_pin=spec)
        return self.status()

    @command.command("omaha.unpin")
    def unpin(self) -> str:
        """Remove every pin."""
        ctx.options.update(omaha_pin="")
        return self.status()

    @command.command("omaha.rollout")
    def rollout(self, spec: str) -> str:
        """Set the rollout ('max=2/1h; percent=25; window=Mon-Fri 09:00-17:00 UTC'; 'off')."""
        ctx.options.update(omaha_rollout=spec)
        return self.status()

    @command.command("omaha.status")
    def status(self) -> str:
        """The control settings in force, the seen offers and the grants of the period."""
        st, opts = self.state, ctx.options
        lines = [
            f"block: {opts.omaha_block or 'off'}"
            + (f" (pings/events: {opts.omaha_block_events})" if st.block else ""),
            f"pin: {opts.omaha_pin or 'off'}"
            + (" (downgrades allowed)" if st.pin and st.allow_downgrade else ""),
            f"rollout: {describe_rollout(st.rollout) if st.rollout else 'off'}",
        ]
        if st.rollout is not None and st.rollout.period is not None:
            since = self.clock() - st.rollout.period
            recent = {g.machine_id for g in self.grants if g.at >= since}
            lines.append(f"machines offered an update in the current period: {len(recent)}")
        seen = sorted({f"{v} ({b or '?'})" for v, b in self.offers})
        lines.append(f"offers seen: {', '.join(seen) or 'none'}")
        return "\n".join(lines)
