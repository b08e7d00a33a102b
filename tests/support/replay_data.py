"""A recorded update walk built from the protocol samples, for the replay tests.

One Flatcar machine goes from 3975.2.1 to 4081.2.0 the way update_engine 0.4.10 does it:
check -> offer, 13/1, 14/1, 3/1, ping, (reboot) check with previousversion -> noupdate,
steady-state check -> noupdate. Requests are the RECONSTRUCTED update_engine samples with
the version and machine id substituted; answers are the Nebraska-shape samples.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from mitmproxy import http
from mitmproxy.test import tflow, tutils

from omaha_proxy.replay.recording import Recording, RecordingBuilder
from tests.conftest import sample

OLD, NEW = "3975.2.1", "4081.2.0"
MACHINE = "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
_REQ = "flatcar-update_engine-0.4.10__request_"


def request(name: str, *, version: str = NEW, machine: str = MACHINE, previous: str | None = None) -> bytes:
    """A sample request (``01_updatecheck_steady_state``...) at ``version`` for ``machine``."""
    text = sample(f"{_REQ}{name}.RECONSTRUCTED.xml").decode()
    text = text.replace(NEW, version).replace(MACHINE, machine)
    if previous is not None:
        text = text.replace('previousversion=""', f'previousversion="{previous}"')
    return text.encode()


def response(name: str) -> bytes:
    """A Nebraska-shape answer: ``updatecheck_update_ok``, ``event_ack``, ``ping_ack``..."""
    return sample(f"nebraska-shape__{name}.GENERATED.xml")


def update_walk(machine: str = MACHINE) -> list[tuple[bytes, bytes]]:
    """The (request, answer) pairs of one machine's full update, in order."""
    return [
        (
            request("01_updatecheck_steady_state", version=OLD, machine=machine),
            response("updatecheck_update_ok"),
        ),
        (request("06_event_download_started", version=OLD, machine=machine), response("event_ack")),
        (request("07_event_download_finished", version=OLD, machine=machine), response("event_ack")),
        (request("08_event_update_installed", version=OLD, machine=machine), response("event_ack")),
        (request("11_ping_only_waiting_for_reboot", version=OLD, machine=machine), response("ping_ack")),
        (
            request("01_updatecheck_steady_state", machine=machine, previous=OLD),
            response("updatecheck_noupdate"),
        ),
        (request("01_updatecheck_steady_state", machine=machine), response("updatecheck_noupdate")),
    ]


def walk_recording(*machines: str, keep_ids: bool = False) -> Recording:
    """A recording of ``update_walk`` for each machine (one after the other)."""
    builder = RecordingBuilder(source="tests", keep_ids=keep_ids, created="2026-11-27T00:00:00Z")
    for m in machines or (MACHINE,):
        for req, resp in update_walk(m):
            builder.add(req, resp, request_headers=[("Content-Type", "text/xml"), ("Host", "up.example")])
    return builder.recording()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """POST an Omaha body like update_engine (text/xml); returns (status, body), errors included."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/xml"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def omaha_flow(body: bytes, answer: bytes | None = None) -> http.HTTPFlow:
    """A test flow POSTing ``body`` to ``http://up.example/v1/update/`` (answered when ``answer``)."""
    req = tutils.treq(
        method=b"POST",
        host="up.example",
        port=80,
        path=b"/v1/update/",
        content=body,
        headers=http.Headers(content_type="text/xml"),
    )
    resp = tutils.tresp(content=answer, headers=http.Headers(content_type="text/xml")) if answer else False
    return tflow.tflow(req=req, resp=resp)
