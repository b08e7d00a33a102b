"""The recordings shipped in recordings/: scrubbed, loadable, and each replays what it recorded."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from types import ModuleType

import pytest

from omaha_proxy.client.simulator import simulate
from omaha_proxy.replay import recording
from omaha_proxy.replay.player import MissPolicy
from omaha_proxy.replay.server import replay_server
from tests.conftest import REPO

RECORDINGS = REPO / "recordings"


def _make_recordings() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_recordings", RECORDINGS / "make_recordings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MAKER = _make_recordings()
SCENARIOS = {s.name: s for s in MAKER.SCENARIOS}
# What the simulated machines ended as when the recording was made (make_recordings.py prints it).
EXPECTED = {
    "full-update": ["updated"],
    "steady-noupdate": ["current"],
    "failed-update-hash-mismatch": ["failed"],
    "upstream-refusal": ["failed"],
    "extension-packages": ["updated"],
    "fleet": ["updated", "updated", "current", "updated"],
}


def test_every_scenario_is_bundled_and_documented() -> None:
    readme = (RECORDINGS / "README.md").read_text()
    assert set(SCENARIOS) == set(EXPECTED)
    for name in SCENARIOS:
        assert (RECORDINGS / f"{name}.json").is_file()
        assert f"`{name}.json`" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_recording_is_scrubbed(name: str) -> None:
    path = RECORDINGS / f"{name}.json"
    rec = recording.load(path)
    assert all(re.fullmatch(r"machine-\d+", m or "") for m in rec.machines)
    # No machine id (32 hex) and no real boot id (braced GUID) is left anywhere.
    text = path.read_text()
    assert not re.search(r"\b[0-9a-f]{32}\b", text.replace(_hashes(rec), ""))
    assert not re.search(
        r"\{[0-9a-f]{8}-[0-9a-f]{4}-", text.replace("{e96281a6-d1af-4bde-9a0a-97b76e56dc57}", "")
    )


def _hashes(rec: recording.Recording) -> str:
    return "".join(p.sha256 or "" for p in rec.payloads)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_recording_replays_what_it_recorded(name: str) -> None:
    scenario = SCENARIOS[name]
    with replay_server(recording.load(RECORDINGS / f"{name}.json"), miss=MissPolicy.ERROR) as server:
        report = simulate(
            server.omaha_url, scenario.machines, cycles=scenario.cycles, concurrency=1, timeout=30
        )
    assert [m.outcome for m in report.machines] == EXPECTED[name]
    statuses = {step.status for m in report.machines for step in m.steps}
    assert statuses == {200}, "every request, payloads included, answered by the replayer"


def test_hash_mismatch_replays_error_10_with_the_test_url_flag() -> None:
    scenario = SCENARIOS["failed-update-hash-mismatch"]
    with replay_server(recording.load(RECORDINGS / "failed-update-hash-mismatch.json")) as server:
        report = simulate(server.omaha_url, scenario.machines, cycles=1, timeout=30)
    assert report.machines[0].error_codes == (268435466,)


def test_payload_files_match_their_recorded_hashes() -> None:
    for path in RECORDINGS.glob("*.json"):
        rec = recording.load(path)
        for ref in rec.payloads:
            data = (RECORDINGS / ref.path).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (ref.sha256, ref.size), ref.name
