"""``omaha-proxy demo`` runs end to end on 127.0.0.1, by itself, and leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omaha_proxy.cli.run_demo import demo_fleet
from omaha_proxy.store.store import Store
from tests.conftest import REPO

OMAHA_PROXY = str(Path(sys.executable).parent / "omaha-proxy")


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "pytest" not in args:
            found.append(args)
    return found


@pytest.mark.e2e
def test_demo_command_updates_the_fleet_and_prints_the_log(tmp_path) -> None:
    out = tmp_path / "demo-out"
    proc = subprocess.run(
        [OMAHA_PROXY, "demo", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "5 machines: 1 current, 4 updated" in text
    assert f"SQLite log: {out / 'omaha.db'}" in text and "omaha-proxy proxy --web --flows" in text
    with Store(out / "omaha.db") as store:
        states = {row["alias"]: (row["version"], row["state_label"]) for row in store.fleet()}
    assert states["web-1"] == ("4152.2.0", "Complete") and states["edge-1"][0] == "4152.2.0"
    assert (out / "demo.mitm").stat().st_size > 0
    assert processes_mentioning(str(out)) == []


def test_demo_fleet_has_machines_behind_and_one_current() -> None:
    fleet = demo_fleet()
    assert [m.version for m in fleet] == ["4081.2.0", "4081.2.0", "4081.2.0", "3975.2.1", "4152.2.0"]
    assert len(demo_fleet(8)) == 8 and len({m.machine_id for m in demo_fleet(8)}) == 8
