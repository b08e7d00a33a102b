"""pytest plugin: an Omaha server replaying a recording, per test (entry point ``omaha_replay``).

Example::

    @pytest.mark.omaha_recording("recordings/full-update.json")
    def test_machine_updates(omaha_server: str) -> None:
        # omaha_server is the SERVER= URL, e.g. http://127.0.0.1:40123/v1/update/
        ...

The marker takes the recording path (relative to the rootdir unless absolute) and optional
keywords ``matchers="appid,kind"``, ``miss="noupdate"|"error"|"forward"`` and ``upstream=URL``.
``--omaha-record-mode`` works like pytest-recording's ``--record-mode``:

- ``none`` (default): replay only; a missing recording fails the test.
- ``once``: record through the upstream (``--omaha-upstream`` or ``upstream=``) when the file
  does not exist yet, else replay.
- ``rewrite``: always record anew through the upstream.

Recording goes through :func:`omaha_proxy.replay.server.recording_server`, a forwarding
Omaha server that scrubs and writes the recording after every exchange.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

RECORD_MODES = ("none", "once", "rewrite")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("omaha-replay", "Omaha recordings (omaha-proxy)")
    group.addoption(
        "--omaha-record-mode",
        choices=RECORD_MODES,
        default="none",
        help="none: replay recordings only (default); once: record missing ones; rewrite: record all anew.",
    )
    group.addoption(
        "--omaha-upstream",
        default=None,
        metavar="URL",
        help="Omaha server to record from (e.g. http://127.0.0.1:8000/v1/update/).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "omaha_recording(path, *, matchers=None, miss=None, upstream=None): "
        "the recording the omaha_server fixture replays (or records, per --omaha-record-mode)",
    )


@pytest.fixture
def omaha_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Start an Omaha server on 127.0.0.1 replaying (or recording) the marked recording.

    Yields the URL to use as update_engine's ``SERVER``. Fails the test when the marker is
    missing, the recording is missing in mode ``none``, or recording needs an upstream.
    """
    from omaha_proxy.replay import recording
    from omaha_proxy.replay.player import DEFAULT_MATCHERS, MissPolicy, parse_miss_policy
    from omaha_proxy.replay.server import recording_server, replay_server

    marker = request.node.get_closest_marker("omaha_recording")
    if marker is None or not marker.args:
        pytest.fail('omaha_server needs @pytest.mark.omaha_recording("path/to/recording.json")')
    path = Path(marker.args[0])
    if not path.is_absolute():
        path = Path(request.config.rootpath) / path
    mode = request.config.getoption("--omaha-record-mode")
    upstream = marker.kwargs.get("upstream") or request.config.getoption("--omaha-upstream")

    if mode == "rewrite" or (mode == "once" and not path.exists()):
        if not upstream:
            pytest.fail(f"recording {path} in mode {mode!r} needs --omaha-upstream URL or upstream=")
        server = recording_server(upstream, path, source=f"pytest {request.node.nodeid}")
    elif not path.exists():
        pytest.fail(
            f"recording {path} does not exist; make it with --omaha-record-mode=once "
            "--omaha-upstream URL (or see recordings/README.md)"
        )
    else:
        miss = marker.kwargs.get("miss")
        server = replay_server(
            recording.load(path),
            matchers=marker.kwargs.get("matchers") or DEFAULT_MATCHERS,
            miss=parse_miss_policy(miss) if miss else MissPolicy.NOUPDATE,
            upstream=upstream,
        )
    with server:
        yield server.omaha_url
