"""Serve an offline bundle to any update_engine, the way the upstream would have.

Per app of each request: a machine of the bundle's app (and board, when known) running an
older version gets the upstream's offer exactly as recorded (same manifest, hashes,
extension packages and actions), its codebase rewritten to this server's ``/packages/``;
every other update check gets ``noupdate`` (equal or newer version, another app or board, or
a version that cannot be compared: logged). Pings and events are acked, Nebraska-style.

With a log (``Store``), every exchange is written like the proxy writes it, with action
``served``. sqlite3 connections are thread-bound, so one writer thread owns the Store.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Self

from omaha_proxy.payloads.bundle import Bundle, same_appid
from omaha_proxy.protocol.build import noupdate_response, replace_updatecheck, with_codebase
from omaha_proxy.protocol.decode import encode
from omaha_proxy.protocol.model import AppRequest, AppResponse, Request, Response
from omaha_proxy.protocol.versions import compare_versions
from omaha_proxy.servers.http import OmahaServer, current_http, mapping_resolver

log = logging.getLogger(__name__)

PACKAGES_PREFIX = "/packages/"


def bundle_answer(bundle: Bundle, request: Request, host: str) -> tuple[Response, list[str]]:
    """The answer to ``request`` from ``bundle``, codebase ``http://<host>/packages/``.

    Returns the response and, per app that checked, why it got what it got.
    """
    server = bundle.offer.server or "omaha-proxy"
    response = noupdate_response(request, server=server)
    only_offer = Response(apps=(AppResponse(appid=bundle.appid, updatecheck=bundle.updatecheck),))
    offer = with_codebase(only_offer, lambda _old: f"http://{host}{PACKAGES_PREFIX}").apps[0].updatecheck
    assert offer is not None
    reasons = []
    for app in request.apps:
        if app.updatecheck is None:
            continue
        give, why = _decide(bundle, app)
        reasons.append(why)
        if give:
            response = replace_updatecheck(response, offer, appid=app.appid)
    return response, reasons


def _decide(bundle: Bundle, app: AppRequest) -> tuple[bool, str]:
    if bundle.appid is not None and not same_appid(app.appid, bundle.appid):
        return False, f"noupdate: app {app.appid} is not the bundle's {bundle.appid}"
    if bundle.board and app.board and app.board != bundle.board:
        return False, f"noupdate: board {app.board}, bundle is for {bundle.board}"
    order = compare_versions(app.version, bundle.version)
    if order is None:
        log.warning(
            "bundle: cannot compare version %r with %s: answering noupdate", app.version, bundle.version
        )
        return False, f"noupdate: version {app.version!r} not comparable with {bundle.version}"
    if order >= 0:
        return False, f"noupdate: {app.version} is not older than {bundle.version}"
    return True, f"offer {bundle.version} to {app.version}"


class BundleServer:
    """An :class:`OmahaServer` answering from a bundle and serving its packages.

    ``db`` names a log to write every exchange to (created if needed).
    """

    def __init__(
        self, bundle: Bundle, *, host: str = "127.0.0.1", port: int = 0, db: str | None = None
    ) -> None:
        self.bundle = bundle
        files = mapping_resolver({f.name: f.path for f in bundle.files})
        self.server = OmahaServer(self._handle, host=host, port=port, files={PACKAGES_PREFIX: files})
        self._writer: ThreadPoolExecutor | None = None
        self._db = db
        if db:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="omaha-bundle-log")
            self._writer.submit(self._open_store, db).result()

    def _open_store(self, db: str) -> None:
        from omaha_proxy.store.store import Store

        self._store = Store(db)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def omaha_url(self) -> str:
        """The ``SERVER`` value for update_engine."""
        return self.server.omaha_url

    def _handle(self, request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        started = time.monotonic()
        http = current_http()
        response, reasons = bundle_answer(self.bundle, request, http.host)
        body = encode(response)
        reason = "; ".join(reasons) or "acked"
        log.info("bundle: %s %s", client_ip, reason)
        if self._writer is not None:
            record = {
                "flow_id": f"bundle-{uuid.uuid4()}", "ts": time.time(), "request_xml": raw,
                "response_xml": body, "client_ip": client_ip, "http_status": 200,
                "duration_ms": (time.monotonic() - started) * 1000, "action": "served",
                "reason": f"bundle {self.bundle.version}: {reason}", "path": http.path,
                "request": request, "response": response,
            }  # fmt: skip
            self._writer.submit(self._log, record)
        return 200, {"Content-Type": "text/xml"}, body

    def _log(self, record: dict[str, object]) -> None:
        try:
            self._store.record_exchange(**record)  # type: ignore[arg-type]
        except Exception:  # a broken log is loud, but the machines keep being answered
            log.exception("bundle: cannot write the exchange to the log %s", self._db)

    def start(self) -> Self:
        self.server.start()
        return self

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        """Stop serving, then flush and close the log."""
        self.server.stop()
        if self._writer is not None:
            self._writer.submit(self._store.close).result()
            self._writer.shutdown(wait=True)
            self._writer = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
