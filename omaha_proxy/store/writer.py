"""The log writer process: the proxy hands each exchange to it and it writes the Omaha log.

Why a process: mitmproxy runs every flow on one event-loop thread, so that thread is a busy
proxy's bottleneck, and writing the log (parsing the bodies again is cheap; the SQLite
inserts and the commit are not) took about 10 % of it. A thread does not help: its Python
half competes for the GIL with the loop, and the hand-offs cost more than they save
(measured: the throughput ratio fell from 0.85 to 0.77). A process shares nothing: the
loop only packs the raw exchange (bytes and a few fields, :mod:`marshal`) into a pipe.

Durability: an exchange is in the pipe before its answer leaves the proxy. If the proxy
dies, the writer reads the pipe to its end, commits and exits, so nothing a machine was
answered is lost. The writer writes the exchanges as they come into one open transaction
and commits it :data:`COMMIT_WINDOW` after its first one (the commit is most of its cost;
one serves every exchange of the window), or at once when an answer waits for it, then
reports the batch back. With ``hold`` the caller waits for that report before answering
(the answer then never outruns its committed exchange, even if the writer dies); without
it, the answer leaves at once, readers see the exchange within the window, and only a
crash of the writer itself can lose the exchanges it had not committed yet (it is reported
with their number). If the writer falls behind by more than :data:`BACKLOG_LIMIT` bytes,
answers are held until it catches up: the log is never dropped, the proxy slows down.

Wire format, proxy -> writer: frames of a 4-byte little-endian length and a marshalled tuple
of :data:`FIELDS` and the ``held`` flag. Writer -> proxy: lines, ``C <n>`` (the next n exchanges, in the order
sent, are done: committed, or reported by an ``E`` line first) and ``E <message>`` (a write
or commit failed).

Run by the proxy as ``python -m omaha_proxy.store.writer DB [--redact]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The keyword arguments of :meth:`Store.record_exchange` that cross the pipe, in order.
FIELDS = (
    "flow_id", "ts", "request_xml", "response_xml", "client_ip", "http_status", "duration_ms",
    "error", "action", "reason", "path", "upstream_response_xml", "summary", "check_duplicate",
)  # fmt: skip
_LENGTH = struct.Struct("<I")
_F_SETPIPE_SZ = 1031  # Linux fcntl: grow the pipe so that bursts do not block the loop
#: Unsent bytes (beyond the pipe's own buffer) above which every answer waits for its commit.
BACKLOG_LIMIT = 8 << 20


def pack(record: Mapping[str, Any], *, held: bool = False) -> bytes:
    """One exchange as a frame (``record`` holds :data:`FIELDS`; missing ones are None);
    ``held``: its answer waits for the commit, so the writer commits without delay."""
    body = marshal.dumps((*(record.get(name) for name in FIELDS), held))
    return _LENGTH.pack(len(body)) + body


def unpack(buffer: bytes | bytearray) -> tuple[list[tuple[dict[str, Any], bool]], int]:
    """The complete frames at the start of ``buffer`` (each record and its ``held`` flag)
    and how many bytes they took."""
    records = []
    offset, size = 0, len(buffer)
    while size - offset >= 4:
        (length,) = _LENGTH.unpack_from(buffer, offset)
        end = offset + 4 + length
        if end > size:
            break
        *values, held = marshal.loads(buffer[offset + 4 : end])
        records.append((dict(zip(FIELDS, values, strict=True)), held))
        offset = end
    return records, offset


# ----------------------------------------------------------------------------- the proxy side


class LogWriterProcess:
    """Starts the writer for the log at ``path`` and talks to it from ``loop``.

    ``on_error`` gets every failure the writer reports, and one when it dies. Raises OSError
    when the process cannot be started.
    """

    def __init__(
        self,
        path: Path,
        *,
        redact: bool,
        loop: asyncio.AbstractEventLoop,
        on_error: Callable[[str], None],
    ) -> None:
        cmd = [sys.executable, "-m", "omaha_proxy.store.writer", str(path), *(["--redact"] if redact else [])]
        # The proxy's own import path: the writer imports omaha_proxy wherever the proxy did
        # (an installed package, a checkout on PYTHONPATH, a script's directory).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin, self._stdout = self._proc.stdin, self._proc.stdout
        self._in, self._out = self._stdin.fileno(), self._stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        try:
            import fcntl

            fcntl.fcntl(self._in, _F_SETPIPE_SZ, 1 << 20)
        except (ImportError, OSError):
            pass  # the default 64 KiB pipe works too, it just fills sooner
        self._loop = loop
        self._on_error = on_error
        # One entry per exchange sent and not yet acknowledged, in order: its held answer,
        # or None when nobody waits for it.
        self._pending: collections.deque[asyncio.Future[None] | None] = collections.deque()
        self._backlog = bytearray()  # frames the pipe had no room for yet
        self._partial = b""  # an incomplete line from the writer
        self.alive = True
        loop.add_reader(self._out, self._read)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def submit(self, record: Mapping[str, Any], *, hold: bool = True) -> asyncio.Future[None] | None:
        """Send one exchange. With ``hold`` (or while the writer is far behind) returns a
        future that completes once the writer has committed it; otherwise None."""
        hold = hold or len(self._backlog) > BACKLOG_LIMIT
        held: asyncio.Future[None] | None = self._loop.create_future() if hold else None
        if not self.alive:
            if held is not None:
                held.set_result(None)
            return held
        self._pending.append(held)
        frame = pack(record, held=held is not None)
        if self._backlog:
            self._backlog += frame
            return held
        try:
            sent = os.write(self._in, frame)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._died(f"the log writer's pipe broke: {e}")
            return held
        if sent < len(frame):
            self._backlog += frame[sent:]
            self._loop.add_writer(self._in, self._write_backlog)
        return held

    def _write_backlog(self) -> None:
        try:
            sent = os.write(self._in, self._backlog)
        except BlockingIOError:
            return
        except OSError as e:
            self._died(f"the log writer's pipe broke: {e}")
            return
        del self._backlog[:sent]
        if not self._backlog:
            self._loop.remove_writer(self._in)

    def _read(self) -> None:
        try:
            data = os.read(self._out, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            try:  # its output ended: it is exiting, or about to
                status: int | None = self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                status = None
            self._died(f"the log writer exited (status {status})")
            return
        self._handle(data)

    def _handle(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            kind, _, rest = line.partition(b" ")
            if kind == b"C":
                for _ in range(int(rest)):
                    if self._pending:
                        _release(self._pending.popleft())
            elif kind == b"E":
                self._on_error(rest.decode("utf-8", "replace"))

    def _died(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._out)
        if self._backlog:
            self._loop.remove_writer(self._in)
        lost = len(self._pending)
        while self._pending:  # traffic is never blocked by the log
            _release(self._pending.popleft())
        if lost:
            self._on_error(f"{reason}; {lost} exchange(s) not logged")
        else:  # nothing was lost: the caller writes on without it (see OmahaObserve)
            log.warning("%s; nothing was waiting to be logged", reason)

    def close(self, timeout: float = 30.0) -> None:
        """Send what is left, let the writer commit it and exit (blocks, up to ``timeout``)."""
        if not self.alive:
            self._proc.wait(timeout)
            return
        self.alive = False
        self._loop.remove_reader(self._out)
        if self._backlog:
            self._loop.remove_writer(self._in)
        try:
            os.set_blocking(self._in, True)
            if self._backlog:
                os.write(self._in, self._backlog)  # blocking: the writer is reading
            self._stdin.close()
            os.set_blocking(self._out, True)
            self._handle(self._stdout.read())  # its last acknowledgements, up to EOF
            self._proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._on_error(f"the log writer did not finish: {e}")
            self._proc.kill()
        finally:
            self._stdout.close()
            while self._pending:
                _release(self._pending.popleft())


def _release(held: asyncio.Future[None] | None) -> None:
    if held is not None and not held.done():
        held.set_result(None)


# ----------------------------------------------------------------------------- the writer side


#: How long the writer keeps a transaction open for more exchanges when no answer waits for
#: it: one commit (most of the writer's cost) then serves every exchange of the window.
COMMIT_WINDOW = 0.025
MAX_BATCH = 1000


def serve(store: Any, source: int, report: Callable[[bytes], None], *, window: float = COMMIT_WINDOW) -> None:
    """Write the exchanges read from file descriptor ``source`` until it ends, and ``report``
    each committed batch (see above). A batch is committed at once when an answer waits for
    it (a held exchange), else when ``window`` seconds have passed since its first exchange,
    or when it reaches :data:`MAX_BATCH`."""
    from omaha_proxy.protocol.errors import StoreError

    buffer = bytearray()
    batch = written = 0
    errors: list[str] = []
    urgent = False
    deadline = 0.0

    def commit() -> None:
        nonlocal batch, written, urgent
        try:
            store.commit()
        except StoreError as e:  # the batch's transaction is gone: say how much went with it
            errors.append(f"{e} ({written} exchange(s) not logged)")
        report(b"".join(b"E %s\n" % e.replace("\n", " ").encode() for e in errors) + b"C %d\n" % batch)
        errors.clear()
        batch = written = 0
        urgent = False

    while True:
        if batch and not urgent:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([source], [], [], wait)[0]:
                commit()
                continue
        elif batch:
            commit()
            continue
        chunk = os.read(source, 1 << 20)
        if not chunk:
            break
        buffer += chunk
        records, used = unpack(buffer)
        del buffer[:used]
        for record, held in records:
            if not batch:
                deadline = time.monotonic() + window
            batch += 1
            urgent = urgent or held or batch >= MAX_BATCH
            try:
                store.record_exchange(**record, commit=False)
                written += 1
            except StoreError as e:
                errors.append(f"{e} (1 exchange not logged)")
            except Exception as e:  # never leave an answer held because of a bug
                errors.append(f"{e!r} (1 exchange not logged)")
    if batch:
        commit()
    if buffer:
        report(b"E the proxy sent a truncated exchange (%d bytes)\nC 0\n" % len(buffer))


def main(argv: list[str] | None = None) -> int:
    from omaha_proxy.protocol.errors import StoreError
    from omaha_proxy.store.store import Store

    parser = argparse.ArgumentParser(description="omaha-proxy's log writer (started by the proxy)")
    parser.add_argument("db", type=Path)
    parser.add_argument("--redact", action="store_true")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the proxy decides when the writer stops (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: on a busy box, yield the CPU to the proxy's event loop (in ad-hoc
    # side-by-side runs nice 10 left the proxy 1-4 points more throughput than nice 0, within
    # that box's noise). It still gets a share; if it falls far behind, backpressure holds
    # the answers until it catches up.
    with contextlib.suppress(OSError):
        os.nice(10)
    out = sys.stdout.buffer

    def report(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        store = Store(args.db, redact=args.redact)
    except StoreError as e:
        report(b"E %s\n" % str(e).encode())
        return 1
    # Each exchange's rows are inserted here, parents first, in one savepoint: the foreign
    # key checks would only cost a look-up per row (they stay on for every other connection).
    store.db.execute("PRAGMA foreign_keys = OFF")
    try:
        serve(store, sys.stdin.fileno(), report)
    finally:
        try:
            store.close()
        except StoreError as e:
            report(b"E %s\n" % str(e).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
