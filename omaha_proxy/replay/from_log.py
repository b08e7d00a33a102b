"""Build recordings from the SQLite log (the live proxy and flow files have their own builders).

A recording captures what the **upstream** said: where the proxy rewrote an answer the
upstream's original is recorded, and answers the proxy made itself (blocked, held, replayed,
served, cached) are left out. The same rule holds for ``omaha_record`` and ``.mitm`` files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from omaha_proxy.replay.recording import Recording, RecordingBuilder
from omaha_proxy.store.store import Store

#: Actions whose answer the proxy made up (mirrors ``omaha_proxy.mitm.common.SYNTHETIC_ACTIONS``).
SYNTHETIC_ACTIONS = frozenset({"blocked", "held", "replayed", "served", "cached"})
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Upper bound on exchanges read from one log (a fleet log may hold millions).
MAX_EXCHANGES = 1_000_000


def parse_since(text: str, *, now: float) -> float:
    """A point in time as epoch seconds: ``1732700000``, ``2026-11-27T10:00`` (UTC if naive),
    or an age like ``90m``/``2h``/``1d`` before ``now``. Raises ValueError saying which forms work.
    """
    value = text.strip()
    match = _AGO.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use epoch seconds, an ISO date (2026-11-27T10:00) or an age (90m, 2h, 1d)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _rows(store: Store, machines: Sequence[str]) -> list[dict[str, Any]]:
    if not machines:
        return store.recent(MAX_EXCHANGES)
    rows: list[dict[str, Any]] = []
    for machine in machines:
        rows += store.history(machine, MAX_EXCHANGES)
    return rows


def add_log_rows(builder: RecordingBuilder, rows: Iterable[Mapping[str, Any]]) -> int:
    """Add log rows (``exchanges`` rows as :class:`Store` returns them) oldest first; returns how
    many were added. Rows without a response, or answered by the proxy itself, are skipped."""
    added = 0
    for row in sorted(rows, key=lambda r: (r["ts"], r["id"])):
        response = row.get("upstream_response_xml") or row.get("response_xml")
        if row.get("action") in SYNTHETIC_ACTIONS or not row.get("request_xml") or response is None:
            continue
        builder.add(
            row["request_xml"],
            response,
            status=int(row.get("http_status") or 200),
            path=row.get("path") or "/v1/update/",
            request_headers=[("Content-Type", "text/xml")],
        )
        added += 1
    return added


def recording_from_store(
    store: Store,
    *,
    machines: Sequence[str] = (),
    since: float | None = None,
    until: float | None = None,
    keep_ids: bool = False,
) -> Recording:
    """A recording of the logged exchanges of ``machines`` (all when empty) in ``[since, until)``.

    The log keeps bodies, not HTTP headers: requests get ``Content-Type: text/xml`` only.
    """
    rows = [
        r
        for r in _rows(store, machines)
        if (since is None or r["ts"] >= since) and (until is None or r["ts"] < until)
    ]
    builder = RecordingBuilder(source=f"omaha-proxy log {store.path.name}", keep_ids=keep_ids)
    add_log_rows(builder, rows)
    return builder.recording()
