"""OmahaGuard: bounded memory for huge bodies, and a fallback answer when the upstream fails.

Run (first in the chain, before the addons that read bodies)::

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net \\
        --set omaha_fallback=noupdate

**Huge bodies.** mitmproxy buffers every body whole by default. A body larger than
``omaha_max_body`` (default 1 MiB, the codec's own limit; update_engine's are under 4 KiB and
Nebraska refuses more than 64 KiB) is streamed through untouched instead, never held in
memory: the guard sets mitmproxy's ``stream_large_bodies`` to that size when the user has not
set it. For a POST (or its response) the first ``omaha_max_body`` bytes are kept while
streaming, so the logger still records the exchange: raw head, its parse error, and a reason
saying how large the body was.

**Upstream failures** (``omaha_fallback``). Off by default: what the machine gets is what
mitmproxy gives (the README's hardening section lists each case and what update_engine makes
of it). With ``noupdate`` or a recording path, an Omaha request is answered by the proxy when

- the upstream cannot be reached: probed with a TCP connect (at most
  ``omaha_upstream_connect_timeout`` seconds, the result cached for two seconds) before the
  request is forwarded;
- the upstream answers 502 or 504 (a gateway that cannot reach the real server), or a body
  that is not an Omaha response.

A recording answers as ``omaha_replay`` would (a miss gets noupdate); ``noupdate`` answers a
Nebraska-shaped noupdate that acks pings and events. Either way the flow's action is
``replayed`` and its reason names the failure; the upstream's own answer (if any) is kept for
the log. 500 and 503 pass untouched: they tell update_engine to back off, which is the
server's call. A connection reset or stall *after* the upstream accepted cannot be answered
by an addon (mitmproxy sends 502 itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.utils import human

from omaha_proxy.mitm import common
from omaha_proxy.protocol.build import noupdate_response
from omaha_proxy.protocol.decode import parse_response
from omaha_proxy.protocol.errors import CodecError, RecordingError
from omaha_proxy.replay import recording
from omaha_proxy.replay.player import Hit, MissPolicy, Player, miss_answer

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20
FALLBACK_STATUSES = frozenset({502, 504})  # a gateway that cannot reach the real server
_PROBE_TTL = 2.0
_META_STREAMED = "omaha_streamed_bytes"


def parse_max_body(value: int) -> int:
    """Validate ``omaha_max_body``: bytes, at least 4096. Raises ValueError."""
    if value < 4096:
        raise ValueError(f"omaha_max_body must be at least 4096 bytes (real bodies are ~1 KiB), got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Fallback:
    """What answers for a failed upstream: ``noupdate``, or a recording's player."""

    label: str
    player: Player | None = None


def parse_fallback(value: str) -> Fallback | None:
    """Validate ``omaha_fallback``: empty/``off``, ``noupdate`` or a recording file.

    Returns None when off; raises ValueError naming the valid values."""
    spec = value.strip()
    if spec in ("", "off", "false"):
        return None
    if spec == "noupdate":
        return Fallback("noupdate")
    try:
        rec = recording.load(spec)
    except (RecordingError, OSError) as e:
        raise ValueError(f"omaha_fallback must be off, noupdate or a recording file: {e}") from e
    return Fallback(f"recording {spec}", Player(rec))


class _Head:
    """A ``flow.request.stream``/``flow.response.stream`` callable: passes every chunk on
    untouched and keeps the first ``limit`` bytes (and the total) for the log."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.total = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        return chunk


class OmahaGuard(common.FeatureAddon):
    """Owns ``omaha_max_body``, ``omaha_fallback`` and ``omaha_upstream_connect_timeout``."""

    def __init__(self) -> None:
        self.max_body = DEFAULT_MAX_BODY
        self.fallback: Fallback | None = None
        self._probes: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._heads: dict[str, tuple[_Head | None, _Head | None]] = {}
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        """Without a fallback and with no huge body in flight, mitmproxy need not call the
        request, response and error hooks at all (``requestheaders``/``responseheaders``
        stay: they spot the huge bodies)."""
        common.hooks_active(
            self, self.fallback is not None or bool(self._heads), "request", "response", "error"
        )

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "omaha_max_body", int, DEFAULT_MAX_BODY,
            "Bodies larger than this (bytes) are streamed through untouched instead of buffered; "
            "an Omaha exchange's first bytes are still logged.",
        )  # fmt: skip
        loader.add_option(
            "omaha_fallback", str, "",
            "Answer Omaha requests when the upstream is unreachable or answers 502/504/garbage: "
            "off, noupdate, or a recording file to replay from.",
        )  # fmt: skip
        loader.add_option(
            "omaha_upstream_connect_timeout", int, 5,
            "Seconds the omaha_fallback probe waits for the upstream to accept a connection.",
        )  # fmt: skip

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "omaha_max_body" in updated:
            try:
                self.max_body = parse_max_body(opts.omaha_max_body)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
        # stream_large_bodies and connection_strategy belong to mitmproxy's proxyserver addon.
        if updated & {"omaha_max_body", "stream_large_bodies"} and "stream_large_bodies" in opts:
            limit = human.parse_size(opts.stream_large_bodies) if opts.stream_large_bodies else None
            if limit is None or limit > self.max_body:
                # mitmproxy streams (never buffers) anything above this; see the module docstring.
                opts.update(stream_large_bodies=str(self.max_body))
        if "omaha_fallback" in updated:
            try:
                self.fallback = parse_fallback(opts.omaha_fallback)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            self._probes.clear()
            if self.fallback is not None:
                log.info("omaha_fallback: %s answers when the upstream fails", self.fallback.label)
        eager = getattr(opts, "connection_strategy", "lazy") == "eager"
        if self.fallback is not None and eager and updated & {"omaha_fallback", "connection_strategy"}:
            # eager connects before any hook runs: a dead upstream drops the machine's connection.
            log.warning("omaha_fallback: setting connection_strategy=lazy so it can answer")
            opts.update(connection_strategy="lazy")

    # ------------------------------------------------------------------ huge bodies

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.stream is True and flow.request.method == "POST":
            head = _Head(self.max_body)
            flow.request.stream = head
            self._heads[flow.id] = (head, None)
            self._sync_hooks()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.stream is True and flow.request.method == "POST":
            head = _Head(self.max_body)
            flow.response.stream = head
            self._heads[flow.id] = (self._heads.get(flow.id, (None, None))[0], head)
            self._sync_hooks()

    def _restore_request_head(self, flow: http.HTTPFlow) -> None:
        head = self._heads.get(flow.id, (None, None))[0]
        if head is None or flow.metadata.get(_META_STREAMED):
            return
        # The body is already on its way upstream; what the addons see is only the head.
        flow.request.content = bytes(head.head)
        flow.metadata[_META_STREAMED] = head.total
        common.set_action(
            flow, "forwarded",
            f"request body of {head.total} bytes over omaha_max_body={self.max_body}: "
            f"streamed untouched, first {len(head.head)} bytes logged",
        )  # fmt: skip

    # ------------------------------------------------------------------ fallback

    async def request(self, flow: http.HTTPFlow) -> None:
        self._restore_request_head(flow)
        if self.fallback is None or flow.response is not None or common.is_answered(flow):
            return
        if common.omaha_request(flow) is None:
            return
        problem = await self._probe(flow.request.host, flow.request.port)
        if problem is not None:
            self._answer(flow, f"upstream unreachable ({problem})")

    async def _probe(self, host: str, port: int) -> str | None:
        """None when the upstream accepts a TCP connection, else why not (cached briefly)."""
        key = (host, port)
        now = time.monotonic()
        cached = self._probes.get(key)
        if cached is not None and now - cached[0] < _PROBE_TTL:
            return cached[1]
        problem: str | None = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), ctx.options.omaha_upstream_connect_timeout
            )
            writer.close()
        except TimeoutError:
            problem = f"no connection within {ctx.options.omaha_upstream_connect_timeout} s"
        except OSError as e:
            problem = e.strerror or str(e)
        self._probes[key] = (now, problem)
        return problem

    def response(self, flow: http.HTTPFlow) -> None:
        heads = self._heads.pop(flow.id, None)
        if heads is not None and not self._heads:
            self._sync_hooks()
        if heads is not None and heads[1] is not None and flow.response is not None:
            flow.response.content = bytes(heads[1].head)
            flow.metadata["omaha_streamed_response_bytes"] = heads[1].total
        if self.fallback is None or flow.response is None or common.is_answered(flow):
            return
        if heads is not None or common.omaha_request(flow) is None:
            return  # a streamed answer is already on its way to the machine
        status = flow.response.status_code
        if status in FALLBACK_STATUSES:
            self._answer(flow, f"upstream answered HTTP {status}", keep=True)
        elif 200 <= status < 300:
            try:
                parse_response(common.response_body(flow))
            except CodecError as e:
                self._answer(flow, f"upstream answered garbage ({e})", keep=True)

    def error(self, flow: http.HTTPFlow) -> None:
        if self._heads.pop(flow.id, None) is not None and not self._heads:
            self._sync_hooks()

    def _answer(self, flow: http.HTTPFlow, problem: str, keep: bool = False) -> None:
        assert self.fallback is not None
        req = common.omaha_request(flow)
        assert req is not None
        if keep:
            common.keep_upstream_response(flow)
        player = self.fallback.player
        if player is None:
            common.answer(flow, noupdate_response(req), "replayed", f"fallback: {problem}; answered noupdate")
            return
        result = player.play(req)  # offers keep their recorded codebase
        if isinstance(result, Hit):
            answer, how = result.answer, result.reason
        else:
            miss = miss_answer(req, result, MissPolicy.NOUPDATE)
            assert miss is not None
            answer, how = miss, "no recorded match: noupdate"
        flow.response = http.Response.make(answer.status, answer.body, dict(answer.headers))
        common.set_action(flow, "replayed", f"fallback: {problem}; {how}")
        log.warning("omaha_fallback: %s", flow.metadata[common.META_REASON])
