"""Builders for the responses omaha-proxy makes itself, in the shape Nebraska sends.

Every builder returns a new frozen model; rewrites use ``dataclasses.replace`` and never
touch what they were not asked to change.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from omaha_proxy.protocol.model import (
    Ack,
    Action,
    AppRequest,
    AppResponse,
    DayStart,
    Manifest,
    Package,
    Request,
    Response,
    UpdateCheckResponse,
    Url,
)

DEFAULT_SERVER = "omaha-proxy"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackageInfo:
    """What an offer says about one payload file, in the encodings each reader expects.

    ``sha1_b64`` goes to ``package@hash``; ``sha256_b64`` to the postinstall action's
    ``sha256`` (update_engine compares it as a base64 string); ``sha256_hex`` to
    ``package@hash_sha256`` (hex for Nebraska and ue-rs, unlike go-omaha's base64).
    """

    name: str
    size: int
    sha1_b64: str
    sha256_b64: str
    sha256_hex: str


def _info(name: str, size: int, sha1: hashlib._Hash, sha256: hashlib._Hash) -> PackageInfo:
    digest = sha256.digest()
    return PackageInfo(
        name=name,
        size=size,
        sha1_b64=base64.b64encode(sha1.digest()).decode(),
        sha256_b64=base64.b64encode(digest).decode(),
        sha256_hex=digest.hex(),
    )


def package_info_from_bytes(data: bytes, name: str) -> PackageInfo:
    """Hash an in-memory payload. Returns its :class:`PackageInfo`."""
    return _info(name, len(data), hashlib.sha1(data), hashlib.sha256(data))


def package_info_from_file(path: str | Path, name: str | None = None) -> PackageInfo:
    """Hash a payload file in one streaming pass (memory stays flat for multi-GB files).

    ``name`` defaults to the file's base name. Raises OSError when the file cannot be read.
    """
    path = Path(path)
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return _info(name or path.name, size, sha1, sha256)


def _response(apps: Sequence[AppResponse], server: str) -> Response:
    # Nebraska: protocol 3.0, its server name, daystart elapsed_seconds="0" (ignored by clients).
    return Response(protocol="3.0", server=server, daystart=DayStart(elapsed_seconds="0"), apps=tuple(apps))


def _ack_app(app: AppRequest, updatecheck: UpdateCheckResponse | None) -> AppResponse:
    return AppResponse(
        appid=app.appid,  # echoed byte for byte, as Nebraska does
        status="ok",
        ping=Ack() if app.ping is not None else None,
        updatecheck=updatecheck if app.updatecheck is not None else None,
        events=tuple(Ack() for _ in app.events),
    )


def noupdate_updatecheck() -> UpdateCheckResponse:
    """``<updatecheck status="noupdate"><urls></urls></updatecheck>``, Nebraska's exact shape."""
    return UpdateCheckResponse(status="noupdate", urls=())


def noupdate_response(request: Request, *, server: str = DEFAULT_SERVER) -> Response:
    """Answer every app of ``request`` with ``noupdate``, acking its ping and each event.

    This is what update_engine handles best when there is nothing to install: HTTP 200 and
    ``status="noupdate"`` end the check quietly (an ``error-*`` would become error events).
    """
    return _response([_ack_app(app, noupdate_updatecheck()) for app in request.apps], server)


def ack_response(request: Request, *, server: str = DEFAULT_SERVER) -> Response:
    """Acknowledge pings and events (and answer any update check with ``noupdate``)."""
    return noupdate_response(request, server=server)


def offer_manifest(version: str, packages: Sequence[PackageInfo]) -> Manifest:
    """The manifest of an offer: main payload first, then extension packages.

    The main payload carries ``hash`` (SHA-1 base64) and ``required="true"``; extension
    packages (``oem-*.gz``, ``flatcar-*.gz``) also carry hex ``hash_sha256`` for ue-rs and
    ``required="false"``. The postinstall action holds the main payload's base64 SHA-256 and
    ``DisablePayloadBackoff="true"``, which the public server sends and update_engine reads.
    """
    if not packages:
        raise ValueError("an offer needs at least one package (the main payload)")
    main, *extensions = packages
    pkgs = [Package(name=main.name, hash=main.sha1_b64, size=main.size, required="true")]
    pkgs += [
        Package(name=p.name, hash=p.sha1_b64, hash_sha256=p.sha256_hex, size=p.size, required="false")
        for p in extensions
    ]
    action = Action(
        event="postinstall",
        display_version=version,
        sha256=main.sha256_b64,
        disable_payload_backoff="true",
    )
    return Manifest(version=version, packages=tuple(pkgs), actions=(action,))


def with_trailing_slash(codebase: str) -> str:
    """ue-rs joins URLs with Url::join, which drops a last segment without ``/``."""
    return codebase if codebase.endswith("/") else codebase + "/"


def offer_updatecheck(version: str, codebase: str, packages: Sequence[PackageInfo]) -> UpdateCheckResponse:
    return UpdateCheckResponse(
        status="ok",
        urls=(Url(codebase=with_trailing_slash(codebase)),),
        manifests=(offer_manifest(version, packages),),
    )


def offer_response(
    request: Request,
    *,
    version: str,
    codebase: str,
    packages: Sequence[PackageInfo],
    server: str = DEFAULT_SERVER,
) -> Response:
    """Offer ``version`` to every app of ``request`` that asked for an update check.

    Pings and events are acked as Nebraska does. Raises ValueError without packages.
    """
    uc = offer_updatecheck(version, codebase, packages)
    return _response([_ack_app(app, uc) for app in request.apps], server)


def replace_updatecheck(
    response: Response, updatecheck: UpdateCheckResponse, appid: str | None = None
) -> Response:
    """Return ``response`` with the updatecheck of each app (or of ``appid`` only) replaced.

    Apps without an updatecheck are left alone; everything else is kept.
    """
    apps = tuple(
        replace(app, updatecheck=updatecheck)
        if app.updatecheck is not None and (appid is None or app.appid == appid)
        else app
        for app in response.apps
    )
    return replace(response, apps=apps)


def as_noupdate(uc: UpdateCheckResponse | None) -> UpdateCheckResponse:
    """``uc`` turned into ``noupdate``: its URLs, manifests and ``info`` go; ``PollInterval``,
    unknown attributes and elements stay. Nebraska's shape: an empty ``<urls></urls>``."""
    if uc is None:
        return noupdate_updatecheck()
    return replace(uc, status="noupdate", urls=(), manifests=(), info=None)


def with_noupdate(response: Response, appid: str | None = None) -> Response:
    """Turn every updatecheck (or ``appid``'s) into ``noupdate`` (:func:`as_noupdate`),
    keeping the rest. App status is left as sent (update_engine does not read it)."""
    apps = tuple(
        replace(app, updatecheck=as_noupdate(app.updatecheck))
        if app.updatecheck is not None and (appid is None or app.appid == appid)
        else app
        for app in response.apps
    )
    return replace(response, apps=apps)


def with_codebase(response: Response, fn: Callable[[str], str]) -> Response:
    """Rewrite every ``url@codebase`` through ``fn``; nothing else changes."""
    apps = []
    for app in response.apps:
        uc = app.updatecheck
        if uc is not None and uc.urls:
            urls = tuple(
                replace(u, codebase=fn(u.codebase)) if u.codebase is not None else u for u in uc.urls
            )
            app = replace(app, updatecheck=replace(uc, urls=urls))
        apps.append(app)
    return replace(response, apps=tuple(apps))


def retarget_offer(offer: Response, request: Request) -> Response:
    """Re-address a recorded offer to ``request``: each app gets the recorded updatecheck.

    URLs, packages, extension packages and hashes stay exactly as recorded; only the apps
    (appid echo, ping/event acks) follow the new request. Used to replay a seen offer.
    """
    source = next((a.updatecheck for a in offer.apps if a.updatecheck is not None), None)
    if source is None:
        raise ValueError("the recorded response carries no updatecheck")
    return replace(offer, apps=tuple(_ack_app(app, source) for app in request.apps))
