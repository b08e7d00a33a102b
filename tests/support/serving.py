"""A serve-package server on a free port with generated payloads, for tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omaha_proxy.servers.http import OmahaServer
from omaha_proxy.servers.serve_package import serve_package

SERVED_VERSION = "4152.2.0"


@contextmanager
def package_server(
    directory: Path, *, version: str = SERVED_VERSION, size: int = 256 * 1024, oem: bool = True
) -> Iterator[OmahaServer]:
    """Start serve-package for a random ``size``-byte payload (+ ``oem-qemu.gz``) in ``directory``."""
    payload = directory / "payload.gz"
    payload.write_bytes(os.urandom(size))
    extras = []
    if oem:
        (directory / "oem.gz").write_bytes(os.urandom(4096))
        extras.append(("oem-qemu.gz", directory / "oem.gz"))
    server = serve_package(payload, version, listen_address="127.0.0.1:0", extra_packages=extras)
    with server:
        yield server
