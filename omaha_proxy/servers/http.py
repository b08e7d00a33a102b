"""The HTTP server shared by serve-package, the replay server and the offline bundle server.

:class:`OmahaServer` is a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0 picks a free port)
with two kinds of routes:

- the Omaha endpoint: ``POST /v1/update/`` (also ``/v1/update`` and anything below
  ``/v1/update/``, as go-omaha's mux and Nebraska accept). The body is capped
  (:data:`MAX_BODY`, 413 above it), parsed with :func:`omaha_proxy.protocol.decode.parse_request`
  (400 with the reason on failure) and handed to an :data:`OmahaHandler`, which returns the
  HTTP status, headers and body to send. The Host header and the other HTTP details of the
  request being handled are available to the handler through :func:`current_http`.
- file routes: a URL prefix (``/packages/``) mapped to a :data:`FileResolver` that turns the
  rest of the path into a local file, or None for 404. Files are streamed with
  ``socket.sendfile`` (``os.sendfile`` underneath, a fixed buffer otherwise), so memory stays
  flat for multi-GB payloads. GET and HEAD, single ``Range`` requests (``bytes=a-b``,
  ``a-``, ``-n``: 206 with ``Content-Range``; 416 when unsatisfiable), ``Accept-Ranges``,
  ``Last-Modified``. update_engine resumes truncated downloads with ``Range``.

Any other method gets 405 with ``Allow``; other paths 404. Each request is logged in one
line on the ``omaha_proxy.servers.http`` logger, and reported to an optional ``on_access`` callback
as an :class:`AccessRecord`.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from omaha_proxy.protocol.decode import parse_request
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import Request

log = logging.getLogger("omaha_proxy.servers.http")

#: Largest Omaha request body accepted (go-omaha's MaxBytesReader; Nebraska uses 64 KiB).
MAX_BODY = 1 << 20
OMAHA_PATH = "/v1/update"

#: ``(request, raw body, client ip) -> (HTTP status, headers, body)``.
OmahaHandler = Callable[[Request, bytes, str], tuple[int, dict[str, str], bytes]]
#: Maps the part of the URL path after a route prefix (percent-decoded) to a file, or None.
FileResolver = Callable[[str], Path | None]


@dataclass(frozen=True, slots=True)
class HttpContext:
    """HTTP details of the Omaha request being handled (see :func:`current_http`)."""

    method: str
    path: str
    host: str
    headers: Mapping[str, str]
    client_ip: str


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One served request: what the access log line says."""

    client_ip: str
    method: str
    path: str
    status: int
    sent: int
    duration: float
    range: str | None = None


_current: contextvars.ContextVar[HttpContext] = contextvars.ContextVar("omaha_http")


def current_http() -> HttpContext:
    """Return the HTTP context of the Omaha request handled in this thread.

    Raises LookupError outside an :data:`OmahaHandler` call.
    """
    return _current.get()


def directory_resolver(root: str | os.PathLike[str]) -> FileResolver:
    """Return a resolver serving regular files below ``root`` (no dot-files, no escaping it)."""
    base = Path(root).resolve()

    def resolve(name: str) -> Path | None:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(".") or "\0" in p for p in parts):
            return None
        path = base.joinpath(*parts).resolve()
        return path if path.is_relative_to(base) and path.is_file() else None

    return resolve


def mapping_resolver(files: Mapping[str, str | os.PathLike[str]]) -> FileResolver:
    """Return a resolver serving exactly the given ``name -> path`` files."""
    table = {name: Path(path) for name, path in files.items()}
    return table.get


# ----------------------------------------------------------------------------- ranges


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """Interpret a ``Range`` header for a file of ``size`` bytes.

    Returns ``(first, last)`` (inclusive) for one satisfiable range, None when the header is
    absent, malformed or asks for several ranges (RFC 9110 lets a server ignore it and send
    the whole file), or False when the range cannot be satisfied (416).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or last_s.isdigit()):
        return None
    if not first_s:  # suffix range: the last n bytes
        n = int(last_s)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else False
    if last_s and not last_s.isdigit():
        return None
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return False
    return first, min(int(last_s) if last_s else size - 1, size - 1)


# ---------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a socket may stay silent (idle keep-alive, stalled client)
    server_version = "omaha-proxy"
    sys_version = ""

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers 501 for methods without a do_X; we want 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    # -- dispatch

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _method_not_allowed(self) -> None:
        self._start()
        route = self._route()
        allow = "POST" if route == "omaha" else "GET, HEAD" if route else "GET, HEAD, POST"
        self._send_text(405, f"Method {self.command} not allowed here; use {allow}\n", {"Allow": allow})

    def _dispatch(self) -> None:
        self._start()
        route = self._route()
        if route == "omaha":
            if self.command != "POST":
                self._send_text(405, "The Omaha endpoint expects a POST\n", {"Allow": "POST"})
            else:
                self._serve_omaha()
        elif route is not None:
            if self.command == "POST":
                self._send_text(405, "Files are served with GET or HEAD\n", {"Allow": "GET, HEAD"})
            else:
                self._serve_file(*route)
        else:
            self._send_text(404, f"Not found: {self._path}\n")

    def _start(self) -> None:
        self._t0 = time.monotonic()
        self._status = 0
        self._sent = 0
        # Accept absolute-form targets too (a client that thinks we are its proxy).
        self._path = urllib.parse.urlsplit(self.path).path or "/"

    def _route(self) -> str | tuple[FileResolver, str] | None:
        path = self._path
        if path == OMAHA_PATH or path.startswith(OMAHA_PATH + "/"):
            return "omaha"
        for prefix, resolver in self.server.owner.routes():
            if path.startswith(prefix):
                return resolver, urllib.parse.unquote(path[len(prefix) :])
        return None

    # -- Omaha endpoint

    def _serve_omaha(self) -> None:
        length_s = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_s is None or not length_s.strip().isdigit():
            self.close_connection = True
            self._send_text(411, "An Omaha request needs a Content-Length\n")
            return
        length = int(length_s)
        limit = self.server.owner.max_body
        if length > limit:
            self.close_connection = True
            self._send_text(413, f"Omaha request body of {length} bytes is over the {limit}-byte limit\n")
            return
        raw = self.rfile.read(length)
        try:
            request = parse_request(raw, max_size=limit)
        except CodecError as e:
            log.info("bad Omaha request from %s: %s", self.client_address[0], e)
            self._send_text(400, f"Bad Omaha request: {e}\n")
            return
        context = HttpContext(
            method=self.command,
            path=self.path,
            host=self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2]),
            headers={k: v for k, v in self.headers.items()},
            client_ip=self.client_address[0],
        )
        token = _current.set(context)
        try:
            status, headers, body = self.server.owner.handler(request, raw, context.client_ip)
        except Exception:
            log.exception("Omaha handler failed")
            self._send_text(500, "Internal error while answering the Omaha request\n")
            return
        finally:
            _current.reset(token)
        headers = {"Content-Type": "text/xml", **headers}
        self._send_bytes(status, body, headers)

    # -- files

    def _serve_file(self, resolver: FileResolver, name: str) -> None:
        try:
            path = resolver(name)
        except Exception:
            log.exception("file resolver failed for %s", self._path)
            self._send_text(500, "Internal error while looking up the file\n")
            return
        try:
            f = open(path, "rb") if path is not None else None  # noqa: SIM115 - closed below
        except OSError:
            f = None
        if f is None:
            self._send_text(404, f"No such file: {self._path}\n")
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            rng = parse_range(self.headers.get("Range"), size)
            headers = {
                "Content-Type": "application/gzip" if name.endswith(".gz") else "application/octet-stream",
                "Accept-Ranges": "bytes",
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            }
            if rng is False:
                headers["Content-Range"] = f"bytes */{size}"
                self._send_text(416, f"Range not satisfiable for {size} bytes\n", headers)
                return
            first, last = rng if isinstance(rng, tuple) else (0, size - 1)
            count = last - first + 1
            if rng:
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            self._send_head(206 if rng else 200, count, headers)
            if self.command == "HEAD" or count <= 0:
                return
            self.wfile.flush()
            try:
                self._sent = self.connection.sendfile(f, offset=first, count=count)
            except OSError:
                self.close_connection = True
                raise
            if self._sent < count:
                self.close_connection = True

    # -- responses and logging

    def _send_head(self, status: int, length: int, headers: Mapping[str, str]) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_bytes(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self._send_head(status, len(body), headers)
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _send_text(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        self._send_bytes(
            status, text.encode(), {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default per-response line; :meth:`handle_one_request` logs instead."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        self._status = 0
        try:
            super().handle_one_request()
        finally:
            if self._status:
                self._log_access()

    def _log_access(self) -> None:
        record = AccessRecord(
            client_ip=self.client_address[0],
            method=self.command,
            path=self._path,
            status=self._status,
            sent=self._sent,
            duration=time.monotonic() - self._t0,
            range=self.headers.get("Range") if self.headers else None,
        )
        rng = f" range={record.range}" if record.range else ""
        log.info(
            '%s "%s %s" %d %d %.1fms%s',
            record.client_ip, record.method, record.path, record.status, record.sent,
            record.duration * 1000, rng,
        )  # fmt: skip
        if self.server.owner.on_access is not None:
            self.server.owner.on_access(record)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: OmahaServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-download (update_engine aborted, a timeout) is normal.
        exc = sys.exception()
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("%s went away: %s", client_address[0], exc)
        else:
            log.exception("error while serving %s", client_address[0])


def _no_omaha(request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
    return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"This server has no Omaha endpoint\n"


class OmahaServer:
    """A threaded HTTP server with an Omaha endpoint and file routes (see the module docstring).

    The socket is bound in the constructor (so :attr:`port` is known at once); :meth:`start`
    serves in a background thread, :meth:`serve_forever` in the calling one. Use it as a
    context manager to start and stop it.
    """

    def __init__(
        self,
        handler: OmahaHandler | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        files: Mapping[str, FileResolver] | None = None,
        max_body: int = MAX_BODY,
        on_access: Callable[[AccessRecord], None] | None = None,
    ) -> None:
        self.handler: OmahaHandler = handler or _no_omaha
        self.max_body = max_body
        self.on_access = on_access
        self._routes: list[tuple[str, FileResolver]] = []
        self._lock = threading.Lock()
        for prefix, resolver in (files or {}).items():
            self.add_route(prefix, resolver)
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    def add_route(self, prefix: str, resolver: FileResolver) -> None:
        """Serve files below the URL path ``prefix`` (e.g. ``/packages/``) through ``resolver``.

        The longest matching prefix wins. Raises ValueError for a prefix not starting with ``/``.
        """
        if not prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/': {prefix!r}")
        with self._lock:
            routes = [r for r in self._routes if r[0] != prefix] + [(prefix, resolver)]
            self._routes = sorted(routes, key=lambda r: len(r[0]), reverse=True)

    def routes(self) -> list[tuple[str, FileResolver]]:
        """The file routes, longest prefix first."""
        return self._routes

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def omaha_url(self) -> str:
        """The URL to give update_engine as ``SERVER`` (with the trailing slash)."""
        return f"{self.url}{OMAHA_PATH}/"

    def start(self) -> Self:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="omaha-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.2)

    def serve_until_interrupted(self) -> None:
        """Serve in the calling thread until Ctrl-C (or :meth:`stop`), then close the socket.

        The foreground loop of every ``omaha-proxy`` server command.
        """
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
