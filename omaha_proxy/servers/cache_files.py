"""Serve a :class:`~omaha_proxy.payloads.cache.PayloadCache` over HTTP, with ``Range`` and flat memory.

mitmproxy buffers the responses it relays, so multi-GB payloads are not served through it:
the cache addon starts this small server (the shared :class:`~omaha_proxy.servers.http.OmahaServer`)
and rewrites offers so that machines download from it. URLs look like::

    http://HOST:PORT/omaha-proxy/cache/<offer key>/<package name>

The offer key (see :func:`omaha_proxy.payloads.cache.offer_key`) becomes the rewritten codebase, so
update_engine's ``codebase + name`` and ue-rs's ``Url::join(codebase, name)`` both land here.

A request for a package not cached yet waits for the single download of it. When that
download fails verification (or the upstream cannot be reached) the machine gets **404**
with the reason in the body and in the log: update_engine then fails the download with
code 9 (kDownloadTransferError, sent as 268435465 with the non-production-server flag) in a
3/0 event and retries at its next scheduled check (~45 min). Any status other than 500 or
503 avoids update_engine's exponential back-off (reference §1.2), so the cache never
answers those.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Self

from omaha_proxy.payloads.cache import PayloadCache
from omaha_proxy.protocol.errors import PayloadError
from omaha_proxy.servers.http import AccessRecord, OmahaServer

log = logging.getLogger(__name__)

CACHE_PREFIX = "/omaha-proxy/cache/"
"""URL path below which the cache server serves ``<offer key>/<package name>``."""


def _split(rest: str) -> tuple[str, str] | None:
    offer, _, name = rest.partition("/")
    if not offer or not name or "/" in name or name.startswith("."):
        return None
    return offer, name


class CacheServer:
    """An HTTP server (own threads) that serves the packages of a :class:`PayloadCache`."""

    def __init__(self, cache: PayloadCache, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.cache = cache
        self.server = OmahaServer(
            host=host, port=port, files={CACHE_PREFIX: self._resolve}, on_access=self._served
        )

    @property
    def url(self) -> str:
        """The server's own base URL, e.g. ``http://127.0.0.1:8090``."""
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def _resolve(self, rest: str) -> Path | None:
        parts = _split(rest)
        if parts is None:
            return None
        try:
            cached = self.cache.open_package(*parts)
        except PayloadError as e:
            log.warning("cache: answering 404 for %s: %s", rest, e)
            return None
        except Exception:  # never 500: update_engine backs off exponentially after a 500
            log.exception("cache: answering 404 for %s after an internal error", rest)
            return None
        return None if cached is None else cached.path

    def _served(self, record: AccessRecord) -> None:
        if (
            record.method != "GET"
            or record.status not in (200, 206)
            or not record.path.startswith(CACHE_PREFIX)
        ):
            return
        parts = _split(urllib.parse.unquote(record.path[len(CACHE_PREFIX) :]))
        if parts is not None:
            self.cache.record_served(*parts, record.sent)

    def start(self) -> Self:
        """Serve in background threads; returns self."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving (the cache stays open)."""
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_listen(spec: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (0 = any free port).

    Returns ``(host, port)``, ``default_host`` when none is given. Raises ValueError naming
    the accepted forms.
    """
    forms = "use HOST:PORT, :PORT, [IPv6]:PORT or PORT, with a port from 0 to 65535"
    host, sep, port_s = spec.strip().rpartition(":")
    if not sep:
        host, port_s = "", spec.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"invalid listen address {spec!r}: {forms}")
    if not port_s.isdigit() or int(port_s) > 65535:
        raise ValueError(f"invalid listen address {spec!r}: {forms}")
    return host or default_host, int(port_s)


def parse_base_url(spec: str) -> str:
    """Check a public base URL (``http://host[:port][/path]``); return it without trailing ``/``.

    Raises ValueError when it is not an absolute http(s) URL without query or fragment.
    """
    parts = urllib.parse.urlsplit(spec.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"invalid base URL {spec!r}: use http://HOST[:PORT][/PATH] (https when a TLS proxy is in front)"
        )
    return spec.strip().rstrip("/")


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def cache_codebase(base_url: str, offer: str) -> str:
    """The codebase to give machines for ``offer``: ``<base_url>/omaha-proxy/cache/<offer>/``."""
    return base_url.rstrip("/") + CACHE_PREFIX + offer + "/"
