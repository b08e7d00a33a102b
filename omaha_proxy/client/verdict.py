"""What update_engine 0.4.10 would make of a response (omaha_request_action.cc ParseResponse).

Used everywhere a response is produced or rewritten, to prove update_engine accepts it as
meant. The rules, in update_engine's order (reference §1.6):

1. non-2xx HTTP -> 2000 + status; empty body -> 30; not well-formed -> 31.
2. the first ``/response/app/updatecheck`` (app@appid and app@status are not read);
   missing -> 34; ``status`` missing -> 34; ``noupdate`` -> no update; not ``ok`` -> 34.
3. ``manifest`` (the first) must exist -> else 34; its version is for display only.
4. ``urls/url``: at least one, each with a non-empty codebase -> else 34.
5. the first ``package``: non-empty name, base-10 ``size`` > 0 -> else 34.
   ``hash`` and ``required`` are ignored.
6. the first ``action event="postinstall"`` with a non-empty ``sha256`` -> else 34.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lxml import etree

from omaha_proxy.protocol.codes import HTTP_RESPONSE_BASE, ErrorCode
from omaha_proxy.protocol.decode import parse_response
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import Response

VerdictKind = Literal["noupdate", "update", "error"]


@dataclass(frozen=True)
class Verdict:
    """The client's view: no update, update to ``version`` from ``urls``, or error N."""

    kind: VerdictKind
    reason: str = ""
    error_code: int | None = None
    version: str | None = None
    urls: tuple[str, ...] = ()
    size: int | None = None
    sha256_b64: str | None = None
    disable_payload_backoff: bool = False
    is_delta_payload: bool = False
    max_failure_count_per_url: int | None = None
    poll_interval: int | None = None

    def __str__(self) -> str:
        if self.kind == "update":
            return f"update to {self.version} from {self.urls[0]}"
        if self.kind == "error":
            return f"error {self.error_code}: {self.reason}"
        return "no update"


def _error(code: ErrorCode, reason: str) -> Verdict:
    return Verdict(kind="error", error_code=int(code), reason=reason)


def _invalid(reason: str) -> Verdict:
    return _error(ErrorCode.OMAHA_RESPONSE_INVALID, reason)


def _uint(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


def update_engine_verdict(data: bytes | Response, *, http_status: int = 200) -> Verdict:
    """Judge a response body (or a decoded :class:`Response`) as update_engine would.

    Returns a :class:`Verdict`; never raises for bad input (that is an ``error`` verdict).
    """
    if not 200 <= http_status < 300:
        return Verdict(
            kind="error",
            error_code=HTTP_RESPONSE_BASE + http_status,
            reason=f"HTTP {http_status}",
        )
    if isinstance(data, Response):
        return _judge(data)
    if not data:
        return _error(ErrorCode.OMAHA_REQUEST_EMPTY_RESPONSE, "empty body")
    try:
        response = parse_response(data, max_size=max(len(data), 1))
    except CodecError as e:
        return _judge_unparsed(data, e)
    return _judge(response)


def _judge_unparsed(data: bytes, error: CodecError) -> Verdict:
    # Tell libxml2's "not well-formed" (31) from "well-formed but not what we expect" (34).
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return _error(ErrorCode.OMAHA_REQUEST_XML_PARSE_ERROR, str(error))
    if root.tag != "response":
        return _invalid(f"no /response/app/updatecheck: root is <{root.tag}>")
    return _invalid(str(error))


def _judge(response: Response) -> Verdict:
    uc = next((app.updatecheck for app in response.apps if app.updatecheck is not None), None)
    if uc is None:
        return _invalid("no /response/app/updatecheck")
    poll = _uint(uc.poll_interval)
    if uc.status is None:
        return _invalid("updatecheck has no status")
    if uc.status == "noupdate":
        return Verdict(kind="noupdate", reason="noupdate", poll_interval=poll)
    if uc.status != "ok":
        return _invalid(f"updatecheck status {uc.status!r}")
    manifest = uc.manifest
    if manifest is None:
        return _invalid("updatecheck ok without manifest")
    codebases = [u.codebase for u in uc.urls or ()]
    if not codebases:
        return _invalid("no urls/url")
    if any(not c for c in codebases):
        return _invalid("a url has an empty codebase")
    package = (manifest.packages or (None,))[0]
    if package is None:
        return _invalid("manifest has no package")
    if not package.name:
        return _invalid("first package has no name")
    if package.size is None or package.size <= 0:
        return _invalid(f"first package size {package.size!r} is not > 0")
    action = manifest.postinstall
    if action is None:
        return _invalid("no postinstall action")
    if not action.sha256:
        return _invalid("postinstall action has no sha256")
    # update_engine appends '/' to a codebase without one (ConcatUrlSlashTest).
    urls = tuple((c if c.endswith("/") else c + "/") + package.name for c in codebases if c)
    return Verdict(
        kind="update",
        reason="ok",
        version=manifest.version,
        urls=urls,
        size=package.size,
        sha256_b64=action.sha256,
        disable_payload_backoff=action.disable_payload_backoff == "true",
        is_delta_payload=action.is_delta_payload == "true",
        max_failure_count_per_url=_uint(action.max_failure_count_per_url),
        poll_interval=poll,
    )
