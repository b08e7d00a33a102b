"""The SQLite log of Omaha exchanges (sqlite-utils, WAL), with the fleet's instance states.

One :class:`Store` per process and thread: sqlite3 connections are thread-bound, so the
proxy writes from its event-loop thread. Several processes may open the same file (WAL):
the logger writes, the control addon and the CLI read.

Every exchange is one transaction: the ``exchanges`` row (raw bodies byte-exact, written even
when nothing parses), the decoded ``apps``, ``events``, ``offers`` and ``packages`` rows, and
the ``instances`` row advanced through Nebraska's state machine (:mod:`omaha_proxy.store.states`).
The schema lives in :mod:`omaha_proxy.store.schema`.
"""

from __future__ import annotations

import hmac
import html
import json
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from omaha_proxy.protocol.codes import InstanceState, decode_error_code
from omaha_proxy.protocol.decode import parse_request, parse_response_shared
from omaha_proxy.protocol.describe import app_kind, request_kind
from omaha_proxy.protocol.errors import CodecError, StoreError
from omaha_proxy.protocol.model import AppRequest, AppResponse, Request, Response, UpdateCheckResponse
from omaha_proxy.protocol.summary import describe_exchange, event_result_name, event_type_name
from omaha_proxy.store.schema import migrations
from omaha_proxy.store.states import InstanceStatus, advance

# A flow is logged again (same id, same start time) when mitmproxy re-runs hooks on loaded flows.
# Walks exchanges(machine_id, ts): the flow's machine and start time, then its id.
_BY_FLOW_ID = "SELECT id FROM exchanges WHERE machine_id IS ? AND ts = ? AND flow_id = ?"
_REDACTED_ATTRS = re.compile(rb'\b(machineid|bootid|machinealias)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class _Decoded:
    request: Request | None
    response: Response | None
    upstream: Response | None
    errors: tuple[str, ...]


def _as_text_or_blob(data: bytes | None) -> str | bytes | None:
    """UTF-8 bodies are stored as TEXT (readable in Datasette), others as BLOB; both give
    back the exact bytes (:func:`_to_bytes`)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _to_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


class Store:
    """The Omaha log at ``path``. Opens (creating and migrating) the database.

    ``redact=True`` stores machine ids, boot ids and aliases as salted hashes, in the
    decoded columns and in the raw request XML. The salt is kept in the ``meta`` table so
    hashes stay stable across runs; passing a ``salt`` that differs from the stored one
    raises :class:`StoreError`. Raises :class:`StoreError` when the file cannot be opened.
    """

    def __init__(self, path: str | Path, *, redact: bool = False, salt: str | None = None) -> None:
        self.path = Path(path)
        self.redact = redact
        self._sql: dict[tuple[str, str, tuple[str, ...]], str] = {}
        try:
            self.db = Database(self.path)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, fast
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.execute("PRAGMA foreign_keys = ON")
            migrations.apply(self.db)
            self._salt = self._load_salt(salt) if redact else b""
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the Omaha log {self.path}: {e}") from e

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Commit what is pending, then close the connection (raises :class:`StoreError`
        when that commit fails; the connection is closed either way)."""
        try:
            self.commit()
        finally:
            with suppress(sqlite3.Error):
                self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_salt(self, salt: str | None) -> bytes:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'redact_salt'").fetchone()
        if row is not None:
            if salt is not None and salt != row[0]:
                raise StoreError(
                    f"{self.path} already has a different redaction salt; hashes would not match"
                )
            return str(row[0]).encode()
        value = salt if salt is not None else secrets.token_hex(16)
        self.db.execute("INSERT INTO meta (key, value) VALUES ('redact_salt', ?)", [value])
        return value.encode()

    # ------------------------------------------------------------------ redaction

    def hide(self, value: str | None) -> str | None:
        """The value as stored: a salted hash when redacting (empty stays empty), else as is."""
        if not self.redact or not value:
            return value
        return hmac.new(self._salt, value.encode(), sha256).hexdigest()[:32]

    def _hide_xml(self, data: bytes) -> bytes:
        def sub(m: re.Match[bytes]) -> bytes:
            value = html.unescape(m.group(2).decode("utf-8", "replace"))
            return m.group(1) + b'="' + (self.hide(value) or "").encode() + b'"'

        return _REDACTED_ATTRS.sub(sub, data)

    # ------------------------------------------------------------------ writing

    def record_exchange(
        self,
        *,
        flow_id: str,
        ts: float,
        request_xml: bytes,
        response_xml: bytes | None = None,
        client_ip: str | None = None,
        http_status: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
        action: str = "forwarded",
        reason: str | None = None,
        path: str | None = None,
        upstream_response_xml: bytes | None = None,
        request: Request | None = None,
        response: Response | None = None,
        commit: bool = True,
        summary: str | None = None,
        check_duplicate: bool = True,
    ) -> int:
        """Log one exchange with its decoded rows and the instance update, in one transaction.

        ``request``/``response`` are the already parsed bodies (parsed here when None and the
        bytes are given); a body that does not parse is stored raw and its parse error joins
        ``error``. ``upstream_response_xml`` is the upstream's original body when the proxy
        rewrote it; ``summary`` is the one-line description (computed when None). Logging
        the same ``flow_id`` (with the same ``ts``) twice is a no-op returning the first id.
        With ``commit=False`` the exchange joins an open transaction (one is begun if needed)
        that a later :meth:`commit` makes durable and visible to other connections: group
        commit for busy proxies. The exchange's rows are still all-or-nothing (a savepoint).
        ``check_duplicate=False`` skips that look-up, for callers that know the flow is new
        (a live flow is logged once). Returns the exchange id; raises :class:`StoreError`
        when the database write fails.
        """
        decoded = self._decode(request_xml, response_xml, upstream_response_xml, request, response)
        errors = tuple(e for e in (error, *decoded.errors) if e)
        req = decoded.request
        first = req.apps[0] if req and req.apps else None
        machine_id = self.hide(next((a.machineid for a in req.apps if a.machineid), None) if req else None)
        summary = summary or describe_exchange(
            req, decoded.response, action=action, reason=reason, error=errors[0] if errors else None,
            http_status=http_status,
        )  # fmt: skip
        row = {
            "flow_id": flow_id,
            "ts": ts,
            "client_ip": client_ip,
            "machine_id": machine_id,
            "http_status": http_status,
            "duration_ms": duration_ms,
            "request_xml": _as_text_or_blob(self._hide_xml(request_xml) if self.redact else request_xml),
            "response_xml": _as_text_or_blob(response_xml),
            "upstream_response_xml": _as_text_or_blob(upstream_response_xml),
            "error": "; ".join(errors) or None,
            "action": action,
            "reason": reason,
            "kind": request_kind(req).value if req else None,
            "path": path,
            "appid": first.appid if first else None,
            "version": first.version if first else None,
            "track": first.track if first else None,
            "summary": summary,
        }
        try:
            if not commit and not self.db.conn.in_transaction:
                self.db.conn.execute("BEGIN")
            with self._exchange_savepoint():
                if check_duplicate:
                    existing = self.db.conn.execute(_BY_FLOW_ID, (machine_id, ts, flow_id)).fetchone()
                    if existing is not None:
                        return int(existing[0])
                exchange_id = self._insert("exchanges", row)
                if req is not None:
                    self._record_apps(exchange_id, ts, req, decoded, action, client_ip)
            return exchange_id
        except sqlite3.Error as e:
            raise StoreError(f"cannot write to the Omaha log {self.path}: {e}") from e

    @contextmanager
    def _exchange_savepoint(self) -> Iterator[None]:
        """One exchange's rows, all or nothing, inside an open transaction (or its own).

        A fixed savepoint name keeps the statements in sqlite3's cache (sqlite-utils'
        ``atomic()`` names each savepoint at random, so every exchange re-prepared them).
        """
        conn = self.db.conn
        if not conn.in_transaction:
            with self.db.atomic():
                yield
            return
        conn.execute("SAVEPOINT omaha_exchange")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO SAVEPOINT omaha_exchange")
                conn.execute("RELEASE SAVEPOINT omaha_exchange")
            raise
        conn.execute("RELEASE SAVEPOINT omaha_exchange")

    def _decode(
        self,
        request_xml: bytes,
        response_xml: bytes | None,
        upstream_xml: bytes | None,
        request: Request | None,
        response: Response | None,
    ) -> _Decoded:
        errors: list[str] = []
        if request is None and request_xml:
            try:
                request = parse_request(request_xml)
            except CodecError as e:
                errors.append(f"request: {e}")
        if response is None and response_xml:
            try:
                response = parse_response_shared(response_xml)
            except CodecError as e:
                errors.append(f"response: {e}")
        upstream = None
        if upstream_xml and upstream_xml != response_xml:
            try:
                upstream = parse_response_shared(upstream_xml)  # a fleet's few upstream answers
            except CodecError as e:
                errors.append(f"upstream response: {e}")
        return _Decoded(request, response, upstream, tuple(errors))

    def _insert(self, table: str, row: dict[str, Any], verb: str = "INSERT") -> int:
        key = (verb, table, tuple(row))
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = (
                f"{verb} INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
            )
        cursor = self.db.conn.execute(sql, tuple(row.values()))
        return int(cursor.lastrowid or 0)

    def _record_apps(
        self, exchange_id: int, ts: float, req: Request, decoded: _Decoded, action: str, client_ip: str | None
    ) -> None:
        answers = {a.appid: a for a in decoded.response.apps} if decoded.response else {}
        upstream = {a.appid: a for a in decoded.upstream.apps} if decoded.upstream else {}
        seen_instance = False
        for app in req.apps:
            machine_id = self.hide(app.machineid)
            answer = answers.get(app.appid)
            self._insert(
                "apps",
                {
                    "exchange_id": exchange_id,
                    "appid": app.appid,
                    "version": app.version,
                    "track": app.track,
                    "board": app.board,
                    "oem": app.oem,
                    "oemversion": app.oemversion,
                    "machine_id": machine_id,
                    "boot_id": self.hide(app.bootid),
                    "alias": self.hide(app.machinealias),
                    "alephversion": app.alephversion,
                    "installsource": req.installsource,
                    "kind": app_kind(app).value,
                },
            )
            self._record_events(exchange_id, ts, app, machine_id)
            delivered_source = "upstream" if action == "forwarded" else "proxy"
            if answer is not None and answer.updatecheck is not None:
                self._record_offer(exchange_id, ts, machine_id, app, answer, decoded, delivered_source, True)
            original = upstream.get(app.appid)
            if original is not None and original.updatecheck is not None:
                self._record_offer(exchange_id, ts, machine_id, app, original, decoded, "upstream", False)
            if machine_id and not seen_instance:
                seen_instance = True
                self._update_instance(machine_id, ts, app, answer, action, client_ip)

    def _record_events(self, exchange_id: int, ts: float, app: AppRequest, machine_id: str | None) -> None:
        for event in app.events:
            info = decode_error_code(event.errorcode) if event.errorcode is not None else None
            result = event.eventresult or 0
            self._insert(
                "events",
                {
                    "exchange_id": exchange_id,
                    "ts": ts,
                    "machine_id": machine_id,
                    "appid": app.appid,
                    "type": event.eventtype,
                    "type_name": event_type_name(event.eventtype),
                    "result": result,
                    "result_name": event_result_name(result),
                    "errorcode": event.errorcode,
                    "error_base": info.base if info else None,
                    "error_name": info.name if info else None,
                    "error_flags": int(info.flags) if info else None,
                    "error_flag_names": ",".join(info.flag_names) if info else None,
                    "previousversion": event.previousversion,
                },
            )

    def _record_offer(
        self,
        exchange_id: int,
        ts: float,
        machine_id: str | None,
        app: AppRequest,
        answer: AppResponse,
        decoded: _Decoded,
        source: str,
        delivered: bool,
    ) -> None:
        uc: UpdateCheckResponse = answer.updatecheck  # type: ignore[assignment]
        manifest = uc.manifest
        postinstall = manifest.postinstall if manifest else None
        packages = (manifest.packages or ()) if manifest else ()
        offer_id = self._insert(
            "offers",
            {
                "exchange_id": exchange_id,
                "ts": ts,
                "machine_id": machine_id,
                "appid": answer.appid,
                "track": app.track,
                "from_version": app.version,
                "status": uc.status,
                "version": manifest.version if manifest else None,
                "codebases": json.dumps([u.codebase for u in uc.urls or ()]),
                "app_status": answer.status,
                "sha256": postinstall.sha256 if postinstall else None,
                "size": packages[0].size if packages else None,
                "source": source,
                "delivered": int(delivered),
            },
        )
        for position, package in enumerate(packages):
            self._insert(
                "packages",
                {
                    "offer_id": offer_id,
                    "position": position,
                    "name": package.name,
                    "size": package.size,
                    "hash": package.hash,
                    "hash_sha256": package.hash_sha256,
                    "required": package.required,
                },
            )

    def _update_instance(
        self,
        machine_id: str,
        ts: float,
        app: AppRequest,
        answer: AppResponse | None,
        action: str,
        client_ip: str | None,
    ) -> None:
        old = self.db.conn.execute(
            "SELECT state, update_in_progress, granted_version, first_seen, last_error, last_error_name,"
            " last_offer_version FROM instances WHERE machine_id = ?",
            [machine_id],
        ).fetchone()
        if old is None:
            before = InstanceStatus()
            first_seen, last_error, last_error_name, last_offer = ts, None, None, None
        else:
            before = InstanceStatus(InstanceState(old[0]), bool(old[1]), old[2])
            first_seen, last_error, last_error_name, last_offer = old[3], old[4], old[5], old[6]
        after = advance(before, app, answer, held=action == "held")
        for event in app.events:
            info = event.error
            if info is not None and (event.eventresult or 0) == 0:
                last_error, last_error_name = event.errorcode, str(info)
        if answer is not None and answer.updatecheck is not None and answer.updatecheck.status == "ok":
            manifest = answer.updatecheck.manifest
            last_offer = manifest.version if manifest else last_offer
        row = {
            "machine_id": machine_id,
            "appid": app.appid,
            "version": app.version,
            "track": app.track,
            "alias": self.hide(app.machinealias),
            "oem": app.oem,
            "board": app.board,
            "client_ip": client_ip,
            "first_seen": first_seen,
            "last_seen": ts,
            "last_error": last_error,
            "last_error_name": last_error_name,
            "state": int(after.state),
            "state_label": after.state.label,
            "update_in_progress": int(after.update_in_progress),
            "granted_version": after.granted_version,
            "last_offer_version": last_offer,
        }
        if old is None:
            self._insert("instances", row)
        else:  # in place: no delete + insert, the primary key index stays untouched
            del row["machine_id"], row["first_seen"]
            sql = self._sql.get(("UPDATE", "instances", tuple(row)))
            if sql is None:
                sql = f"UPDATE instances SET {', '.join(f'{k} = ?' for k in row)} WHERE machine_id = ?"
                self._sql[("UPDATE", "instances", tuple(row))] = sql
            self.db.conn.execute(sql, (*row.values(), machine_id))

    # ------------------------------------------------------------------ reading

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            cursor = self.db.conn.execute(sql, list(params))
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the Omaha log {self.path}: {e}") from e
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def machine_key(self, machine_id: str) -> str:
        """The key a machine id is stored under: its hash when redacting, unless ``machine_id``
        already is a stored key."""
        if not self.redact:
            return machine_id
        known = self.db.conn.execute("SELECT 1 FROM instances WHERE machine_id = ?", [machine_id]).fetchone()
        return machine_id if known else (self.hide(machine_id) or machine_id)

    def fleet(self) -> list[dict[str, Any]]:
        """Every instance (one row per machine), newest version first, then track and id."""
        return self._rows("SELECT * FROM instances ORDER BY version DESC, track, machine_id")

    def fleet_summary(self) -> list[dict[str, Any]]:
        """Machine counts grouped by version, track and state label, biggest groups first."""
        return self._rows(
            "SELECT version, track, state_label, COUNT(*) AS machines FROM instances"
            " GROUP BY version, track, state_label ORDER BY machines DESC, version DESC, track"
        )

    def instance(self, machine_id: str) -> dict[str, Any] | None:
        """One machine's ``instances`` row, or None if it was never seen."""
        rows = self._rows("SELECT * FROM instances WHERE machine_id = ?", [self.machine_key(machine_id)])
        return rows[0] if rows else None

    def history(self, machine_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """One machine's exchanges, newest first (bodies as bytes, events attached)."""
        rows = self._rows(
            "SELECT * FROM exchanges WHERE machine_id = ? ORDER BY ts DESC, id DESC LIMIT ?",
            [self.machine_key(machine_id), limit],
        )
        return self._finish(rows)

    def recent(self, limit: int = 50, machine_id: str | None = None) -> list[dict[str, Any]]:
        """The latest exchanges (all machines, or one), newest first, events attached."""
        if machine_id is not None:
            return self.history(machine_id, limit)
        return self._finish(self._rows("SELECT * FROM exchanges ORDER BY id DESC LIMIT ?", [limit]))

    def _finish(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for key in ("request_xml", "response_xml", "upstream_response_xml"):
            for row in rows:
                row[key] = _to_bytes(row[key])
        if rows:
            ids = [row["id"] for row in rows]
            marks = ", ".join("?" * len(ids))
            events: dict[int, list[dict[str, Any]]] = {}
            for event in self._rows(f"SELECT * FROM events WHERE exchange_id IN ({marks}) ORDER BY id", ids):
                events.setdefault(event["exchange_id"], []).append(event)
            for row in rows:
                row["events"] = events.get(row["id"], [])
        return rows

    def exchange(self, exchange_id: int) -> dict[str, Any] | None:
        """One exchange by id, with its events, or None."""
        rows = self._finish(self._rows("SELECT * FROM exchanges WHERE id = ?", [exchange_id]))
        return rows[0] if rows else None

    def latest_offer(
        self, version: str | None = None, appid: str | None = None, track: str | None = None
    ) -> bytes | None:
        """The raw XML of the newest ``ok`` offer the real upstream sent (optionally of one
        version, app or track), exactly as received, or None when none was seen."""
        where = ["o.status = 'ok'", "o.source = 'upstream'"]
        params: list[Any] = []
        for column, value in (("version", version), ("appid", appid), ("track", track)):
            if value is not None:
                where.append(f"o.{column} = ?")
                params.append(value)
        rows = self._rows(
            "SELECT o.delivered, e.response_xml, e.upstream_response_xml FROM offers o"
            f" JOIN exchanges e ON e.id = o.exchange_id WHERE {' AND '.join(where)}"
            " ORDER BY o.id DESC LIMIT 1",  # walks idx_offers_upstream_ok, newest first
            params,
        )
        if not rows:
            return None
        row = rows[0]
        return _to_bytes(row["response_xml"] if row["delivered"] else row["upstream_response_xml"])

    def grants_since(self, ts: float) -> list[dict[str, Any]]:
        """Update grants (``ok`` offers delivered to a machine) at or after ``ts``, oldest
        first: ``machine_id``, ``appid``, ``track``, ``version``, ``from_version``, ``ts``."""
        return self._rows(
            "SELECT machine_id, appid, track, version, from_version, ts FROM offers"
            " WHERE delivered = 1 AND status = 'ok' AND ts >= ? ORDER BY ts, id",
            [ts],
        )

    def count(self, table: str = "exchanges") -> int:
        """Number of rows in one of the log's tables."""
        if table not in {"exchanges", "apps", "events", "offers", "packages", "instances"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self.db.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    @property
    def uncommitted(self) -> bool:
        """True while exchanges recorded with ``commit=False`` wait for :meth:`commit`."""
        return self.db.conn.in_transaction

    def commit(self) -> None:
        """Commit exchanges recorded with ``commit=False`` (no-op when there are none).
        Raises :class:`StoreError` when the commit fails (the pending exchanges are lost)."""
        try:
            self.db.commit()
        except sqlite3.Error as e:
            with suppress(sqlite3.Error):
                self.db.rollback()
            raise StoreError(f"cannot commit to the Omaha log {self.path}: {e}") from e

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """Group many :meth:`record_exchange` calls in one transaction (imports, benchmarks)."""
        with self.db.atomic():
            yield self
