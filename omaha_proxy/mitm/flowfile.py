"""Build a recording from mitmproxy flow files (``mitmdump -w flows.mitm``).

The only place that reads ``.mitm`` files (``mitmproxy.io``), so the library stays free of
mitmproxy. Like every recording builder it keeps what the upstream said: the upstream's
original body where the proxy rewrote it, and no flows the proxy answered itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from mitmproxy import exceptions, http, io

from omaha_proxy.mitm import common
from omaha_proxy.protocol.errors import RecordingError
from omaha_proxy.replay.recording import Recording, RecordingBuilder


def add_flows(builder: RecordingBuilder, flows: list[http.HTTPFlow]) -> int:
    """Add the Omaha flows that the upstream answered, in order; returns how many."""
    added = 0
    for flow in flows:
        if flow.response is None or common.is_answered(flow) or not common.is_omaha_request(flow):
            continue
        builder.add(
            common.request_body(flow),
            common.upstream_response(flow) or common.response_body(flow),
            status=flow.response.status_code,
            method=flow.request.method,
            path=flow.request.path,
            request_headers=list(flow.request.headers.items(multi=True)),
            response_headers=list(flow.response.headers.items(multi=True)),
        )
        added += 1
    return added


def recording_from_flows(path: str | os.PathLike[str], *, keep_ids: bool = False) -> Recording:
    """A recording of the Omaha exchanges in a flow file. Raises :class:`RecordingError`
    when the file cannot be read."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            flows = [f for f in io.FlowReader(fh).stream() if isinstance(f, http.HTTPFlow)]
    except (OSError, exceptions.FlowReadException) as e:
        raise RecordingError(f"cannot read flows from {p}: {e}") from e
    builder = RecordingBuilder(source=f"flow file {p.name}", keep_ids=keep_ids)
    add_flows(builder, sorted(flows, key=lambda f: f.request.timestamp_start))
    return builder.recording()
