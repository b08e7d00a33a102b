"""The ``Omaha`` contentview: a decoded summary above the pretty XML, for mitmweb, mitmproxy
console and ``mitmdump --set flow_detail=3``.

It wins over the XML view (priority 2) for any body that sniffs as an Omaha request or
response, and stays out of the way (-1) otherwise. ``render_priority`` never raises; a body
that sniffs as Omaha but does not parse is shown with its error above the raw text.
Importing this module registers the view.
"""

from __future__ import annotations

from collections.abc import Iterator

from mitmproxy import contentviews
from mitmproxy.contentviews import Metadata

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.protocol.decode import encode, parse, sniff
from omaha_proxy.protocol.describe import describe_event
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import AppRequest, AppResponse, Request, Response
from omaha_proxy.store.states import is_flatcar


def _field(label: str, value: object) -> str:
    return f"{label:<12}{value}"


def _attrs(**values: str | None) -> str:
    return "  ".join(f"{k}={v}" for k, v in values.items() if v not in (None, ""))


def _request_lines(req: Request) -> Iterator[str]:
    yield _field("Omaha", _attrs(request=req.version, installsource=req.installsource, protocol=req.protocol))
    if req.os is not None:
        yield _field("os", _attrs(platform=req.os.platform, sp=req.os.sp, arch=req.os.arch))
    for app in req.apps:
        yield from _app_request_lines(app)


def _app_request_lines(app: AppRequest) -> Iterator[str]:
    name = " (Flatcar)" if is_flatcar(app.appid) else ""
    yield _field("app", f"{app.appid}{name}")
    yield _field("machine", _attrs(id=app.machineid, alias=app.machinealias, boot=app.bootid))
    yield _field(
        "version",
        _attrs(version=app.version, track=app.track, board=app.board, oem=app.oem, aleph=app.alephversion),
    )
    asks = [n for n, present in (("ping", app.ping), ("updatecheck", app.updatecheck)) if present is not None]
    asks += ["event"] * bool(app.events)
    yield _field("asks", " + ".join(asks) or "nothing")
    for event in app.events:
        yield _field("event", describe_event(event))


def _response_lines(resp: Response) -> Iterator[str]:
    yield _field("Omaha", _attrs(response=resp.server, protocol=resp.protocol))
    for app in resp.apps:
        yield from _app_response_lines(app)
    if any(app.updatecheck is not None for app in resp.apps):
        yield _field("client", f"update_engine 0.4.10 would see: {update_engine_verdict(resp)}")


def _app_response_lines(app: AppResponse) -> Iterator[str]:
    yield _field("app", _attrs(appid=app.appid, status=app.status))
    acks = [n for n, present in (("ping", app.ping), ("updatecheck", app.updatecheck)) if present is not None]
    if app.events:
        acks.append(f"{len(app.events)} event(s)")
    yield _field("answers", " + ".join(acks) or "nothing")
    uc = app.updatecheck
    if uc is None:
        return
    yield _field("updatecheck", _attrs(status=uc.status, PollInterval=uc.poll_interval))
    for url in uc.urls or ():
        yield _field("url", url.codebase)
    for manifest in uc.manifests:
        yield _field("manifest", _attrs(version=manifest.version, is_floor=manifest.is_floor))
        for package in manifest.packages or ():
            yield _field(
                "package",
                _attrs(
                    name=package.name,
                    size=None if package.size is None else str(package.size),
                    required=package.required,
                    sha1=package.hash,
                    sha256=package.hash_sha256,
                ),
            )
        post = manifest.postinstall
        if post is not None:
            yield _field(
                "postinstall",
                _attrs(sha256=post.sha256, DisablePayloadBackoff=post.disable_payload_backoff),
            )


def summary_lines(doc: Request | Response) -> list[str]:
    """The readable decoded summary of one document, one fact per line."""
    return list(_request_lines(doc) if isinstance(doc, Request) else _response_lines(doc))


class OmahaContentview(contentviews.Contentview):
    """Decoded Omaha: who asked what, what was offered, events with error codes named."""

    name = "Omaha"
    syntax_highlight = "xml"

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        try:
            doc = parse(data)
        except CodecError as e:
            kind = sniff(data) or "document"
            text = data.decode("utf-8", "replace")
            return f"Omaha {kind} that does not decode: {e}\n\n{text}"
        return "\n".join(summary_lines(doc)) + "\n\n" + encode(doc, indent=True).decode("utf-8")

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        try:
            return 2 if data and sniff(data) is not None else -1
        except Exception:
            return -1


contentviews.add(OmahaContentview())
