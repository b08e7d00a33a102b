"""go-omaha's ``serve-package``, right for today's clients: update one fleet from local files.

Answers update checks on ``POST /v1/update/`` and serves the files below ``/packages/``
(streaming, with ``Range``). Differences from go-omaha (reference go-omaha.md §4.4, §5):

- listens on 127.0.0.1:8000 by default, not on all interfaces;
- the offer has what update_engine and ue-rs read: postinstall ``sha256`` in base64,
  ``DisablePayloadBackoff="true"``, package ``hash`` (SHA-1, base64) and ``hash_sha256``
  in **hex** (go-omaha writes base64 there, which ue-rs rejects), a codebase with a
  trailing slash built from the request's Host header (``http://HOST/packages/``);
- extension packages (``oem-qemu.gz``...) are listed after the main payload;
- versions are compared as dotted numbers (``4081.2.0`` < ``4152.2.0``): an older client
  gets the offer, an equal or newer one ``noupdate``, and a version that cannot be compared
  gets ``noupdate`` plus a logged warning instead of go-omaha's ``error-internal`` (which
  update_engine turns into error events);
- pings and events are acked; every request is logged in one line.

The files are hashed once at start; editing them later is not noticed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from omaha_proxy.protocol.build import (
    PackageInfo,
    noupdate_response,
    offer_updatecheck,
    package_info_from_file,
)
from omaha_proxy.protocol.decode import encode
from omaha_proxy.protocol.model import AppResponse, Request, Response
from omaha_proxy.protocol.versions import compare_versions, parse_version
from omaha_proxy.servers.http import OmahaServer, current_http, mapping_resolver

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_PACKAGE_NAME = "flatcar_production_update.gz"
PACKAGES_PREFIX = "/packages/"
SERVER_NAME = "omaha-proxy serve-package"


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too). Raises ValueError naming the expected form."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT (e.g. {DEFAULT_LISTEN}), got {text!r}")
    return host, int(port)


def parse_extra_package(text: str) -> tuple[str, Path]:
    """Split ``NAME=PATH`` (e.g. ``oem-qemu.gz=/tmp/oem.gz``); a bare PATH uses its file name.

    Raises ValueError when the name is not a plain file name.
    """
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).name, text
    _check_name(name)
    if not path:
        raise ValueError(f"extra package {text!r} needs a path: NAME=PATH")
    return name, Path(path)


def _check_name(name: str) -> None:
    # go-omaha's AddPackage: a bare file name that does not start with a dot.
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"package name must be a plain file name (no '/', no leading '.'), got {name!r}")


@dataclass(frozen=True, slots=True)
class ServedPackage:
    """A file being served, with the hashes computed at start."""

    info: PackageInfo
    path: Path


class PackageServer:
    """The Omaha handler of serve-package (plug it into an :class:`OmahaServer`)."""

    def __init__(self, version: str, packages: Sequence[ServedPackage]) -> None:
        if not packages:
            raise ValueError("serve-package needs a package file")
        if parse_version(version) is None:
            log.warning("package version %r is not dotted numbers: every client will get noupdate", version)
        names = [p.info.name for p in packages]
        if len(set(names)) != len(names):
            raise ValueError(f"package names must be unique, got {names}")
        self.version = version
        self.packages = tuple(packages)

    def decide(self, client_version: str | None) -> bool:
        """True when a client at ``client_version`` should be offered the package."""
        order = compare_versions(client_version, self.version)
        if order is None:
            log.warning(
                "cannot compare client version %r with served version %r: answering noupdate",
                client_version, self.version,
            )  # fmt: skip
            return False
        return order < 0

    def respond(self, request: Request, host: str) -> Response:
        """Answer ``request``: per app, an offer or ``noupdate``; pings and events acked."""
        response = noupdate_response(request, server=SERVER_NAME)
        offer = offer_updatecheck(
            self.version, f"http://{host}{PACKAGES_PREFIX}", [p.info for p in self.packages]
        )
        manifest = offer.manifests[0]
        main = replace(manifest.packages[0], hash_sha256=self.packages[0].info.sha256_hex)  # type: ignore[index]
        offer = replace(offer, manifests=(replace(manifest, packages=(main, *manifest.packages[1:])),))  # type: ignore[index]
        apps: list[AppResponse] = []
        for app, answer in zip(request.apps, response.apps, strict=True):
            if app.updatecheck is not None and self.decide(app.version):
                answer = replace(answer, updatecheck=offer)
            apps.append(answer)
        return replace(response, apps=tuple(apps))

    def __call__(self, request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        http = current_http()
        response = self.respond(request, http.host)
        return 200, {"Content-Type": "text/xml"}, encode(response)


def load_packages(package_file: str | os.PathLike[str], extra_packages: Sequence[tuple[str, Path]] = (),
                  package_name: str = DEFAULT_PACKAGE_NAME) -> list[ServedPackage]:  # fmt: skip
    """Hash the main payload and the extension packages (once). Raises OSError/ValueError."""
    _check_name(package_name)
    entries = [(package_name, Path(package_file)), *extra_packages]
    served = []
    for name, path in entries:
        info = package_info_from_file(path, name)
        log.info("serving %s (%d bytes, sha256 %s) from %s", name, info.size, info.sha256_b64, path)
        served.append(ServedPackage(info, path))
    return served


def serve_package(
    package_file: str | os.PathLike[str],
    package_version: str,
    *,
    listen_address: str = DEFAULT_LISTEN,
    extra_packages: Sequence[tuple[str, Path]] = (),
    package_name: str = DEFAULT_PACKAGE_NAME,
) -> OmahaServer:
    """Build (not start) the serve-package server: bound, hashed, ready for ``start()``.

    Raises ValueError for a bad address or name, OSError for an unreadable file or a port in use.
    """
    host, port = parse_listen_address(listen_address)
    packages = load_packages(package_file, extra_packages, package_name)
    handler = PackageServer(package_version, packages)
    files = mapping_resolver({p.info.name: p.path for p in packages})
    return OmahaServer(handler, host=host, port=port, files={PACKAGES_PREFIX: files})
