"""A verified payload cache on disk: fetch each package once, serve it to every machine.

Layout of the cache directory::

    DIR/.lock                  held (flock) by the one process using DIR
    DIR/index.db               SQLite (WAL): packages, offer files, counters
    DIR/files/<key>            verified package contents, named by :func:`package_key`
    DIR/<key>.<random>.partial a download in progress (removed at open: a killed
                               process never leaves one behind in ``files/``)

An offer passed through the proxy is *registered* (:meth:`PayloadCache.register_offer`):
its packages, what they must verify against and the upstream URLs they come from are kept
in the index under an *offer key*, which becomes part of the rewritten codebase. A client
then asks for ``(offer key, package name)``; :meth:`PayloadCache.open_package` returns the
verified file once the package is in ``files/``. The first such request (or a prefetch) starts
one download in a worker thread; every other request for the same package waits for that
download (single flight). A download is streamed to a ``.partial`` file, verified with
:mod:`omaha_proxy.payloads.verify`, fsynced and renamed into place; one that fails verification is
deleted and logged with what failed. Nothing unverified is ever in ``files/``.

The size limit evicts the least recently served packages (``last_access`` in the index).
Thread-safe: one SQLite connection guarded by a lock, downloads in a thread pool; nothing
blocks an asyncio loop except :meth:`open_package`, which server threads call.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path

from omaha_proxy.payloads.fetch import FETCH_TIMEOUT, download_verified, join_url
from omaha_proxy.payloads.verify import Expected
from omaha_proxy.protocol.errors import PayloadError

log = logging.getLogger(__name__)

WAIT_TIMEOUT = 3600.0
"""Seconds a request waits for the download of its package before giving up."""

RETRY_AFTER = 60.0
"""Seconds after a failed download during which requests fail at once instead of fetching
again (a broken upstream is not asked once per machine)."""

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packages (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT, size INTEGER,
    present INTEGER NOT NULL DEFAULT 0, stored_at REAL, last_access REAL,
    hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0, bytes_fetched INTEGER NOT NULL DEFAULT 0,
    bytes_served INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT);
CREATE TABLE IF NOT EXISTS offer_files (
    offer_key TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, version TEXT,
    urls TEXT NOT NULL, expected TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (offer_key, name));
"""


def parse_size(spec: str) -> int:
    """Parse a size such as ``20G``, ``500M``, ``1.5GiB`` or ``1048576`` into bytes.

    Units are binary (K = 1024). Raises ValueError naming the accepted forms.
    """
    match = _SIZE_RE.match(spec or "")
    if not match:
        raise ValueError(
            f"invalid size {spec!r}: use a number of bytes or a number with K, M, G or T (e.g. 20G)"
        )
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise ValueError(f"invalid size {spec!r}: must be at least 1 byte")
    return int(value)


def package_key(expected: Expected, version: str | None = None) -> str:
    """Return the name under which a package's content is stored.

    Content-addressed when the offer gives a SHA-256 (the same file offered in two releases
    is stored once); otherwise derived from SHA-1, or from version, name and size.
    """
    sha256 = expected.content_sha256()
    if sha256:
        return sha256
    identity = f"{version or ''}\0{expected.name}\0{expected.size}\0{expected.sha1_b64 or ''}"
    return "id-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def offer_key(version: str | None, codebases: Sequence[str], packages: Sequence[Expected]) -> str:
    """Return a short stable key for one offer (version, upstream codebases, packages)."""
    blob = json.dumps([version, list(codebases), [asdict(p) for p in packages]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class PackageStats:
    """One cached package's figures. ``bytes_saved`` = bytes served beyond those fetched."""

    key: str
    name: str
    version: str | None
    size: int | None
    present: bool
    hits: int
    misses: int
    requests: int
    bytes_fetched: int
    bytes_served: int
    failures: int
    last_error: str | None

    @property
    def bytes_saved(self) -> int:
        return max(0, self.bytes_served - self.bytes_fetched)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Totals over every package the cache has seen, plus the per-package rows."""

    hits: int
    misses: int
    bytes_fetched: int
    bytes_served: int
    failures: int
    bytes_stored: int
    packages: tuple[PackageStats, ...]

    @property
    def bytes_saved(self) -> int:
        return sum(p.bytes_saved for p in self.packages)


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A verified package file in the cache; ``hit`` is False when the request had to wait."""

    key: str
    name: str
    size: int
    path: Path
    hit: bool


@dataclass(frozen=True, slots=True)
class _Source:
    key: str
    version: str | None
    urls: tuple[str, ...]
    expected: Expected


class PayloadCache:
    """A directory of verified packages with single-flight downloads and LRU eviction.

    Opening takes an exclusive lock on ``DIR/.lock`` (a second process gets PayloadError)
    and deletes leftover ``*.partial`` files. Close with :meth:`close` (or ``with``).
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        *,
        workers: int = 4,
        fetch_timeout: float = FETCH_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.fetch_timeout = fetch_timeout
        self.wait_timeout = wait_timeout
        self.retry_after = retry_after
        self._failed: dict[str, tuple[float, PayloadError]] = {}
        self.files = self.dir / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.dir / ".lock")
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._inflight: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="omaha-cache-fetch")
        for partial in self.dir.glob("*.partial"):
            log.info("cache: removing %s left by an interrupted download", partial.name)
            partial.unlink(missing_ok=True)
        self._db = sqlite3.connect(self.dir / "index.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._reconcile()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel downloads (their partial files are removed), release the directory."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._db.close()
        os.close(self._lock_fd)

    def __enter__(self) -> PayloadCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reconcile(self) -> None:
        """Make the index agree with ``files/``: unknown files and files of the wrong size go,
        missing files are marked absent."""
        on_disk = {p.name: p.stat().st_size for p in self.files.iterdir() if p.is_file()}
        with self._lock:
            rows = self._db.execute("SELECT key, size FROM packages WHERE present = 1").fetchall()
            for key, size in rows:
                if on_disk.get(key) != size:
                    self._db.execute("UPDATE packages SET present = 0 WHERE key = ?", (key,))
            known = {k for (k,) in self._db.execute("SELECT key FROM packages WHERE present = 1")}
        for name in on_disk.keys() - known:
            log.info("cache: removing %s, not in the index (or of the wrong size)", name)
            (self.files / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ offers

    def register_offer(
        self, version: str | None, codebases: Sequence[str], packages: Sequence[Expected]
    ) -> str:
        """Remember where an offer's packages come from; return its offer key.

        Idempotent: the same offer always gets the same key. Raises ValueError when the
        offer has no codebase or no package.
        """
        if not codebases or not packages:
            raise ValueError("an offer needs at least one codebase and one package to be cached")
        key = offer_key(version, codebases, packages)
        now = time.time()
        with self._lock:
            for exp in packages:
                urls = json.dumps([join_url(c, exp.name) for c in codebases])
                self._db.execute(
                    "INSERT OR IGNORE INTO offer_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, exp.name, package_key(exp, version), version, urls, json.dumps(asdict(exp)), now),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO packages (key, name, version, size) VALUES (?, ?, ?, ?)",
                    (package_key(exp, version), exp.name, version, exp.size),
                )
        return key

    def _source(self, offer: str, name: str) -> _Source | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, version, urls, expected FROM offer_files WHERE offer_key = ? AND name = ?",
                (offer, name),
            ).fetchone()
        if row is None:
            return None
        return _Source(row[0], row[1], tuple(json.loads(row[2])), Expected(**json.loads(row[3])))

    def names(self, offer: str) -> list[str]:
        """The package names registered under ``offer`` (empty when unknown)."""
        with self._lock:
            rows = self._db.execute("SELECT name FROM offer_files WHERE offer_key = ?", (offer,)).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ fetching

    def prefetch(self, offer: str) -> list[Future[None]]:
        """Start downloading every package of ``offer`` that is not cached yet; don't wait."""
        futures = []
        for name in self.names(offer):
            source = self._source(offer, name)
            if source is not None and not self._failed_recently(source.key):
                futures.append(self._ensure(source))
        return futures

    def _present(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT present FROM packages WHERE key = ?", (key,)).fetchone()
        return bool(row and row[0]) and (self.files / key).is_file()

    def _ensure(self, source: _Source) -> Future[None]:
        """The one download of ``source`` (running, or a done future if already cached)."""
        with self._lock:
            running = self._inflight.get(source.key)
            if running is not None:
                return running
        if self._present(source.key):
            done: Future[None] = Future()
            done.set_result(None)
            return done
        with self._lock:
            running = self._inflight.get(source.key)
            if running is None:
                running = self._pool.submit(self._fetch_once, source)
                self._inflight[source.key] = running
            return running

    def _fetch_once(self, source: _Source) -> None:
        try:
            self._fetch(source)
        finally:  # runs after _ensure registered the future: it holds the lock until then
            with self._lock:
                self._inflight.pop(source.key, None)

    def _fetch(self, source: _Source) -> None:
        """Download ``source`` from its first URL that verifies; raise PayloadError if none."""
        if self._present(source.key):
            return
        errors = []
        for url in source.urls:
            try:
                self._fetch_one(source, url)
                return
            except PayloadError as e:
                errors.append(f"{url}: {e}")
                log.warning("cache: discarded download of %s from %s: %s", source.expected.name, url, e)
                self._count(source.key, failures=1, last_error=str(e))
        error = PayloadError(
            f"{source.expected.name}: no upstream URL gave a verified copy ({'; '.join(errors)})"
        )
        with self._lock:
            self._failed[source.key] = (time.monotonic(), error)
        raise error

    def _fetch_one(self, source: _Source, url: str) -> None:
        partial = self.dir / f"{source.key}.{uuid.uuid4().hex[:8]}.partial"
        digest = download_verified(
            url, source.expected, partial, self.files / source.key, timeout=self.fetch_timeout,
            on_bytes=lambda n: self._count(source.key, bytes_fetched=n), cancelled=self._closing.is_set,
        )  # fmt: skip
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE packages SET present = 1, size = ?, stored_at = ?, last_access = ?, "
                "last_error = NULL WHERE key = ?",
                (digest.size, now, now, source.key),
            )
        log.info(
            "cache: stored %s %s (%d bytes, sha256 %s) from %s",
            source.expected.name, source.version, digest.size, digest.sha256_hex, url,
        )  # fmt: skip
        self._evict(keep=source.key)

    # ------------------------------------------------------------------ serving

    def open_package(self, offer: str, name: str, *, timeout: float | None = None) -> CachedFile | None:
        """Return the verified package ``name`` of ``offer`` as a file in the cache.

        Waits (up to ``timeout``, default :attr:`wait_timeout`) for the single download of a
        package not cached yet. Returns None when the offer or name is unknown. Raises
        PayloadError when the download fails verification or cannot be fetched (also, without
        fetching again, for :attr:`retry_after` seconds after such a failure), or when the wait
        times out. Counts a hit (cached already) or a miss (had to wait).
        """
        source = self._source(offer, name)
        if source is None:
            return None
        wait = self.wait_timeout if timeout is None else timeout
        hit = True
        for _ in range(3):  # a just-stored file may be evicted before we get to it: fetch again
            path = self.files / source.key
            with self._lock:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    size = None
                else:
                    self._db.execute(
                        "UPDATE packages SET last_access = ?, requests = requests + 1, "
                        "hits = hits + ?, misses = misses + ? WHERE key = ?",
                        (time.time(), int(hit), int(not hit), source.key),
                    )
            if size is not None:
                return CachedFile(source.key, name, size, path, hit)
            hit = False
            self._raise_if_failed_recently(source)
            try:
                self._ensure(source).result(timeout=wait)
            except FutureTimeout as e:
                raise PayloadError(f"{name}: still downloading after {wait:.0f} s") from e
        raise PayloadError(f"{name}: evicted as soon as it was stored; the cache size limit is too small")

    def _failed_recently(self, key: str) -> tuple[float, PayloadError] | None:
        """``(monotonic time, error)`` of the last failed download of ``key`` when it is less
        than :attr:`retry_after` seconds old and no new download runs; else None."""
        with self._lock:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] >= self.retry_after:
                del self._failed[key]
                failed = None
            return None if key in self._inflight else failed

    def _raise_if_failed_recently(self, source: _Source) -> None:
        failed = self._failed_recently(source.key)
        if failed is not None:
            age = time.monotonic() - failed[0]
            raise PayloadError(
                f"{failed[1]} ({age:.0f} s ago; fetching again after {self.retry_after:.0f} s)"
            )

    def record_served(self, offer: str, name: str, nbytes: int) -> None:
        """Add ``nbytes`` sent to a client to the served counter of that package."""
        source = self._source(offer, name)
        if source is not None:
            self._count(source.key, bytes_served=nbytes)

    def _count(self, key: str, *, last_error: str | None = None, **deltas: int) -> None:
        sets = ", ".join(f"{col} = {col} + ?" for col in deltas)
        args: list[object] = list(deltas.values())
        if last_error is not None:
            sets += ", last_error = ?"
            args.append(last_error)
        with self._lock:
            self._db.execute(f"UPDATE packages SET {sets} WHERE key = ?", (*args, key))

    # ------------------------------------------------------------------ eviction, stats

    def _evict(self, keep: str) -> None:
        """Delete least recently used packages until the total fits ``max_bytes``.

        Files open for serving stay readable (POSIX unlink semantics).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT key, size FROM packages WHERE present = 1 ORDER BY last_access ASC"
            ).fetchall()
            total = sum(size or 0 for _, size in rows)
            for key, size in rows:
                if total <= self.max_bytes:
                    break
                if key == keep:
                    continue
                (self.files / key).unlink(missing_ok=True)
                self._db.execute("UPDATE packages SET present = 0 WHERE key = ?", (key,))
                total -= size or 0
                log.info("cache: evicted %s (%d bytes, least recently used)", key, size or 0)
        if total > self.max_bytes:
            log.warning(
                "cache: %s alone is larger than the cache size limit (%d bytes)", keep, self.max_bytes
            )

    def stats(self) -> CacheStats:
        """Return the cache's counters and per-package rows (most recently used first)."""
        with self._lock:
            return _stats(self._db)


def read_stats(directory: str | Path) -> CacheStats:
    """Read the statistics of the cache in ``directory`` without taking it over.

    Safe while a proxy uses the cache (WAL). Raises PayloadError when there is no index.
    """
    path = Path(directory) / "index.db"
    if not path.is_file():
        raise PayloadError(f"{directory} is not a payload cache (no index.db)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _stats(db)
    except sqlite3.Error as e:
        raise PayloadError(f"cannot read {path}: {e}") from e
    finally:
        db.close()


def _stats(db: sqlite3.Connection) -> CacheStats:
    rows = db.execute(
        "SELECT key, name, version, size, present, hits, misses, requests, bytes_fetched, bytes_served, "
        "failures, last_error FROM packages ORDER BY last_access IS NULL, last_access DESC, name"
    ).fetchall()
    packages = tuple(
        PackageStats(
            key=r[0], name=r[1], version=r[2], size=r[3], present=bool(r[4]), hits=r[5], misses=r[6],
            requests=r[7], bytes_fetched=r[8], bytes_served=r[9], failures=r[10], last_error=r[11],
        )
        for r in rows
    )  # fmt: skip
    return CacheStats(
        hits=sum(p.hits for p in packages),
        misses=sum(p.misses for p in packages),
        bytes_fetched=sum(p.bytes_fetched for p in packages),
        bytes_served=sum(p.bytes_served for p in packages),
        failures=sum(p.failures for p in packages),
        bytes_stored=sum(p.size or 0 for p in packages if p.present),
        packages=packages,
    )


def _take_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PayloadError(f"{path.parent} is in use by another omaha-proxy process") from e
        raise PayloadError(f"cannot lock {path}: {e}") from e
    return fd
