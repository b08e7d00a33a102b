"""Starting mitmproxy with the addons: the command line, and real mitmdump runs (e2e)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from omaha_proxy.cli import main
from omaha_proxy.cli.proxy import where_to_point
from omaha_proxy.client.simulator import simulate
from omaha_proxy.mitm.launch import ProxyProcess, ProxySettings, parse_listen, proxy_command, script_path
from omaha_proxy.servers.http import OmahaServer
from omaha_proxy.store.store import Store
from tests.support.serving import SERVED_VERSION, package_server


def sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_reverse_mode_command_loads_the_addons_lazily_and_logs_to_the_db() -> None:
    argv = proxy_command(
        ProxySettings(upstream="http://127.0.0.1:8000", listen="0.0.0.0:9090", db="/tmp/x.db")
    )
    assert Path(argv[0]).name == "mitmdump"
    assert argv[1:5] == ["--listen-host", "0.0.0.0", "--listen-port", "9090"]
    assert argv[5:7] == ["--mode", "reverse:http://127.0.0.1:8000"]
    assert argv[argv.index("-s") + 1] == str(script_path())
    assert sets(argv) == ["connection_strategy=lazy", "omaha_db=/tmp/x.db"]


def test_control_replay_and_web_settings_become_sets() -> None:
    settings = ProxySettings(web=True, web_port=9999, block="track:beta", pin="stable=4081.2.0",
                             rollout="max=2/1h", allow_downgrade=True, replay="r.json", record="rec.json",
                             redact=True, save_flows="f.mitm", read_flows="old.mitm", extra_sets=("flow_detail=3",))  # fmt: skip
    argv = proxy_command(settings)
    assert Path(argv[0]).name == "mitmweb" and argv[5:7] == ["--mode", "regular"]
    assert sets(argv)[2:] == [
        "omaha_block=track:beta", "omaha_pin=stable=4081.2.0", "omaha_rollout=max=2/1h",
        "omaha_allow_downgrade=true", "omaha_replay=r.json", "omaha_record=rec.json", "omaha_redact=true",
        "web_open_browser=false", "web_port=9999", "flow_detail=3",
    ]  # fmt: skip
    assert argv[-4:] == ["-w", "f.mitm", "-r", "old.mitm"]


def test_where_to_point_machines() -> None:
    reverse = ProxySettings(upstream="https://public.update.flatcar-linux.net", listen="0.0.0.0:8080")
    assert "SERVER=http://0.0.0.0:8080/v1/update/" in where_to_point(reverse)
    regular = where_to_point(ProxySettings())
    assert "ALL_PROXY=http://127.0.0.1:8080" in regular and "loopback" in regular


def test_listen_address_must_be_host_port() -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("8080")


def test_proxy_dry_run_prints_the_command(capsys) -> None:
    assert main(["proxy", "--upstream", "http://127.0.0.1:8000", "--pin", "4081.2.0", "--dry-run"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert "omaha_pin=4081.2.0" in argv and "reverse:http://127.0.0.1:8000" in argv


def test_proxy_refuses_a_bad_listen_address(capsys) -> None:
    assert main(["proxy", "--listen", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


@pytest.mark.e2e
def test_simulated_fleet_through_real_mitmdump_reverse_proxy_is_logged(tmp_path) -> None:
    db = tmp_path / "omaha.db"
    with package_server(tmp_path) as upstream:
        settings = ProxySettings(upstream=upstream.url, listen="127.0.0.1:0", db=str(db))
        with ProxyProcess(proxy_command(settings), tmp_path / "mitmdump.log") as proxy:
            report = simulate(f"{proxy.url}/v1/update/", 3, cycles=3, timeout=30)
    assert report.summary() == {"updated": 3}
    with Store(db) as store:
        fleet = store.fleet()
        assert {m["version"] for m in fleet} == {SERVED_VERSION} and len(fleet) == 3
        assert {m["state_label"] for m in fleet} == {"Complete"}
        assert store.count() == 3 * 6  # check, 13/1, 14/1, 3/1, ping, post-reboot check


@pytest.mark.e2e
def test_simulator_through_mitmdump_as_a_regular_proxy(tmp_path) -> None:
    db = tmp_path / "omaha.db"
    with package_server(tmp_path) as upstream:
        settings = ProxySettings(listen="127.0.0.1:0", db=str(db))
        with ProxyProcess(proxy_command(settings), tmp_path / "mitmdump.log") as proxy:
            report = simulate(upstream.omaha_url, 1, cycles=1, proxy=proxy.url, timeout=30)
    assert report.machines[0].outcome == "waiting-reboot"
    with Store(db) as store:
        assert store.count() == 4  # check, 13/1, 14/1, 3/1


@pytest.mark.e2e
def test_proxy_process_reports_a_failed_start(tmp_path) -> None:
    with OmahaServer() as busy:  # the port is taken
        argv = proxy_command(ProxySettings(listen=f"127.0.0.1:{busy.port}", db=str(tmp_path / "x.db")))
        with pytest.raises(RuntimeError, match="did not start listening"):
            ProxyProcess(argv, tmp_path / "log").start(timeout=10)
