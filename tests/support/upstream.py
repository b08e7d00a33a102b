"""A tiny Nebraska-shaped Omaha upstream on 127.0.0.1 for end-to-end tests.

It answers every POST (any path) the way Nebraska would, with the byte shapes of the
``nebraska-shape__*`` samples: update checks get ``noupdate`` (or the offer sample after
:meth:`FakeUpstream.offer`), events and pings get acks, and a malformed body gets HTTP 200
with only the XML declaration (Nebraska's behaviour). :meth:`FakeUpstream.answer_next`
queues exact answers (status, body) for the next requests. Every request is recorded.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from omaha_proxy.protocol.decode import parse_request
from omaha_proxy.protocol.describe import RequestKind, request_kind
from omaha_proxy.protocol.errors import CodecError
from tests.conftest import sample

NOUPDATE = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
OFFER = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml")
EVENT_ACK = sample("nebraska-shape__event_ack.GENERATED.xml")
PING_ACK = sample("nebraska-shape__ping_ack.GENERATED.xml")
MALFORMED_ANSWER = b'<?xml version="1.0" encoding="UTF-8"?>\n'


@dataclass(frozen=True)
class Received:
    """One request the upstream got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeUpstream:
    """Start with ``with FakeUpstream() as up:``; ``up.url`` is its base URL."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._queue: deque[tuple[int, bytes]] = deque()
        self._check_answer = NOUPDATE
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = owner._answer(Received("POST", self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                owner._answer(Received("GET", self.path, dict(self.headers), b""))
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def offer(self, enabled: bool = True) -> None:
        """From now on answer update checks with the offer sample (or noupdate again)."""
        self._check_answer = OFFER if enabled else NOUPDATE

    def answer_next(self, status: int, body: bytes) -> None:
        """Answer the next request (whatever it is) with exactly ``status`` and ``body``."""
        with self._lock:
            self._queue.append((status, body))

    def _answer(self, received: Received) -> tuple[int, bytes]:
        with self._lock:
            self.received.append(received)
            if self._queue:
                return self._queue.popleft()
        try:
            kind = request_kind(parse_request(received.body))
        except CodecError:
            return 200, MALFORMED_ANSWER
        if kind is RequestKind.UPDATECHECK:
            return 200, self._check_answer
        return 200, EVENT_ACK if kind is RequestKind.EVENT else PING_ACK

    def __enter__(self) -> Self:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
