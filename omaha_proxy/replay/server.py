"""Stand-alone Omaha servers for recordings: one that replays, one that records.

:func:`replay_server` answers ``POST /v1/update/`` from a recording through a
:class:`omaha_proxy.replay.player.Player` and serves the recording's payloads under
``/omaha-proxy/payloads/``; replayed offers point there, so an update replays with no
network at all. :func:`recording_server` forwards every Omaha request to an upstream and
records the exchanges (scrubbed) into a recording file, rewritten after each one.

Both return a started-or-not :class:`omaha_proxy.servers.http.OmahaServer` (use it as a context
manager); ``server.omaha_url`` is the ``SERVER=`` value for update_engine.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from omaha_proxy.protocol.model import Request
from omaha_proxy.replay import recording
from omaha_proxy.replay.player import DEFAULT_MATCHERS, PAYLOAD_PATH, Hit, MissPolicy, Player, miss_answer
from omaha_proxy.replay.recording import Recording, RecordingBuilder
from omaha_proxy.servers.http import OmahaServer, current_http, mapping_resolver

log = logging.getLogger(__name__)

Reply = tuple[int, dict[str, str], bytes]
FORWARD_TIMEOUT = 30.0


def forward(
    upstream: str, raw: bytes, *, timeout: float = FORWARD_TIMEOUT
) -> tuple[Reply, list[tuple[str, str]]]:
    """POST ``raw`` to ``upstream``; returns ``(status, headers, body)`` and the header list.

    Transport failures become a 502 whose body says why (the caller never raises).
    """
    req = urllib.request.Request(upstream, data=raw, method="POST", headers={"Content-Type": "text/xml"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            items = list(resp.headers.items())
            return (
                resp.status,
                {"Content-Type": resp.headers.get("Content-Type", "text/xml")},
                resp.read(),
            ), items
    except urllib.error.HTTPError as e:
        items = list(e.headers.items()) if e.headers else []
        return (e.code, {"Content-Type": e.headers.get("Content-Type", "text/plain")}, e.read()), items
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return (
            502,
            {"Content-Type": "text/plain; charset=utf-8"},
            f"upstream {upstream}: {reason}\n".encode(),
        ), []


def replay_server(
    rec: Recording,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    matchers: Sequence[str] | str = DEFAULT_MATCHERS,
    miss: MissPolicy = MissPolicy.NOUPDATE,
    upstream: str | None = None,
) -> OmahaServer:
    """An Omaha server answering from ``rec`` (not started; use ``with`` or ``.start()``).

    ``miss=FORWARD`` sends unmatched update checks to ``upstream`` (502 when there is none).
    Raises ValueError for unknown matcher names.
    """
    player = Player(rec, matchers=matchers)
    lock = threading.Lock()

    def handle(request: Request, raw: bytes, client_ip: str) -> Reply:
        payload_base = f"http://{current_http().host}{PAYLOAD_PATH}"
        with lock:
            result = player.play(request, payload_base=payload_base)
        if isinstance(result, Hit):
            log.info("replayed %s for %s", result.reason, client_ip)
            answer = result.answer
        else:
            log.warning("replay miss (%s):\n%s", miss.value, result.explanation)
            maybe = miss_answer(request, result, miss)
            if maybe is None:
                if upstream is None:
                    text = f"replay miss and no upstream to forward to\n{result.explanation}\n"
                    return 502, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()
                return forward(upstream, raw)[0]
            answer = maybe
        return answer.status, dict(answer.headers), answer.body

    base = rec.base_dir or Path(".")
    server = OmahaServer(handle, host=host, port=port)
    if rec.payloads:
        server.add_route(PAYLOAD_PATH, mapping_resolver({p.name: base / p.path for p in rec.payloads}))
    return server


def recording_server(
    upstream: str,
    path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    keep_ids: bool = False,
    source: str | None = None,
) -> OmahaServer:
    """An Omaha server forwarding to ``upstream`` and recording every exchange into ``path``.

    The file is rewritten (atomically) after each exchange, so it is complete whenever the
    server stops.
    """
    builder = RecordingBuilder(source=source or f"recording server for {upstream}", keep_ids=keep_ids)
    lock = threading.Lock()

    def handle(request: Request, raw: bytes, client_ip: str) -> Reply:
        reply, response_headers = forward(upstream, raw)
        ctx = current_http()
        with lock:
            builder.add(
                raw,
                reply[2],
                status=reply[0],
                method=ctx.method,
                path=ctx.path,
                request_headers=list(ctx.headers.items()),
                response_headers=response_headers or list(reply[1].items()),
            )
            recording.dump(builder.recording(), path)
        return reply

    return OmahaServer(handle, host=host, port=port)
