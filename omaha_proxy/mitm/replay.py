"""mitmproxy glue for recordings: replay Omaha answers offline, record live traffic.

Run::

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net \\
        --set connection_strategy=lazy --set omaha_replay=recordings/full-update.json

With ``omaha_replay`` set, every Omaha request is answered from the recording by
:class:`omaha_proxy.replay.player.Player` (``omaha_action="replayed"``) and never reaches an
upstream. Reverse mode connects to the upstream as soon as a client connects unless
``connection_strategy=lazy``; this addon switches it to ``lazy`` (and says so) when replay
is on. Recorded payloads are served at ``/omaha-proxy/payloads/<name>`` by the proxy itself,
and replayed offers point there. A miss is logged with its explanation and answered as
``omaha_replay_miss`` says. mitmproxy's own ``server_replay`` (``-S``) would overwrite our
answers, so the two are refused together.

With ``omaha_record`` set, every Omaha exchange the upstream answered is appended (scrubbed
unless ``omaha_record_keep_ids``) to that recording file, rewritten atomically after each one.
Answers made by the proxy itself (replayed, blocked...) are not recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from omaha_proxy.mitm import common
from omaha_proxy.protocol.errors import RecordingError
from omaha_proxy.replay import recording
from omaha_proxy.replay.player import (
    DEFAULT_MATCHERS,
    PAYLOAD_PATH,
    Hit,
    MissPolicy,
    Player,
    miss_answer,
    parse_matchers,
    parse_miss_policy,
)
from omaha_proxy.replay.recording import RecordingBuilder
from omaha_proxy.servers.http import parse_range

log = logging.getLogger(__name__)


class OmahaReplay(common.FeatureAddon):
    """Owns the ``omaha_replay*`` and ``omaha_record*`` options."""

    def __init__(self) -> None:
        self.player: Player | None = None
        self.miss = MissPolicy.NOUPDATE
        self.recorder: RecordingBuilder | None = None
        self.record_path: Path | None = None
        self._sync_hooks()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "omaha_replay", str, "",
            "Answer Omaha requests from this recording (JSON) without contacting any upstream.",
        )  # fmt: skip
        loader.add_option(
            "omaha_replay_match", str, ",".join(DEFAULT_MATCHERS),
            "Comma list of matchers a live request must agree on with a recorded one "
            "(appid, track, version, board, kind, errorcode, previousversion, machine, oem, installsource).",
        )  # fmt: skip
        loader.add_option(
            "omaha_replay_miss", str, MissPolicy.NOUPDATE.value,
            "What an update check matching no recorded exchange gets: forward, noupdate or error.",
        )  # fmt: skip
        loader.add_option(
            "omaha_record", str, "",
            "Record every Omaha exchange the upstream answers into this recording file.",
        )  # fmt: skip
        loader.add_option(
            "omaha_record_keep_ids", bool, False,
            "Keep machine ids, boot ids, aliases and client addresses in recordings (default: scrubbed).",
        )  # fmt: skip

    def _sync_hooks(self) -> None:
        """No recording to play or to make: mitmproxy need not call the flow hooks at all."""
        common.hooks_active(self, self.player is not None, "request")
        common.hooks_active(self, self.recorder is not None, "response")

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if updated & {"omaha_replay", "omaha_replay_match"}:
            try:
                matchers = parse_matchers(opts.omaha_replay_match)
                rec = recording.load(opts.omaha_replay) if opts.omaha_replay else None
            except (ValueError, RecordingError) as e:
                raise exceptions.OptionsError(str(e)) from e
            self.player = Player(rec, matchers=matchers) if rec is not None else None
            if rec is not None:
                log.info(
                    "omaha_replay: %d exchanges of %d machines from %s (matchers: %s)",
                    len(rec.exchanges), len(rec.machines), opts.omaha_replay, ", ".join(matchers),
                )  # fmt: skip
        if "omaha_replay_miss" in updated:
            try:
                self.miss = parse_miss_policy(opts.omaha_replay_miss)
            except ValueError as e:
                raise exceptions.OptionsError(f"omaha_replay_miss: {e}") from e
        if self.player is not None and updated & {"omaha_replay", "server_replay", "connection_strategy"}:
            self._check_offline(opts)
        if updated & {"omaha_record", "omaha_record_keep_ids"}:
            self._flush()
            path = opts.omaha_record
            self.record_path = Path(path) if path else None
            self.recorder = (
                RecordingBuilder(source="omaha-proxy (live)", keep_ids=opts.omaha_record_keep_ids)
                if path
                else None
            )

    def _check_offline(self, opts: object) -> None:
        if getattr(opts, "server_replay", None):
            raise exceptions.OptionsError(
                "omaha_replay cannot be combined with server_replay (-S): mitmproxy's server replay "
                "would overwrite the Omaha answers; use one or the other"
            )
        if getattr(opts, "connection_strategy", "lazy") == "eager":
            log.warning("omaha_replay: setting connection_strategy=lazy so replayed answers need no upstream")
            ctx.options.update(connection_strategy="lazy")

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or common.is_answered(flow) or self.player is None:
            return
        if flow.request.method in ("GET", "HEAD") and flow.request.path.startswith(PAYLOAD_PATH):
            self._serve_payload(flow)
            return
        req = common.omaha_request(flow)
        if req is None:
            return
        result = self.player.play(req, payload_base=_payload_base(flow))
        if isinstance(result, Hit):
            answer, reason = result.answer, result.reason
            log.info("omaha_replay: %s", reason)
        else:
            log.warning("omaha_replay miss (%s):\n%s", self.miss.value, result.explanation)
            miss = miss_answer(req, result, self.miss)
            if miss is None:
                common.set_action(flow, "forwarded", "replay miss: forwarded")
                return
            answer, reason = miss, f"replay miss: {self.miss.value}"
        flow.response = http.Response.make(answer.status, answer.body, dict(answer.headers))
        flow.is_replay = "response"
        common.set_action(flow, "replayed", reason)

    def _serve_payload(self, flow: http.HTTPFlow) -> None:
        assert self.player is not None
        name = flow.request.path[len(PAYLOAD_PATH) :].split("?", 1)[0]
        path = self.player.recording.payload_file(name)
        if path is None or not path.is_file():
            return
        data = path.read_bytes()
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        span = parse_range(flow.request.headers.get("Range"), len(data))
        if span is False:
            flow.response = http.Response.make(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        elif isinstance(span, tuple):
            first, last = span
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            flow.response = http.Response.make(206, data[first : last + 1], headers)
        else:
            flow.response = http.Response.make(200, data, headers)
        if flow.request.method == "HEAD":
            flow.response.content = b""
            flow.response.headers["Content-Length"] = str(len(data))
        common.set_action(flow, "served", f"recorded payload {name}")

    def response(self, flow: http.HTTPFlow) -> None:
        if self.recorder is None or flow.response is None or common.is_answered(flow):
            return
        if not common.is_omaha_request(flow):
            return
        self.recorder.add(
            common.request_body(flow),
            common.response_body(flow),
            status=flow.response.status_code,
            method=flow.request.method,
            path=flow.request.path,
            request_headers=list(flow.request.headers.items(multi=True)),
            response_headers=list(flow.response.headers.items(multi=True)),
        )
        self._flush()

    def done(self) -> None:
        self._flush()

    @command.command("omaha.replay.status")
    def status(self) -> str:
        """What is replayed: hits, misses, and which live machine replays which recorded one."""
        if self.player is None:
            return "omaha_replay is off"
        p = self.player
        lines = [f"replaying {ctx.options.omaha_replay}: {p.hits} hits, {p.misses} misses"]
        lines += [f"  {live or '(no machine id)'} -> {recorded}" for live, recorded in p.bindings.items()]
        return "\n".join(lines)

    @command.command("omaha.replay.reset")
    def reset(self) -> str:
        """Start every replayed session over (forget machine bindings and positions)."""
        if self.player is not None:
            self.player.reset()
        return self.status()

    def _flush(self) -> None:
        # Like mitmproxy's save addon: a recording that cannot be written is an error, not a shrug.
        if self.recorder is not None and self.record_path is not None and len(self.recorder):
            recording.dump(self.recorder.recording(), self.record_path)


def _payload_base(flow: http.HTTPFlow) -> str:
    """Where the client reaches this proxy's payload route."""
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode) and flow.client_conn.sockname[1]:
        host, port = flow.client_conn.sockname[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if flow.client_conn.tls_established else "http"
        return f"{scheme}://{host}:{port}{PAYLOAD_PATH}"
    # Regular/upstream mode: the client sends the payload GET through the proxy too.
    return f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}{PAYLOAD_PATH}"
