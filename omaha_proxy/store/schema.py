"""The Omaha log's schema, as ``sqlite_utils`` migrations (applied by :class:`~omaha_proxy.store.store.Store`).

Add a change as a new ``@migrations()`` function at the end; never edit an applied one.

Indexes are chosen for the two hot reads on a large log (1,000,000 exchanges): the fleet view
reads the small ``instances`` table (maintained on write, not a view), and one machine's
history walks ``exchanges(machine_id, ts)``. Every other index costs each write a page, so
there are only those the query methods use (``recent`` walks the primary key).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("omaha_proxy")

# Raw bodies are declared BLOB (no type affinity): a UTF-8 body is stored as TEXT, anything
# else as BLOB, and either gives back the exact bytes.
EXCHANGES = {
    "id": int,
    "flow_id": str,
    "ts": float,
    "client_ip": str,
    "machine_id": str,
    "http_status": int,
    "duration_ms": float,
    "request_xml": bytes,
    "response_xml": bytes,
    "upstream_response_xml": bytes,
    "error": str,
    "action": str,
    "reason": str,
    "kind": str,
    "path": str,
    "appid": str,
    "version": str,
    "track": str,
    "summary": str,
}

APPS = {
    "id": int,
    "exchange_id": int,
    "appid": str,
    "version": str,
    "track": str,
    "board": str,
    "oem": str,
    "oemversion": str,
    "machine_id": str,
    "boot_id": str,
    "alias": str,
    "alephversion": str,
    "installsource": str,
    "kind": str,
}

EVENTS = {
    "id": int,
    "exchange_id": int,
    "ts": float,
    "machine_id": str,
    "appid": str,
    "type": int,
    "type_name": str,
    "result": int,
    "result_name": str,
    "errorcode": int,
    "error_base": int,
    "error_name": str,
    "error_flags": int,
    "error_flag_names": str,
    "previousversion": str,
}

OFFERS = {
    "id": int,
    "exchange_id": int,
    "ts": float,
    "machine_id": str,
    "appid": str,
    "track": str,
    "from_version": str,
    "status": str,
    "version": str,
    "codebases": str,
    "app_status": str,
    "sha256": str,
    "size": int,
    "source": str,
    "delivered": int,
}

PACKAGES = {
    "id": int,
    "offer_id": int,
    "position": int,
    "name": str,
    "size": int,
    "hash": str,
    "hash_sha256": str,
    "required": str,
}

INSTANCES = {
    "machine_id": str,
    "appid": str,
    "version": str,
    "track": str,
    "alias": str,
    "oem": str,
    "board": str,
    "client_ip": str,
    "first_seen": float,
    "last_seen": float,
    "last_error": int,
    "last_error_name": str,
    "state": int,
    "state_label": str,
    "update_in_progress": int,
    "granted_version": str,
    "last_offer_version": str,
}


@migrations()
def m001_initial(db: Database) -> None:
    """Create the six log tables, ``meta`` and their indexes."""
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("exchanges").create(EXCHANGES, pk="id", not_null={"flow_id", "ts", "action"})
    db.table("apps").create(APPS, pk="id", foreign_keys=[("exchange_id", "exchanges", "id")])
    db.table("events").create(EVENTS, pk="id", foreign_keys=[("exchange_id", "exchanges", "id")])
    db.table("offers").create(OFFERS, pk="id", foreign_keys=[("exchange_id", "exchanges", "id")])
    db.table("packages").create(PACKAGES, pk="id", foreign_keys=[("offer_id", "offers", "id")])
    db.table("instances").create(INSTANCES, pk="machine_id", not_null={"state"})
    # Finds a flow logged twice; appends only (ts grows), so cheap to maintain, unlike an
    # index on the random flow id alone. (Dropped by m002: the machine index finds it too.)
    db.table("exchanges").create_index(["ts", "flow_id"])
    db.table("exchanges").create_index(["machine_id", "ts"])
    db.table("apps").create_index(["exchange_id"])
    db.table("events").create_index(["exchange_id"])
    db.table("offers").create_index(["exchange_id"])
    db.table("packages").create_index(["offer_id"])
    # Partial indexes: only offers that grant an update pay for them (most answers are noupdate).
    db.execute(
        "CREATE INDEX idx_offers_upstream_ok ON offers (id) WHERE status = 'ok' AND source = 'upstream'"
    )
    db.execute("CREATE INDEX idx_offers_grants ON offers (ts) WHERE delivered = 1 AND status = 'ok'")


@migrations()
def m002_drop_the_flow_id_index(db: Database) -> None:
    """Finding a flow logged twice walks ``exchanges(machine_id, ts)`` instead: one index
    less to update for every exchange (a page less to write at each commit)."""
    db.execute("DROP INDEX IF EXISTS idx_exchanges_ts_flow_id")
