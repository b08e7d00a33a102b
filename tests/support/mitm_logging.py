"""Guard against mitmproxy log handlers left behind by a ``taddons.context`` made outside a
test (e.g. at collection time).

mitmproxy's handlers ignore records from tests other than the one that created them, but a
handler created while no test runs accepts every record and forwards it to an event loop
that is closed by then: any later ``log.warning`` raises ``RuntimeError: Event loop is
closed``. Modules whose code under test logs warnings use :func:`no_stale_mitmproxy_handlers`
(``from tests.support.mitm_logging import no_stale_mitmproxy_handlers  # noqa: F401``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


def drop_stale_mitmproxy_handlers() -> None:
    """Remove root-logger handlers whose mitmproxy master's event loop is closed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        loop = getattr(getattr(handler, "master", None), "event_loop", None)
        if loop is not None and loop.is_closed():
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def no_stale_mitmproxy_handlers() -> Iterator[None]:
    drop_stale_mitmproxy_handlers()
    yield
