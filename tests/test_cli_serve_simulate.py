"""``omaha-proxy serve-package`` and ``omaha-proxy simulate`` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from omaha_proxy.cli import main
from tests.conftest import REPO
from tests.support.serving import SERVED_VERSION, package_server

OMAHA_PROXY = str(Path(sys.executable).parent / "omaha-proxy")


def test_simulate_prints_a_table_with_one_row_per_machine(tmp_path, capsys) -> None:
    with package_server(tmp_path) as server:
        code = main(["simulate", server.omaha_url, "--machines", "3", "--cycles", "3"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["MACHINE", "ALIAS", "FROM", "TO", "OUTCOME", "REQS", "ERRORS"]
    assert [line.split()[1:5] for line in lines[2:5]] == [
        [f"sim-00{i}", "4081.2.0", SERVED_VERSION, "updated"] for i in (1, 2, 3)
    ]
    assert lines[-1].startswith("3 machines: 3 updated; 24 requests")


def test_simulate_json_report(tmp_path, capsys) -> None:
    with package_server(tmp_path) as server:
        code = main(["simulate", server.omaha_url, "--version", SERVED_VERSION, "--cycles", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (
        code == 0
        and data["summary"] == {"current": 1}
        and data["machines"][0]["steps"][0]["outcome"] == "noupdate"
    )


def test_simulate_alias_prefix_names_the_machines(tmp_path, capsys) -> None:
    with package_server(tmp_path) as server:
        main(
            [
                "simulate",
                server.omaha_url,
                "--machines",
                "2",
                "--cycles",
                "1",
                "--alias-prefix",
                "canary-",
                "--json",
            ]
        )
    assert [m["alias"] for m in json.loads(capsys.readouterr().out)["machines"]] == [
        "canary-001",
        "canary-002",
    ]


def test_simulate_refuses_bad_numbers(capsys) -> None:
    assert main(["simulate", "http://127.0.0.1:1/v1/update/", "--concurrency", "0"]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_serve_package_command_serves_until_interrupted(tmp_path) -> None:
    payload = tmp_path / "update.gz"
    payload.write_bytes(os.urandom(50_000))
    (tmp_path / "oem.gz").write_bytes(b"oem")
    proc = subprocess.Popen(
        [OMAHA_PROXY, "serve-package", "--package-file", str(payload),
         "--package-version", "4152.2.0", "--listen-address", "127.0.0.1:0",
         "--extra-package", f"oem-qemu.gz={tmp_path / 'oem.gz'}"],
        stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        url = None
        for _ in range(20):
            line = proc.stderr.readline()
            if m := re.search(r"SERVER=(\S+)", line):
                url = m.group(1)
                break
        assert url and url.endswith("/v1/update/")
        report = main_simulate(url)
        assert report["summary"] == {"updated": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    log = proc.stderr.read()
    assert re.search(r'"GET /packages/flatcar_production_update.gz" 200 50000', log)


def main_simulate(url: str) -> dict:
    out = subprocess.run(
        [OMAHA_PROXY, "simulate", url, "--cycles", "3", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return json.loads(out.stdout)


def test_serve_package_reports_a_missing_file(tmp_path, capsys) -> None:
    code = main(["serve-package", "--package-file", str(tmp_path / "nope"), "--package-version", "1.0",
                 "--listen-address", "127.0.0.1:0"])  # fmt: skip
    assert code == 1 and "No such file" in capsys.readouterr().err


def test_serve_package_rejects_a_bad_extra_package_name(tmp_path, capsys) -> None:
    try:
        main(["serve-package", "--package-file", "x", "--package-version", "1", "--extra-package", "../x=y"])
    except SystemExit as e:
        assert e.code == 2
    assert "plain file name" in capsys.readouterr().err
