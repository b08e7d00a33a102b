"""Find an offer to bundle in a recording (the log has its own finder in :mod:`~omaha_proxy.payloads.bundle`)."""

from __future__ import annotations

import os

from omaha_proxy.payloads.bundle import FoundOffer, offer_from_exchanges
from omaha_proxy.protocol.errors import BundleError, RecordingError
from omaha_proxy.replay import recording


def offer_from_recording(
    path: str | os.PathLike[str], version: str, *, appid: str | None = None, board: str | None = None,
    track: str | None = None,
) -> FoundOffer:  # fmt: skip
    """The last recorded offer of ``version`` (for that appid/board/track when given).

    Raises BundleError when the recording cannot be loaded or holds no such offer.
    """
    try:
        rec = recording.load(path)
    except RecordingError as e:
        raise BundleError(str(e)) from e
    triples = ((e.request.body, e.response.body, e.response.status) for e in rec.exchanges)
    return offer_from_exchanges(
        triples, version, origin=f"recording {path}", appid=appid, board=board, track=track
    )
