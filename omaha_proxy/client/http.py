"""An HTTP transport that behaves like update_engine's libcurl fetcher.

One new connection per request (update_engine makes a new fetcher per action), libcurl's
header order (``Host``, ``Accept: */*``, then ``Content-Type: text/xml`` and
``Content-Length`` for the Omaha POST), no ``User-Agent`` (libcurl sends none unless told
to), no compression. Through an HTTP proxy (``ALL_PROXY``-style, regular mode) plain-http
requests use the absolute URL as request target and https ones a CONNECT tunnel.

Bodies are streamed to a sink in 1 MiB chunks so multi-GB payloads are hashed without being
held in memory. Every call is bounded by a per-request timeout and an optional absolute
deadline (``time.monotonic()``).
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 1 << 20
#: update_engine keeps the whole Omaha response in memory; we cap what we keep.
MAX_KEPT_BODY = 8 << 20


@dataclass(frozen=True, slots=True)
class HttpResult:
    """Outcome of one request: ``status`` is None when no HTTP response arrived; ``error`` says
    why, and is also set when the body was cut short (``received`` bytes arrived)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    received: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for a complete 2xx answer (what libcurl's fetcher counts as success)."""
        return self.status is not None and 200 <= self.status < 300 and self.error is None


class DeadlineExceeded(Exception):
    """The simulation's time budget ran out before this request could finish."""


class HttpClient:
    """Blocking requests with update_engine's habits; safe to share between threads."""

    def __init__(
        self,
        *,
        proxy: str | None = None,
        timeout: float = 30.0,
        deadline: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.proxy = urllib.parse.urlsplit(proxy) if proxy else None
        if self.proxy is not None and (self.proxy.scheme != "http" or not self.proxy.hostname):
            raise ValueError(f"proxy must be an http:// URL with a host, got {proxy!r}")
        self.timeout = timeout
        self.deadline = deadline
        self.ssl_context = ssl_context

    def _budget(self) -> float:
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("simulation time budget exhausted")
        return min(self.timeout, left)

    def sleep(self, seconds: float) -> None:
        """Sleep, but not past the deadline (raises :class:`DeadlineExceeded` once it passed)."""
        time.sleep(max(0.0, min(seconds, self._budget())))

    def _connect(self, url: urllib.parse.SplitResult) -> tuple[http.client.HTTPConnection, str]:
        timeout = self._budget()
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        conn: http.client.HTTPConnection
        if self.proxy is not None:
            phost, pport = self.proxy.hostname or "", self.proxy.port or 8080
            if secure:
                conn = http.client.HTTPSConnection(phost, pport, timeout=timeout, context=self.ssl_context)
                conn.set_tunnel(url.hostname or "", port)
            else:
                conn = http.client.HTTPConnection(phost, pport, timeout=timeout)
                target = urllib.parse.urlunsplit(url._replace(fragment=""))
        elif secure:
            conn = http.client.HTTPSConnection(
                url.hostname or "", port, timeout=timeout, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(url.hostname or "", port, timeout=timeout)
        return conn, target

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        sink: Callable[[bytes], None] | None = None,
        on_headers: Callable[[int, dict[str, str]], None] | None = None,
    ) -> HttpResult:
        """Send one request on a fresh connection and read the whole answer.

        With ``sink`` the body is passed on chunk by chunk and not kept; otherwise it is kept
        (up to :data:`MAX_KEPT_BODY`); ``on_headers(status, headers)`` is called before the body.
        Never raises for network trouble: a result with ``status=None`` (no answer) or with
        ``error`` set (body cut after ``received`` bytes) describes it. Raises
        :class:`DeadlineExceeded` when the deadline passed.
        """
        parts = urllib.parse.urlsplit(url)
        conn, target = self._connect(parts)
        resp: http.client.HTTPResponse | None = None
        received = 0
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", parts.netloc)
            conn.putheader("Accept", "*/*")
            if content_type is not None:
                conn.putheader("Content-Type", content_type)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            if on_headers is not None:
                on_headers(resp.status, dict(resp.headers.items()))
            kept: list[bytes] = []
            while chunk := resp.read(CHUNK):
                received += len(chunk)
                if sink is not None:
                    sink(chunk)
                elif received <= MAX_KEPT_BODY:
                    kept.append(chunk)
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise DeadlineExceeded("simulation time budget exhausted during a transfer")
            if resp.length:  # read(amt) returns b"" on an early close instead of raising
                raise http.client.IncompleteRead(b"", resp.length)
            return HttpResult(resp.status, dict(resp.headers.items()), b"".join(kept), received)
        except (OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if resp is None:
                return HttpResult(None, error=error)
            # The answer started but its body was cut: keep the status for a resume.
            return HttpResult(resp.status, dict(resp.headers.items()), received=received, error=error)
        finally:
            conn.close()
