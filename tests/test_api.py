"""The public API: every name in ``omaha_proxy.__all__`` resolves, and the codec stays light."""

from __future__ import annotations

import subprocess
import sys

import omaha_proxy


def test_every_public_name_resolves() -> None:
    for name in omaha_proxy.__all__:
        assert getattr(omaha_proxy, name) is not None, name


def test_importing_the_package_does_not_load_sqlite_or_mitmproxy() -> None:
    code = (
        "import sys, omaha_proxy; print(sorted(m for m in ('sqlite_utils', 'mitmproxy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
