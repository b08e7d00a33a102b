"""A local upstream for payload tests: serves files under ``/packages/`` and counts GETs.

Built on the shared :class:`omaha_proxy.servers.http.OmahaServer` (its access hook does the
counting). ``delay`` slows every payload request down so concurrent clients overlap;
``replace`` swaps what a name serves (to corrupt or truncate a payload on purpose).
An optional Omaha handler answers ``POST /v1/update/``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

from omaha_proxy.servers.http import AccessRecord, OmahaHandler, OmahaServer

PREFIX = "/packages/"


class CountingUpstream:
    def __init__(self, files: dict[str, Path], *, handler: OmahaHandler | None = None, delay: float = 0.0):
        self.files = dict(files)
        self.delay = delay
        self.gets: Counter[str] = Counter()
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self.server = OmahaServer(handler, files={PREFIX: self._resolve}, on_access=self._count)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def codebase(self) -> str:
        """The codebase of this upstream's packages (with the trailing slash)."""
        return self.server.url + PREFIX

    def replace(self, name: str, path: Path) -> None:
        self.files[name] = path

    def _resolve(self, name: str) -> Path | None:
        if self.delay:
            time.sleep(self.delay)
        return self.files.get(name)

    def _count(self, record: AccessRecord) -> None:
        if record.method == "GET" and record.path.startswith(PREFIX):
            with self._lock:
                self.gets[record.path[len(PREFIX) :]] += 1
                self.bytes_sent += record.sent

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
