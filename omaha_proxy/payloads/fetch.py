"""Download one package from an upstream URL, verified while it streams, atomically in place.

Used by the payload cache and by bundle export: the bytes go to a ``.partial`` file while
:class:`~omaha_proxy.payloads.verify.Verifier` hashes them; only a download matching the offer is
fsynced and renamed to its final name, so that name never holds a partial or wrong file.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from omaha_proxy.payloads.verify import CHUNK_SIZE, Digest, Expected, Verifier
from omaha_proxy.protocol.errors import PayloadError

FETCH_TIMEOUT = 60.0
"""Seconds a read from the upstream may stall before the download counts as failed."""

RESUMES = 5
"""How many times a download cut mid-body is resumed with a Range request."""

log = logging.getLogger(__name__)


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
    resumes: int = RESUMES,
) -> Digest:
    """Stream ``url`` into ``partial`` while verifying it, then rename it to ``final``.

    A connection lost or stalled mid-body is resumed with ``Range: bytes=<received>-`` up to
    ``resumes`` times (an upstream answering 200 instead of 206 starts over). The file is
    fsynced before the atomic rename, so ``final`` is either absent or complete and
    verified. ``partial`` is removed whatever happens. ``on_bytes`` gets the number of bytes
    read from the upstream (also on failure); ``cancelled`` is polled between chunks.
    Returns the digest; raises PayloadMismatch when the bytes do not match ``expected`` and
    PayloadError when the download fails (HTTP status, connection, timeout, cancelled).
    """
    state = _Download(expected)
    try:
        with open(partial, "wb") as out:
            for attempt in range(resumes + 1):
                try:
                    state.stream(url, out, timeout, cancelled)
                    break
                except urllib.error.HTTPError:
                    raise
                except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                    if state.verifier.size == 0 or attempt == resumes:
                        raise
                    log.info("fetch: resuming %s at byte %d after: %s", url, state.verifier.size, e)
            digest = state.verifier.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    except PayloadError:
        raise
    except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException) as e:
        # HTTPError and socket timeouts are OSErrors; an HTTP status is named as such.
        raise PayloadError(f"fetch failed after {state.verifier.size} bytes: {e}") from e
    finally:
        partial.unlink(missing_ok=True)
        if on_bytes is not None:
            on_bytes(state.fetched)
    _fsync_dir(final.parent)
    return digest


class _Download:
    """The bytes received so far (hashed by ``verifier``) and all bytes fetched."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.verifier = Verifier(expected)
        self.fetched = 0

    def stream(self, url: str, out: BinaryIO, timeout: float, cancelled: Callable[[], bool]) -> None:
        """Append the rest of ``url`` to ``out`` (from the start when the upstream ignores Range)."""
        offset = self.verifier.size
        headers = {"User-Agent": "omaha-proxy"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            if offset and not (response.status == 206 and _range_start(response) == offset):
                log.info(
                    "fetch: %s does not resume at byte %d (HTTP %d): starting over",
                    url,
                    offset,
                    response.status,
                )
                out.seek(0)
                out.truncate()
                self.verifier = Verifier(self.expected)
            while chunk := response.read(CHUNK_SIZE):
                self.fetched += len(chunk)
                self.verifier.update(chunk)
                out.write(chunk)
                if cancelled():
                    raise PayloadError(f"download cancelled after {self.verifier.size} bytes")
            if response.length:  # http.client returns short reads silently when the peer hangs up
                raise http.client.IncompleteRead(b"", response.length)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    # Content-Range: bytes <first>-<last>/<size>
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
