"""Download one package from an upstream URL, verified while it streams, atomically in place.

Used by the payload cache and by bundle export: the bytes go to a ``.partial`` file while
:class:`~omaha_proxy.payloads.Verifier` hashes them; only a download matching the offer is
fsynced and renamed to its final name, so that name never holds a partial or wrong file.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from omaha_proxy.errors import PayloadError
from omaha_proxy.payloads import CHUNK_SIZE, Digest, Expected, Verifier

FETCH_TIMEOUT = 60.0
"""Seconds a read from the upstream may stall before the download counts as failed."""


def join_url(codebase: str, name: str) -> str:
    """The URL update_engine downloads: codebase + ``/`` if missing + name."""
    return codebase + ("" if codebase.endswith("/") else "/") + name


def download_verified(
    url: str,
    expected: Expected,
    partial: Path,
    final: Path,
    *,
    timeout: float = FETCH_TIMEOUT,
    on_bytes: Callable[[int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Digest:
    """Stream ``url`` into ``partial`` while verifying it, then rename it to ``final``.

    The file is fsynced before the atomic rename, so ``final`` is either absent or complete
    and verified. ``partial`` is removed whatever happens. ``on_bytes`` gets the number of
    bytes read from the upstream (also on failure); ``cancelled`` is polled between chunks.
    Returns the digest; raises PayloadMismatch when the bytes do not match ``expected`` and
    PayloadError when the download fails (HTTP status, connection, timeout, cancelled).
    """
    verifier = Verifier(expected)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "omaha-proxy"})
        with (
            urllib.request.urlopen(request, timeout=timeout) as response,
            open(partial, "wb") as out,
        ):
            try:
                while chunk := response.read(CHUNK_SIZE):
                    verifier.update(chunk)
                    out.write(chunk)
                    if cancelled():
                        raise PayloadError(f"download cancelled after {verifier.size} bytes")
            finally:
                if on_bytes is not None:
                    on_bytes(verifier.size)
            digest = verifier.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    except PayloadError:
        raise
    except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException) as e:
        # HTTPError and socket timeouts are OSErrors; an HTTP status is named as such.
        raise PayloadError(f"fetch failed after {verifier.size} bytes: {e}") from e
    finally:
        partial.unlink(missing_ok=True)
    _fsync_dir(final.parent)
    return digest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
