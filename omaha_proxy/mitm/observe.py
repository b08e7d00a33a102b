"""OmahaObserve: log every Omaha exchange to SQLite and label it in mitmproxy's UIs.

Run it (with the rest of omaha-proxy) as::

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net

An Omaha flow is a POST whose body is an Omaha request, whatever its path. Every such flow
is written to the log (:class:`omaha_proxy.store.store.Store`) once it has its final response or
error, gets a one-line ``flow.comment`` and, when the proxy answered or rewrote it, a
``flow.marked`` symbol. Other flows pass untouched and unlogged. A body that does not parse
is logged raw with its error and forwarded untouched.

The log is required by default: if a write fails, the error is logged and the proxy shuts
down (``omaha_log_required=false`` keeps it running without its log).

Who writes (``omaha_log_writer``): by default a separate writer process
(:mod:`omaha_proxy.store.writer`), so that the SQLite work stays off mitmproxy's event loop,
the proxy's bottleneck; it commits the exchanges waiting together in one transaction. The
answer leaves once its exchange is handed over (a crash of the proxy loses nothing: the
writer commits what it was sent); ``omaha_log_hold`` makes each answer wait for its commit.
``loop`` writes on the event loop, the exchanges of one loop turn sharing a commit; ``hook``
writes and commits each exchange in its hook, before the answer leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http

from omaha_proxy.mitm import common
from omaha_proxy.protocol.errors import StoreError
from omaha_proxy.protocol.summary import describe_exchange
from omaha_proxy.store.store import Store
from omaha_proxy.store.writer import LogWriterProcess

log = logging.getLogger(__name__)

#: ``omaha_log_writer`` values: who writes the log (all hold each answer until committed).
LOG_WRITERS = ("process", "loop", "hook")

# flow.marked symbols (mitmweb renders the emoji) for answers the proxy made or changed.
MARKERS: dict[str, str] = {
    "rewritten": ":pencil2:",
    "blocked": ":no_entry:",
    "held": ":hourglass:",
    "replayed": ":repeat:",
    "served": ":package:",
    "cached": ":floppy_disk:",
}


def parse_db_path(value: str) -> Path:
    """Validate ``omaha_db``: a file path whose directory exists. Raises ValueError."""
    if not value.strip():
        raise ValueError("omaha_db must be a file path, e.g. omaha.db")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"omaha_db {value!r} is a directory; give a file path, e.g. {path / 'omaha.db'}")
    if not path.parent.is_dir():
        raise ValueError(f"omaha_db {value!r}: directory {str(path.parent)!r} does not exist")
    return path


def parse_paths(values: Sequence[str]) -> tuple[str, ...]:
    """Validate ``omaha_paths``: path prefixes starting with ``/`` (empty: every path)."""
    bad = [v for v in values if not v.startswith("/")]
    if bad:
        raise ValueError(
            f"omaha_paths entries must be path prefixes starting with '/', e.g. /v1/update; got {bad}"
        )
    return tuple(values)


class OmahaObserve:
    """Logs Omaha exchanges, sets X-Forwarded-For, comments and marks Omaha flows."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self._paths: tuple[str, ...] = ()
        self._batch: asyncio.Future[None] | None = None  # answers waiting for the next commit
        self._writer: LogWriterProcess | None = None
        self._writer_broken = False  # it died or could not start: write on the loop instead

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("omaha_db", str, "omaha.db", "SQLite file of the Omaha log (created if missing).")
        loader.add_option(
            "omaha_redact", bool, False,
            "Store machine ids, boot ids and aliases as salted hashes (for logs you share).",
        )  # fmt: skip
        loader.add_option(
            "omaha_xff", bool, True,
            "Set X-Forwarded-For to the client's address on forwarded Omaha requests "
            "(replacing any value the client sent), so Nebraska records the machine's IP.",
        )  # fmt: skip
        loader.add_option(
            "omaha_log_required", bool, True,
            "Shut the proxy down when the Omaha log cannot be written (false: log the error, keep going).",
        )  # fmt: skip
        loader.add_option(
            "omaha_log_writer", str, "process",
            "Who writes the log: 'process' (a writer process, off the event loop), 'loop' (on the "
            "event loop, one commit per loop turn) or 'hook' (in the hook, one commit per "
            "exchange, before the answer leaves).",
            choices=LOG_WRITERS,
        )  # fmt: skip
        loader.add_option(
            "omaha_log_hold", bool, False,
            "Hold each answer until its exchange is committed to the log. Off: the answer leaves "
            "once the exchange is handed to the writer (a crash of the proxy loses nothing; the "
            "writer process commits what it was sent).",
        )  # fmt: skip
        loader.add_option(
            "omaha_paths", Sequence[str], [],
            "Only treat POSTs to these path prefixes as Omaha (default: any path).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "omaha_log_writer" in updated and ctx.options.omaha_log_writer not in LOG_WRITERS:
            raise exceptions.OptionsError(
                f"omaha_log_writer must be one of {', '.join(LOG_WRITERS)}; "
                f"got {ctx.options.omaha_log_writer!r}"
            )
        if "omaha_log_writer" in updated and ctx.options.omaha_log_writer != "process":
            self._stop_writer()
            self._writer_broken = False
        if "omaha_paths" in updated:
            try:
                self._paths = parse_paths(ctx.options.omaha_paths)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
        if "omaha_db" in updated or "omaha_redact" in updated:
            try:
                path = parse_db_path(ctx.options.omaha_db)
                store = Store(path, redact=ctx.options.omaha_redact)
            except (ValueError, StoreError) as e:
                raise exceptions.OptionsError(str(e)) from e
            self._close_store()
            self.store = store
            log.info("Omaha log: %s%s", path, " (redacted)" if store.redact else "")

    def running(self) -> None:
        # Start the writer now rather than with the first exchange (it takes ~0.3 s).
        if self.store is not None and ctx.options.omaha_log_writer == "process":
            self._process_writer(asyncio.get_running_loop())

    def done(self) -> None:
        self._close_store()

    def _close_store(self) -> None:
        if self.store is None:
            return
        self.flush()
        self._writer_broken = False  # a new log gets a new chance
        store, self.store = self.store, None
        try:
            store.close()
        except StoreError as e:
            log.error("%s", e)

    def flush(self) -> None:
        """Commit every exchange recorded so far (the writer process stops after its last
        commit; the next exchange starts a new one) and release the held answers."""
        self._stop_writer()
        self._commit_batch()

    def _commit_batch(self) -> None:
        """Commit the exchanges written on the loop and release their held answers.

        A failed commit is loud (see ``omaha_log_required``) but still releases the answers:
        traffic is never blocked by the log.
        """
        batch, self._batch = self._batch, None
        try:
            if self.store is not None:
                self.store.commit()  # no-op when nothing waits
        except StoreError as e:
            self._log_failed(e)
        finally:
            if batch is not None and not batch.done():
                batch.set_result(None)

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # waits for its last commit; releases the answers it held

    def _submit(self, record: dict[str, Any]) -> Awaitable[None] | None:
        """Log one exchange (``record``: the arguments of ``Store.record_exchange``). Returns
        the awaitable that holds the answer until the exchange is committed, or None when it
        already is (``hook`` mode, and direct calls without an event loop)."""
        assert self.store is not None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        writer = ctx.options.omaha_log_writer if loop is not None else "hook"
        if writer == "process" and loop is not None:
            process = self._process_writer(loop)
            if process is not None:
                return process.submit(record, hold=ctx.options.omaha_log_hold)
            writer = "loop"
        try:
            self.store.record_exchange(**record, commit=writer == "hook")
        except StoreError as e:
            self._log_failed(e)
            return None
        if loop is None or not self.store.uncommitted:
            return None
        held = self._committed(loop)  # the commit is scheduled either way
        return held if ctx.options.omaha_log_hold else None

    def _process_writer(self, loop: asyncio.AbstractEventLoop) -> LogWriterProcess | None:
        """The running writer process (started if needed), or None when it cannot run."""
        if self._writer is not None and not self._writer.alive:
            self._writer.close()
            self._writer, self._writer_broken = None, True
            log.error("Omaha log writer process lost: writing the log on the event loop from now on")
        if self._writer is None and not self._writer_broken and self.store is not None:
            try:
                self._writer = LogWriterProcess(
                    self.store.path, redact=self.store.redact, loop=loop, on_error=self._writer_error
                )
            except OSError as e:
                self._writer_broken = True
                log.error("cannot start the Omaha log writer process (%s): writing on the event loop", e)
        return self._writer

    def _writer_error(self, message: str) -> None:
        self._log_failed(StoreError(message))

    def _committed(self, loop: asyncio.AbstractEventLoop) -> Awaitable[None]:
        """An awaitable that completes once the exchanges written on the loop are committed,
        on its next turn (one commit for all the exchanges of a turn)."""
        if self._batch is None:
            self._batch = loop.create_future()
            loop.call_soon(self._commit_batch)
        return self._batch

    # ------------------------------------------------------------------ flows

    def _is_omaha(self, flow: http.HTTPFlow) -> bool:
        if self._paths and not flow.request.path.startswith(self._paths):
            return False
        return common.is_omaha_request(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not ctx.options.omaha_xff or not self._is_omaha(flow):
            return
        peer = flow.client_conn.peername
        if peer:
            # Nebraska trusts the first X-Forwarded-For entry: replace, never append.
            flow.request.headers["X-Forwarded-For"] = str(peer[0])

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Log the exchange. With ``omaha_log_hold`` (or a writer far behind), returns an
        awaitable that mitmproxy awaits before it sends the answer: the answer then leaves
        once its exchange is committed."""
        return self._record(flow) if self._is_omaha(flow) else None

    def error(self, flow: http.HTTPFlow) -> None:
        if self._is_omaha(flow):
            self._record(flow)  # nothing to hold: the exchange already failed

    def _record(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        request = common.omaha_request(flow)
        action, reason = common.action(flow), common.reason(flow)
        body = common.response_body(flow) if flow.response is not None else None
        response = common.omaha_response(flow)  # parsed once, shared with the other addons
        transport = flow.error.msg if flow.error else None
        request_error, response_error = common.request_error(flow), common.response_error(flow)
        errors = [
            e
            for e in (
                request_error and f"request: {request_error}",
                transport,
                response_error and f"response: {response_error}",
            )
            if e
        ]
        status = flow.response.status_code if flow.response is not None else None
        flow.comment = describe_exchange(
            request, response, action=action, reason=reason, error=errors[0] if errors else None,
            http_status=status,
        )  # fmt: skip
        if action in MARKERS and not flow.marked:
            flow.marked = MARKERS[action]
        if self.store is None:
            return None
        end = (
            flow.response.timestamp_end
            if flow.response is not None
            else (flow.error and flow.error.timestamp)
        )
        start = flow.request.timestamp_start
        peer = flow.client_conn.peername
        return self._submit(
            dict(
                flow_id=flow.id,
                ts=start,
                request_xml=common.request_body(flow),
                response_xml=body,
                client_ip=str(peer[0]) if peer else None,
                http_status=status,
                duration_ms=round((end - start) * 1000, 3) if end else None,
                error=transport,  # the store adds the parse errors itself
                action=action,
                reason=reason,
                path=flow.request.path,
                upstream_response_xml=common.upstream_response(flow),
                request=request,  # parsed already; the writer process parses the bytes again
                response=response,
                summary=flow.comment,
                # A live flow is logged once; flows loaded from a file or upload may come again.
                check_duplicate=not flow.live,
            )
        )

    def _log_failed(self, e: StoreError) -> None:
        if ctx.options.omaha_log_required:
            log.error("%s: shutting down (set omaha_log_required=false to run on without the log)", e)
            ctx.master.shutdown()
        else:
            log.error("%s: exchange not logged", e)
