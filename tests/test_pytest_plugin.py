"""The pytest plugin, exercised by running pytest inside pytest."""

from __future__ import annotations

from pathlib import Path

import pytest

from omaha_proxy.replay import recording
from omaha_proxy.replay.server import replay_server
from tests.conftest import REPO
from tests.support.replay_data import update_walk, walk_recording

pytest_plugins = ["pytester"]

# The inner tests post the walk's requests; the bodies are handed over as files.
INNER = """
import urllib.request
from pathlib import Path

import pytest

def post(url, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/xml"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()

@pytest.mark.omaha_recording("recordings/walk.json")
def test_walk(omaha_server):
    assert omaha_server.startswith("http://127.0.0.1:") and omaha_server.endswith("/v1/update/")
    for i in range(7):
        body = post(omaha_server, Path(f"req{i}.xml").read_bytes())
        assert body == Path(f"resp{i}.xml").read_bytes(), i
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_inner=INNER)
    for i, (req, resp) in enumerate(update_walk()):
        (pytester.path / f"req{i}.xml").write_bytes(req)
        (pytester.path / f"resp{i}.xml").write_bytes(resp)
    return pytester


def test_fixture_replays_the_marked_recording(project: pytest.Pytester) -> None:
    recording.dump(walk_recording(), project.path / "recordings" / "walk.json")
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_missing_recording_fails_in_mode_none(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*recording*walk.json does not exist*--omaha-record-mode=once*"])


def test_mode_once_records_through_the_upstream_then_replays(project: pytest.Pytester) -> None:
    target = project.path / "recordings" / "walk.json"
    with replay_server(walk_recording()) as upstream:
        args = ("--omaha-record-mode=once", f"--omaha-upstream={upstream.omaha_url}")
        project.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert len(recording.load(target).exchanges) == 7
    # Upstream gone: the second run replays the file it made.
    project.runpytest_subprocess("--omaha-record-mode=once").assert_outcomes(passed=1)


def test_mode_rewrite_needs_an_upstream(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--omaha-record-mode=rewrite")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*needs --omaha-upstream URL or upstream=*"])


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.omaha_recording(path*"])


def test_record_mode_option_is_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--omaha-record-mode*"])


def test_recordings_dir_is_relative_to_rootdir(project: pytest.Pytester, tmp_path: Path) -> None:
    sub = project.path / "sub"
    sub.mkdir()
    (project.path / "test_inner.py").rename(sub / "test_inner.py")
    recording.dump(walk_recording(), project.path / "recordings" / "walk.json")
    project.runpytest_subprocess().assert_outcomes(passed=1)


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    """The example test in the README's replay section, run as written against the bundled recording."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("<!-- section:replay -->") : readme.index("<!-- /section:replay -->")]
    example = section[section.index("### In pytest") :].split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_example=example)
    (pytester.path / "recordings").symlink_to(REPO / "recordings")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
