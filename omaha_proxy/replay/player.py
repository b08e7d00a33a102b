"""Replay a recording by protocol meaning: named matchers, per-machine play state, explained misses.

Byte-level replay fails for Omaha (every request carries machine and boot ids), so a live
request is compared with recorded ones through *matchers*: small pure functions, chosen by
name like vcrpy's, each mapping a request to a key (``version`` -> the apps' versions). Two
requests match when every chosen matcher gives equal keys.

Play state (:class:`Player`) is per machine: on first contact a live machine id is bound to
the recorded machine whose session it matches, and then walks that session in order (update
check -> offer -> 13/1 -> 14/1 -> 3/1 -> pings -> 3/2). A request that matches nothing ahead
in the session repeats the latest earlier match (steady-state polling). Events and pings that
match nothing are acked (update_engine never reads those answers); an update check that
matches nothing is a :class:`Miss`, which explains itself. What to answer on a miss is the
caller's :class:`MissPolicy`.

Pure: no files, sockets or clocks. The proxy addon and the replay server call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from omaha_proxy.protocol import build
from omaha_proxy.protocol import decode as codec
from omaha_proxy.protocol.describe import RequestKind, app_kind, describe_request
from omaha_proxy.protocol.errors import CodecError, ReplayMiss
from omaha_proxy.protocol.model import AppRequest, Request, Response
from omaha_proxy.replay.recording import Exchange, Recording, event_label, machine_of

Matcher = Callable[[Request], Hashable]

PAYLOAD_PATH = "/omaha-proxy/payloads/"
"""Where a replayer serves recorded payloads (the offer's codebase is rewritten to it)."""


# ------------------------------------------------------------------------------ matchers


def _norm_appid(appid: str | None) -> str | None:
    # Nebraska accepts appids with or without braces, in any case.
    return None if appid is None else appid.strip("{}").lower()


def appid(req: Request) -> Hashable:
    """The apps' ids, braces and case ignored."""
    return tuple(_norm_appid(a.appid) for a in req.apps)


def track(req: Request) -> Hashable:
    """The apps' tracks (``GROUP``: stable, beta, alpha...)."""
    return tuple(a.track for a in req.apps)


def version(req: Request) -> Hashable:
    """The apps' running versions."""
    return tuple(a.version for a in req.apps)


def board(req: Request) -> Hashable:
    """The apps' boards (``amd64-usr``, ``arm64-usr``)."""
    return tuple(a.board for a in req.apps)


def _kind_key(app: AppRequest) -> str:
    kind = app_kind(app)
    if kind == RequestKind.EVENT:
        return "event " + ",".join(event_label(e.eventtype, e.eventresult) for e in app.events)
    return str(kind)


def kind(req: Request) -> Hashable:
    """Per app: ``updatecheck``, ``ping``, ``other`` or ``event T/R`` (type/result)."""
    return tuple(_kind_key(a) for a in req.apps)


def errorcode(req: Request) -> Hashable:
    """The error codes of the apps' events (None where an event has none)."""
    return tuple(tuple(e.errorcode for e in a.events) for a in req.apps)


def previousversion(req: Request) -> Hashable:
    """The events' ``previousversion``: "" steady, "0.0.0.0" first boot, the old version after reboot."""
    return tuple(tuple(e.previousversion for e in a.events) for a in req.apps)


def machine(req: Request) -> Hashable:
    """The apps' machine ids (only useful with recordings made with ids kept)."""
    return tuple(a.machineid for a in req.apps)


def oem(req: Request) -> Hashable:
    """The apps' OEM ids (``qemu``, ``azure``...)."""
    return tuple(a.oem for a in req.apps)


def installsource(req: Request) -> Hashable:
    """``scheduler`` or ``ondemandupdate`` (``update_engine_client -update``)."""
    return req.installsource


MATCHERS: dict[str, Matcher] = {
    f.__name__: f
    for f in (appid, track, version, board, kind, errorcode, previousversion, machine, oem, installsource)
}
"""Every matcher, by name."""

DEFAULT_MATCHERS: tuple[str, ...] = ("appid", "track", "board", "kind", "version", "previousversion")


def parse_matchers(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Validate a comma list (or sequence) of matcher names; "" means the default set.

    Raises ValueError naming the unknown matcher and every valid one.
    """
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else [n.strip() for n in spec]
    names = [n for n in names if n]
    if not names:
        return DEFAULT_MATCHERS
    for name in names:
        if name not in MATCHERS:
            raise ValueError(f"unknown matcher {name!r}; valid matchers: {', '.join(MATCHERS)}")
    return tuple(dict.fromkeys(names))


class MissPolicy(StrEnum):
    """What to answer when an update check matches no recorded exchange."""

    FORWARD = "forward"  # pass it on to the upstream (or fail if there is none)
    NOUPDATE = "noupdate"  # answer a well-formed noupdate
    ERROR = "error"  # answer an HTTP error carrying the explanation


def parse_miss_policy(value: str) -> MissPolicy:
    """``"noupdate"`` -> ``MissPolicy.NOUPDATE``; ValueError lists the valid values."""
    try:
        return MissPolicy(value.strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown miss policy {value!r}; valid values: {', '.join(p.value for p in MissPolicy)}"
        ) from None


# ------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer to send: status, headers, body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    """A request answered from the recording.

    ``exchange`` is the recorded exchange used (None when an event/ping was acked without
    one); ``repeat`` is True when an earlier exchange was played again.
    """

    answer: Answer
    exchange: Exchange | None
    track: str | None
    reason: str
    repeat: bool = False

    @property
    def synthesized(self) -> bool:
        """True when no recorded answer was used (an unrecorded event or ping got an ack)."""
        return self.exchange is None


@dataclass(frozen=True, slots=True)
class MatcherDiff:
    """One matcher that failed: its name and both keys."""

    matcher: str
    live: Hashable
    recorded: Hashable

    def __str__(self) -> str:
        return f"{self.matcher} (live {_show(self.live)}, recorded {_show(self.recorded)})"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A recorded exchange near a missed request, with the matchers it failed."""

    exchange: Exchange
    failed: tuple[MatcherDiff, ...]

    def __str__(self) -> str:
        facts = self.exchange.facts
        what = " ".join(
            str(x) for x in (self.exchange.kind, facts.get("version"), " ".join(facts.get("events", ()))) if x
        )
        failed = "; ".join(str(d) for d in self.failed) or "nothing (already played)"
        return (
            f"#{self.exchange.seq} {self.exchange.machine} {what} -> {facts.get('response')}: failed {failed}"
        )


@dataclass(frozen=True, slots=True)
class Miss:
    """A request that matched no recorded exchange, with why."""

    request: str
    machine: str | None
    track: str | None
    matchers: tuple[str, ...]
    nearest: tuple[Candidate, ...]

    @property
    def explanation(self) -> str:
        """Several lines: the request, the matchers, the nearest recorded exchanges."""
        where = f"bound to recorded {self.track}" if self.track else "not bound to any recorded machine"
        lines = [
            f"no recorded exchange matches {self.request} (machine {self.machine}, {where})",
            f"matchers: {', '.join(self.matchers)}",
        ]
        if self.nearest:
            lines.append("nearest recorded exchanges:")
            lines += [f"  {c}" for c in self.nearest]
        else:
            lines.append("the recording has no exchanges")
        return "\n".join(lines)

    def error(self) -> ReplayMiss:
        """This miss as an exception (for callers that treat a miss as fatal)."""
        return ReplayMiss(self.explanation)


def _show(key: Hashable) -> str:
    if isinstance(key, tuple) and len(key) == 1:
        key = key[0]
    return repr(key)


# ---------------------------------------------------------------------------- play state

_XML_HEADERS = (("Content-Type", "text/xml"),)


Keys = dict[str, Hashable]
"""A request's key under each chosen matcher (None for an undecodable recorded request)."""


@dataclass
class _Track:
    name: str
    exchanges: list[tuple[Exchange, Keys | None]]
    kinds: list[Hashable]  # each exchange's ``kind`` key, whatever the chosen matchers


class Player:
    """Answers live Omaha requests from a recording; holds the play state of every machine.

    Not thread-safe: callers serialise ``play`` (the addon runs on one event loop, the
    server takes a lock).
    """

    def __init__(self, recording: Recording, *, matchers: Sequence[str] = DEFAULT_MATCHERS) -> None:
        self.recording = recording
        self.matchers = parse_matchers(matchers)
        tracks: dict[str, _Track] = {}
        for exchange in recording.exchanges:
            name = exchange.machine or "(no machine)"
            recorded = _parse(exchange)
            track = tracks.setdefault(name, _Track(name, [], []))
            track.exchanges.append((exchange, None if recorded is None else self._keys(recorded)))
            track.kinds.append(None if recorded is None else kind(recorded))
        self._tracks = list(tracks.values())
        self._bindings: dict[str, _Track] = {}
        self._cursors: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    @property
    def bindings(self) -> dict[str, str]:
        """Live machine key -> recorded machine it replays."""
        return {key: t.name for key, t in self._bindings.items()}

    def reset(self) -> None:
        """Forget every binding and position (start all sessions over)."""
        self._bindings.clear()
        self._cursors.clear()

    def play(self, request: Request, *, payload_base: str | None = None) -> Hit | Miss:
        """Answer ``request`` from the recording, advancing its machine's play state.

        ``payload_base`` (e.g. ``http://proxy:8080/omaha-proxy/payloads/``): when every package
        of a replayed offer is a payload of the recording, the offer's codebase is rewritten to
        it so the update replays offline. Returns a :class:`Hit` or a :class:`Miss`; never raises
        for a request that does not match.
        """
        key = machine_of(request) or ""
        live = self._keys(request)
        track = self._bindings.get(key)
        found = self._find(track, self._cursors.get(key, 0), live) if track else self._bind(key, live)
        if found is not None:
            track, index, repeat = found
            exchange = track.exchanges[index][0]
            if not repeat:
                self._cursors[key] = index + 1
            self.hits += 1
            answer = _rewrite_codebase(self.recording, exchange, payload_base)
            how = "repeat of" if repeat else "recorded"
            reason = f"{how} #{exchange.seq} ({track.name})"
            return Hit(answer, exchange, track.name, reason, repeat)
        if request.apps and all(app_kind(a) in (RequestKind.EVENT, RequestKind.PING) for a in request.apps):
            # update_engine never parses the answer to an event or a ping: any ack will do, but
            # a recorded answer to the same kind of request keeps the upstream's shape.
            self.hits += 1
            like = self._like(track, kind(request))
            if like is not None:
                t, exchange = like
                return Hit(
                    recorded_answer(exchange), exchange, t.name, f"like #{exchange.seq} ({t.name})", True
                )
            body = codec.encode(build.ack_response(request))
            return Hit(Answer(200, _XML_HEADERS, body), None, track.name if track else None, "acked")
        self.misses += 1
        return Miss(
            request=describe_request(request),
            machine=key or None,
            track=track.name if track else None,
            matchers=self.matchers,
            nearest=self._nearest(track, self._cursors.get(key, 0), live),
        )

    # -- matching

    def _keys(self, request: Request) -> Keys:
        return {name: MATCHERS[name](request) for name in self.matchers}

    @staticmethod
    def _diffs(live: Keys, recorded: Keys | None) -> tuple[MatcherDiff, ...]:
        if recorded is None:
            return (MatcherDiff("body", "Omaha request", "undecodable"),)
        return tuple(MatcherDiff(n, live[n], recorded[n]) for n in live if live[n] != recorded[n])

    def _find(self, track: _Track, cursor: int, live: Keys) -> tuple[_Track, int, bool] | None:
        """Next match at or after ``cursor``; else the latest match before it (a repeat)."""
        entries = track.exchanges
        for i in range(cursor, len(entries)):
            if entries[i][1] == live:
                return track, i, False
        for i in range(min(cursor, len(entries)) - 1, -1, -1):
            if entries[i][1] == live:
                return track, i, True
        return None

    def _like(self, track: _Track | None, kind_key: Hashable) -> tuple[_Track, Exchange] | None:
        """A recorded exchange of the same kind (its machine's first, else anyone's)."""
        for t in ([track] if track else []) + [t for t in self._tracks if t is not track]:
            for (exchange, _), recorded_kind in zip(t.exchanges, t.kinds, strict=True):
                if recorded_kind == kind_key:
                    return t, exchange
        return None

    def _bind(self, key: str, live: Keys) -> tuple[_Track, int, bool] | None:
        """Bind a new machine to the recorded machine whose session it starts earliest in.

        Unbound recorded machines are preferred, so N live machines spread over N recorded ones.
        """
        taken = {t.name for t in self._bindings.values()}
        best: tuple[int, int, int] | None = None
        chosen: _Track | None = None
        for order, track in enumerate(self._tracks):
            found = self._find(track, 0, live)
            if found is None:
                continue
            rank = (found[1], track.name in taken, order)
            if best is None or rank < best:
                best, chosen = rank, track
        if chosen is None or best is None:
            return None
        self._bindings[key] = chosen
        return chosen, best[0], False

    def _nearest(
        self, track: _Track | None, cursor: int, live: Keys, limit: int = 3
    ) -> tuple[Candidate, ...]:
        pool = [(t, i) for t in ([track] if track else self._tracks) for i in range(len(t.exchanges))]
        scored = []
        for t, i in pool:
            diffs = self._diffs(live, t.exchanges[i][1])
            scored.append(
                (len(diffs), abs(i - cursor) if t is track else i, t.exchanges[i][0].seq, diffs, t, i)
            )
        scored.sort(key=lambda s: s[:3])
        return tuple(Candidate(t.exchanges[i][0], diffs) for _, _, _, diffs, t, i in scored[:limit])


def _parse(exchange: Exchange) -> Request | None:
    try:
        return codec.parse_request(exchange.request.body)
    except CodecError:
        return None


def recorded_answer(exchange: Exchange) -> Answer:
    """The recorded HTTP answer of an exchange (headers as recorded, Content-Type ensured)."""
    headers = exchange.response.headers
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers = (*headers, *_XML_HEADERS)
    return Answer(exchange.response.status, headers, exchange.response.body)


def _rewrite_codebase(recording: Recording, exchange: Exchange, payload_base: str | None) -> Answer:
    answer = recorded_answer(exchange)
    if payload_base is None or not recording.payloads:
        return answer
    try:
        response = codec.parse_response(answer.body)
    except CodecError:
        return answer
    names = {
        p.name
        for app in response.apps
        if app.updatecheck is not None
        for m in app.updatecheck.manifests
        for p in m.packages or ()
        if p.name
    }
    # One codebase serves every package of an offer: rewrite only when all are recorded.
    if not names or any(recording.payload(n) is None for n in names):
        return answer
    base = payload_base if payload_base.endswith("/") else payload_base + "/"
    rewritten: Response = build.with_codebase(response, lambda _old: base)
    return dataclasses.replace(answer, body=codec.encode(rewritten))


def miss_answer(request: Request, miss: Miss, policy: MissPolicy) -> Answer | None:
    """The answer a miss gets under ``policy``; None means "forward it upstream"."""
    if policy is MissPolicy.FORWARD:
        return None
    if policy is MissPolicy.NOUPDATE:
        return Answer(200, _XML_HEADERS, codec.encode(build.noupdate_response(request)))
    body = ("omaha-proxy replay miss\n" + miss.explanation + "\n").encode("utf-8")
    return Answer(404, (("Content-Type", "text/plain; charset=utf-8"),), body)
