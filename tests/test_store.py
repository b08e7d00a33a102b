"""The SQLite log: raw bodies kept byte-exact, decoded rows, instance states, queries, redaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from omaha_proxy.protocol.errors import StoreError
from omaha_proxy.store.store import _BY_FLOW_ID, Store
from tests.conftest import sample

REQ = "flatcar-update_engine-0.4.10__request_{}.RECONSTRUCTED.xml"
CHECK = sample(REQ.format("01_updatecheck_steady_state"))
STARTED = sample(REQ.format("06_event_download_started"))
FINISHED = sample(REQ.format("07_event_download_finished"))
INSTALLED = sample(REQ.format("08_event_update_installed"))
HASH_MISMATCH = sample(REQ.format("09_event_error_hash_mismatch_nonprod_server"))
PING = sample(REQ.format("11_ping_only_waiting_for_reboot"))
REBOOTED = sample(REQ.format("04_updatecheck_after_reboot_into_new_version"))
OFFER = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml")
NOUPDATE = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
ACK = sample("nebraska-shape__event_ack.GENERATED.xml")
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "omaha.db") as s:
        yield s


def record(store: Store, n: int, request: bytes, response: bytes | None = ACK, **kw: object) -> int:
    kw.setdefault("http_status", 200 if response is not None else None)
    return store.record_exchange(
        flow_id=f"flow-{n}", ts=1000.0 + n, request_xml=request, response_xml=response, **kw
    )


def rows(store: Store, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    return store.db.conn.execute(sql, params).fetchall()


def test_opening_sets_wal_and_synchronous_normal_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "omaha.db"
    Store(path).close()
    with Store(path) as s:
        assert rows(s, "PRAGMA journal_mode") == [("wal",)]
        assert rows(s, "PRAGMA synchronous") == [(1,)]  # NORMAL
        assert rows(s, "SELECT name FROM _sqlite_migrations WHERE migration_set = 'omaha_proxy'") == [
            ("m001_initial",),
            ("m002_drop_the_flow_id_index",),
        ]
        tables = {t for (t,) in rows(s, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"exchanges", "apps", "events", "offers", "packages", "instances", "meta"} <= tables


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path)  # a directory


def test_update_check_is_logged_raw_and_decoded(store: Store) -> None:
    exchange_id = record(store, 1, CHECK, OFFER, client_ip="10.0.0.7", duration_ms=12.5, path="/v1/update/")
    [ex] = store.recent(1)
    assert ex["id"] == exchange_id
    assert (ex["request_xml"], ex["response_xml"]) == (CHECK, OFFER)  # byte-exact
    assert (ex["machine_id"], ex["kind"], ex["action"], ex["error"]) == (
        MACHINE,
        "updatecheck",
        "forwarded",
        None,
    )
    assert (ex["client_ip"], ex["http_status"], ex["duration_ms"], ex["path"]) == (
        "10.0.0.7",
        200,
        12.5,
        "/v1/update/",
    )
    assert ex["summary"] == "updatecheck 4081.2.0 stable → ok 4081.2.0"
    [app] = store._rows("SELECT * FROM apps")
    assert (app["track"], app["board"], app["oem"], app["boot_id"], app["installsource"]) == (
        "stable", "amd64-usr", "qemu", "{3f1c5a4e-9b0d-4a7e-8c2f-1d6e0b9a7c55}", "scheduler",
    )  # fmt: skip
    [event] = ex["events"]
    assert (event["type_name"], event["result_name"], event["previousversion"]) == (
        "UpdateComplete", "SuccessReboot", "",
    )  # fmt: skip
    [offer] = store._rows("SELECT * FROM offers")
    assert (offer["status"], offer["version"], offer["source"], offer["delivered"]) == (
        "ok",
        "4081.2.0",
        "upstream",
        1,
    )
    assert json.loads(offer["codebases"]) == ["https://update.release.flatcar-linux.net/amd64-usr/4081.2.0/"]
    packages = store._rows("SELECT name, size, hash_sha256, required FROM packages ORDER BY position")
    assert [(p["name"], p["required"]) for p in packages] == [
        ("flatcar_production_update.gz", "true"), ("oem-qemu.gz", "false"),
    ]  # fmt: skip
    assert packages[0]["size"] == 486539264 and packages[1]["hash_sha256"].startswith("0f1e2d")


def test_error_event_splits_code_base_and_flags(store: Store) -> None:
    record(store, 1, HASH_MISMATCH)
    [event] = store.recent(1)[0]["events"]
    assert (event["errorcode"], event["error_base"], event["error_name"]) == (
        268435466,
        10,
        "PayloadHashMismatch",
    )
    assert (event["error_flags"], event["error_flag_names"]) == (1 << 28, "non-production-server")


def test_a_body_that_does_not_parse_is_still_logged_raw_with_its_error(store: Store) -> None:
    broken = b'<request protocol="3.0"><app machinealias="my "box""></app></request>'
    record(store, 1, broken, b"\xff\xfe not xml")
    [ex] = store.recent(1)
    assert (ex["request_xml"], ex["response_xml"]) == (broken, b"\xff\xfe not xml")
    assert ex["error"].startswith("request: ") and "response: " in ex["error"]
    assert ex["kind"] is None and ex["machine_id"] is None
    assert store.count("apps") == store.count("instances") == 0


def test_transport_error_is_logged_without_response(store: Store) -> None:
    record(store, 1, CHECK, None, error="server disconnected")
    [ex] = store.recent(1)
    assert (ex["response_xml"], ex["http_status"], ex["error"]) == (None, None, "server disconnected")
    assert store.instance(MACHINE)["state_label"] == "Undefined"


def test_logging_the_same_flow_twice_keeps_one_row(store: Store) -> None:
    assert record(store, 1, CHECK, OFFER) == record(store, 1, CHECK, OFFER)
    assert record(store, 2, b"<broken", None) == record(store, 2, b"<broken", None)  # no machine id
    assert store.count("exchanges") == 2 and store.count("offers") == 1
    plan = " ".join(str(r[3]) for r in rows(store, "EXPLAIN QUERY PLAN " + _BY_FLOW_ID, [None, 1.0, "f"]))
    assert "idx_exchanges_machine_id_ts" in plan  # the duplicate look-up needs no index of its own


def test_instance_follows_a_whole_update_through_nebraskas_states(store: Store) -> None:
    steps = [
        (CHECK, OFFER),
        (STARTED, ACK),
        (FINISHED, ACK),
        (INSTALLED, ACK),
        (PING, ACK),
        (REBOOTED, NOUPDATE),
    ]
    labels = []
    for n, (request, response) in enumerate(steps):
        record(store, n, request, response)
        labels.append(store.instance(MACHINE)["state_label"])
    assert labels == ["UpdateGranted", "Downloading", "Downloaded", "Downloaded", "Downloaded", "Complete"]
    instance = store.instance(MACHINE)
    assert (instance["first_seen"], instance["last_seen"], instance["last_offer_version"]) == (
        1000.0,
        1005.0,
        "4081.2.0",
    )


def test_instance_remembers_the_last_error_by_name(store: Store) -> None:
    record(store, 1, CHECK, OFFER)
    record(store, 2, HASH_MISMATCH)
    instance = store.instance(MACHINE)
    assert (instance["state_label"], instance["last_error"]) == ("Error", 268435466)
    assert instance["last_error_name"] == "268435466 = PayloadHashMismatch (10) + non-production-server"


def test_fleet_and_history(store: Store) -> None:
    other = CHECK.replace(MACHINE.encode(), b"f" * 32).replace(b'track="stable"', b'track="beta"')
    record(store, 1, CHECK, NOUPDATE)
    record(store, 2, other, OFFER)
    record(store, 3, PING)
    assert [(m["machine_id"], m["track"], m["state_label"]) for m in store.fleet()] == [
        ("f" * 32, "beta", "UpdateGranted"), (MACHINE, "stable", "Undefined"),
    ]  # fmt: skip
    assert {(g["track"], g["machines"]) for g in store.fleet_summary()} == {("stable", 1), ("beta", 1)}
    assert [e["flow_id"] for e in store.history(MACHINE, 10)] == ["flow-3", "flow-1"]
    assert [e["flow_id"] for e in store.recent(2)] == ["flow-3", "flow-2"]
    assert [e["flow_id"] for e in store.recent(5, machine_id="f" * 32)] == ["flow-2"]


def test_latest_offer_is_the_upstreams_original_not_the_rewrite(store: Store) -> None:
    rewritten = NOUPDATE
    record(store, 1, CHECK, rewritten, action="rewritten", reason="pinned", upstream_response_xml=OFFER)
    assert store.latest_offer() == OFFER
    assert store.latest_offer(version="4081.2.0", track="stable") == OFFER
    assert store.latest_offer(version="9999.0.0") is None
    delivered = store._rows("SELECT status, source, delivered FROM offers ORDER BY id")
    assert [(o["status"], o["source"], o["delivered"]) for o in delivered] == [
        ("noupdate", "proxy", 1), ("ok", "upstream", 0),
    ]  # fmt: skip
    assert store.grants_since(0) == []  # the machine was not told "ok"


def test_synthetic_offers_are_not_upstream_offers(store: Store) -> None:
    record(store, 1, CHECK, OFFER, action="served", reason="local package")
    assert store.latest_offer() is None
    assert [g["version"] for g in store.grants_since(1000.0)] == ["4081.2.0"]


def test_grants_since_counts_delivered_ok_offers_from_a_time(store: Store) -> None:
    record(store, 1, CHECK, OFFER)
    record(store, 2, CHECK, NOUPDATE)
    record(store, 5, CHECK, OFFER)
    assert [g["ts"] for g in store.grants_since(1002.0)] == [1005.0]
    assert store.grants_since(1002.0)[0]["machine_id"] == MACHINE


def test_redaction_hashes_ids_in_columns_and_raw_xml_with_a_stable_salt(tmp_path: Path) -> None:
    aliased = CHECK.replace(b'machinealias=""', b'machinealias="rack &amp; 7"')
    with Store(tmp_path / "r.db", redact=True) as s:
        record(s, 1, aliased, OFFER)
        [ex] = s.recent(1)
        hashed = ex["machine_id"]
        assert hashed != MACHINE and len(hashed) == 32
        assert MACHINE.encode() not in ex["request_xml"] and b"rack &amp; 7" not in ex["request_xml"]
        assert b"3f1c5a4e" not in ex["request_xml"]
        assert f'machineid="{hashed}"'.encode() in ex["request_xml"]
        [app] = s._rows("SELECT boot_id, alias FROM apps")
        assert (
            app["alias"] == s.hide("rack & 7")
            and f'machinealias="{app["alias"]}"'.encode() in ex["request_xml"]
        )
        assert s.instance(MACHINE)["machine_id"] == hashed  # look-ups accept the real id
        assert [e["id"] for e in s.history(MACHINE)] == [ex["id"]]
    with Store(tmp_path / "r.db", redact=True) as again:
        assert again.hide(MACHINE) == hashed
    with pytest.raises(StoreError, match="salt"):
        Store(tmp_path / "r.db", redact=True, salt="another")


def test_redaction_leaves_empty_values_empty(tmp_path: Path) -> None:
    with Store(tmp_path / "r.db", redact=True, salt="s") as s:
        assert (s.hide(""), s.hide(None)) == ("", None)


def test_hot_queries_use_their_indexes(store: Store) -> None:
    plan = " ".join(
        str(r[3])
        for r in rows(
            store, "EXPLAIN QUERY PLAN SELECT * FROM exchanges WHERE machine_id = 'x' ORDER BY ts DESC"
        )
    )
    assert "idx_exchanges_machine_id_ts" in plan and "TEMP B-TREE" not in plan
    plan = " ".join(
        str(r[3])
        for r in rows(
            store, "EXPLAIN QUERY PLAN SELECT * FROM offers WHERE delivered = 1 AND status = 'ok' AND ts >= 5"
        )
    )
    assert "idx_offers_grants" in plan
    sql = "SELECT * FROM offers WHERE status = 'ok' AND source = 'upstream' AND version = '1' ORDER BY id DESC LIMIT 1"
    assert "idx_offers_upstream_ok" in " ".join(str(r[3]) for r in rows(store, "EXPLAIN QUERY PLAN " + sql))


def test_write_failure_is_a_store_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "omaha.db")
    s.db.conn.execute("DROP TABLE events")
    with pytest.raises(StoreError, match="cannot write"):
        record(s, 1, STARTED)
    assert s.count("exchanges") == 0  # the whole exchange rolled back
    s.close()


def test_readers_in_another_connection_see_committed_exchanges(store: Store) -> None:
    record(store, 1, CHECK, OFFER)
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT COUNT(*) FROM exchanges").fetchone() == (1,)
    other.close()


def test_uncommitted_exchanges_wait_for_commit_and_close(tmp_path: Path) -> None:
    store = Store(tmp_path / "omaha.db")
    for n in range(3):
        record(store, n, CHECK, OFFER, commit=False)
    other = sqlite3.connect(tmp_path / "omaha.db")
    assert store.uncommitted and store.count() == 3
    assert other.execute("SELECT COUNT(*) FROM exchanges").fetchone() == (0,)
    store.commit()
    assert not store.uncommitted
    assert other.execute("SELECT COUNT(*) FROM exchanges").fetchone() == (3,)
    record(store, 9, CHECK, OFFER, commit=False)
    store.close()
    assert other.execute("SELECT COUNT(*) FROM exchanges").fetchone() == (4,)
    other.close()


def test_a_failing_exchange_in_a_group_commit_rolls_back_alone(store: Store) -> None:
    record(store, 1, CHECK, OFFER, commit=False)
    store.db.conn.execute("DROP TABLE packages")
    with pytest.raises(StoreError):
        record(store, 2, CHECK, OFFER, commit=False)
    store.commit()
    assert [e["flow_id"] for e in store.recent(5)] == ["flow-1"]
