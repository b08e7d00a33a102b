"""Where the mitmproxy entry script lives, so an installed package can be run with ``-s``::

mitmdump -s "$(omaha-proxy addon-path)"
mitmdump -s "$(python -c 'import omaha_proxy.entry as e; print(e.script_path())')"
"""

from __future__ import annotations

from pathlib import Path


def script_path() -> Path:
    """The absolute path of the entry script (``omaha.py`` next to this module)."""
    return Path(__file__).resolve().with_name("omaha.py")
