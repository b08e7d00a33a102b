"""One-line summaries of whole Omaha exchanges (mitmweb flow comments, ``omaha-proxy log``),
and the names the log stores for event codes.

Examples::

    updatecheck 4081.2.0 stable → ok 4152.2.0
    event 4081.2.0 stable 3/0 268435466 = PayloadHashMismatch (10) + non-production-server → ack
    updatecheck 4081.2.0 stable → noupdate [blocked: pinned to 4081]
"""

from __future__ import annotations

from omaha_proxy.protocol.codes import EventResult, EventType
from omaha_proxy.protocol.describe import describe_request, describe_response
from omaha_proxy.protocol.model import Request, Response


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def event_type_name(value: int) -> str:
    """``UpdateDownloadStarted`` for 13; ``type 77`` for codes without a name."""
    member = EventType.lookup(value)
    return _camel(member.name) if isinstance(member, EventType) else f"type {value}"


def event_result_name(value: int) -> str:
    """``SuccessReboot`` for 2; ``result 77`` for codes without a name."""
    member = EventResult.lookup(value)
    return _camel(member.name) if isinstance(member, EventResult) else f"result {value}"


def describe_exchange(
    request: Request | None,
    response: Response | None,
    *,
    action: str = "forwarded",
    reason: str | None = None,
    error: str | None = None,
    http_status: int | None = None,
) -> str:
    """The one-line summary of an exchange: what was asked → what was answered, then the
    proxy's action (unless it just forwarded) and the first error. Never raises."""
    left = "unparsed request" if request is None else describe_request(request)
    if response is not None:
        right = describe_response(response)
    elif http_status is not None:
        right = f"HTTP {http_status}"
    else:
        right = "no response"
    if http_status is not None and http_status != 200 and response is not None:
        right += f" (HTTP {http_status})"
    text = f"{left} → {right}"
    if action != "forwarded":
        text += f" [{action}: {reason}]" if reason else f" [{action}]"
    if error:
        text += f" ! {error.splitlines()[0][:100]}"
    return text
