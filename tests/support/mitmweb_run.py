"""Run a real ``mitmweb -s addons/omaha.py`` headless on 127.0.0.1 and talk to its REST API."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tests.support.mitmdump_run import Mitmdump, addon_args, supervise

REPO = Path(__file__).resolve().parents[2]
MITMWEB = Path(sys.executable).parent / "mitmweb"
PASSWORD = "omaha-test"
_XSRF = "omaha-xsrf"


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (mitmweb cannot report a web_port of 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mitmweb(Mitmdump):
    """A running mitmweb: a :class:`Mitmdump` (proxy port, output) plus its web port."""

    web_port: int = 0
    listening: ClassVar[re.Pattern[str]] = re.compile(r"(?<!Web server) listening at 127\.0\.0\.1:(\d+)")

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        """Call the web API (Bearer auth, XSRF cookie + header); returns the decoded JSON body."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {PASSWORD}")
        req.add_header("Cookie", f"_mitmproxy_xsrf={_XSRF}")
        req.add_header("X-XSRFToken", _XSRF)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None


@contextlib.contextmanager
def run_mitmweb(*args: str, startup_timeout: float = 20.0) -> Iterator[Mitmweb]:
    """Start mitmweb with the omaha addons and ``args``; stop it with SIGINT on exit.

    Like :func:`run_mitmdump`, it runs in a temporary directory and logs there unless
    ``args`` set ``omaha_db``.
    """
    web_port = free_port()
    scratch = tempfile.TemporaryDirectory(prefix="omaha-mitmweb-")
    cmd = [str(MITMWEB), "--listen-host", "127.0.0.1", "-p", "0", *addon_args(args, scratch.name)]
    cmd += ["--set", "web_open_browser=false", "--set", "web_host=127.0.0.1", "--set", f"web_port={web_port}"]
    cmd += ["--set", f"web_password={PASSWORD}", *args]
    proc = subprocess.Popen(
        cmd, cwd=scratch.name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    web = Mitmweb(proc, web_port=web_port)
    with scratch, supervise(web, startup_timeout, lambda w: "Web server listening" in w.output) as running:
        yield running
