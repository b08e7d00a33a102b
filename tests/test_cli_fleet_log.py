"""``omaha-proxy fleet``, ``omaha-proxy log`` and ``omaha-proxy addon-path`` over a real log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omaha_proxy.cli import main
from omaha_proxy.store.store import Store
from tests.conftest import REPO, sample

REQ = "flatcar-update_engine-0.4.10__request_{}.RECONSTRUCTED.xml"
CHECK = sample(REQ.format("01_updatecheck_steady_state"))
STARTED = sample(REQ.format("06_event_download_started"))
HTTP_503 = sample(REQ.format("10_event_error_http_503_nonprod_server"))
OFFER = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml")
NOUPDATE = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
ACK = sample("nebraska-shape__event_ack.GENERATED.xml")
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
OTHER = "a" * 32


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "omaha.db"
    beta = CHECK.replace(MACHINE.encode(), OTHER.encode()).replace(b'track="stable"', b'track="beta"')
    with Store(path) as store:
        for n, (request, response) in enumerate(
            [(CHECK, OFFER), (STARTED, ACK), (beta, NOUPDATE), (HTTP_503, ACK)]
        ):
            store.record_exchange(
                flow_id=f"f{n}", ts=1_800_000_000 + n, request_xml=request, response_xml=response,
                http_status=200, client_ip="10.1.0.9",
            )  # fmt: skip
    return path


def test_fleet_prints_counts_then_machines(db: Path, capsys) -> None:
    assert main(["fleet", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    summary, machines = out.split("\n\n")
    assert summary.splitlines()[0].split() == ["VERSION", "TRACK", "STATE", "MACHINES"]
    assert "4081.2.0  stable  Error" in summary and "4081.2.0  beta    Undefined" in summary
    assert MACHINE in machines and OTHER in machines
    assert "2027-01-15" in machines  # last seen, UTC
    assert "268437959 = HTTP 503 (2503) + non-production-server" in machines


def test_fleet_json_matches_the_library(db: Path, capsys) -> None:
    assert main(["fleet", "--db", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    with Store(db) as store:
        assert data == {"summary": store.fleet_summary(), "machines": store.fleet()}


def test_fleet_summary_only(db: Path, capsys) -> None:
    assert main(["fleet", "--db", str(db), "--summary"]) == 0
    assert MACHINE not in capsys.readouterr().out


def test_log_lists_exchanges_oldest_first_with_errors_named(db: Path, capsys) -> None:
    assert main(["log", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "MACHINE", "IP"]
    assert len(lines) == 2 + 4
    assert "updatecheck 4081.2.0 stable → ok 4081.2.0" in lines[2]
    assert "13/1 update download started" in lines[3]
    assert "268437959 = HTTP 503 (2503) + non-production-server" in lines[5]


def test_log_filters_one_machine_and_limits(db: Path, capsys) -> None:
    assert main(["log", "--db", str(db), "--machine", OTHER, "--limit", "5"]) == 0
    body = capsys.readouterr().out.splitlines()[2:]
    assert len(body) == 1 and "beta" in body[0]
    assert main(["log", "--db", str(db), "--limit", "1", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["flow_id"] == "f3" and row["events"][0]["error_name"] == "HTTP 503"
    assert "request_xml" not in row


def test_missing_log_is_an_error_not_a_new_file(tmp_path: Path, capsys) -> None:
    for command in ("fleet", "log"):
        assert main([command, "--db", str(tmp_path / "nope.db")]) == 1
        assert "no Omaha log at" in capsys.readouterr().out
    assert not (tmp_path / "nope.db").exists()


def test_addon_path_prints_the_entry_script(capsys) -> None:
    assert main(["addon-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_file() and path.name == "omaha.py"
    assert path == (REPO / "addons" / "omaha.py").resolve()
