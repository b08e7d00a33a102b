"""Run a real ``mitmweb -s addons/omaha.py`` headless on 127.0.0.1 and talk to its REST API."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.mitmdump_run import Mitmdump

REPO = Path(__file__).resolve().parents[2]
MITMWEB = Path(sys.executable).parent / "mitmweb"
_LISTENING = re.compile(r"(?<!Web server) listening at 127\.0\.0\.1:(\d+)")
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
    """Start mitmweb with the omaha addons and ``args``; stop it with SIGINT on exit."""
    web_port = free_port()
    cmd = [str(MITMWEB), "--listen-host", "127.0.0.1", "-p", "0", "-s", str(REPO / "addons/omaha.py")]
    cmd += ["--set", "web_open_browser=false", "--set", "web_host=127.0.0.1", "--set", f"web_port={web_port}"]
    cmd += ["--set", f"web_password={PASSWORD}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    web = Mitmweb(proc, web_port=web_port)
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            web.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not web.port or "Web server listening" not in web.output:
            match = _LISTENING.search(web.output)
            if match:
                web.port = int(match.group(1))
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mitmweb did not start:\n{web.output}")
            time.sleep(0.05)
        yield web
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
