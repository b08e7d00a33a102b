"""Run a real ``mitmdump -s addons/omaha.py`` on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[2]
MITMDUMP = Path(sys.executable).parent / "mitmdump"


@dataclass
class Mitmdump:
    """A running mitmdump: its port and everything it printed so far."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)
    listening: ClassVar[re.Pattern[str]] = re.compile(r"listening at 127\.0\.0\.1:(\d+)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 5.0) -> bool:
        """True once ``text`` appears in the output (polls, bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            time.sleep(0.05)
        return False


@contextlib.contextmanager
def run_mitmdump(
    *args: str,
    startup_timeout: float = 20.0,
    addons: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[Mitmdump]:
    """Start mitmdump with the omaha addons and ``args``; stop it with SIGINT on exit.

    The Omaha log goes to a temporary directory unless ``args`` set ``omaha_db``.
    ``addons=False`` runs bare mitmdump (the benchmarks' baseline); ``preexec_fn`` runs in
    the child before exec (e.g. to set a resource limit).
    """
    scratch = tempfile.TemporaryDirectory(prefix="omaha-mitmdump-")
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", "0", "--set", "flow_detail=0"]
    if addons:
        cmd += addon_args(args, scratch.name)
    cmd += args
    proc = subprocess.Popen(
        cmd, cwd=scratch.name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    with scratch, supervise(Mitmdump(proc), startup_timeout) as md:
        yield md


def addon_args(args: Sequence[str], scratch: str) -> list[str]:
    """``-s`` the entry script, and a log in ``scratch`` unless ``args`` set ``omaha_db``."""
    out = ["-s", str(REPO / "addons/omaha.py")]
    if not any(a.startswith("omaha_db=") for a in args):  # a repeated --set breaks every --set
        out += ["--set", f"omaha_db={scratch}/omaha.db"]
    return out


@contextlib.contextmanager
def supervise[M: Mitmdump](
    md: M, startup_timeout: float, ready: Callable[[M], bool] = lambda md: True
) -> Iterator[M]:
    """Collect ``md.proc``'s output, wait until it listens (and ``ready``), SIGINT it on exit."""
    proc = md.proc
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            md.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not md.port or not ready(md):
            match = md.listening.search(md.output)
            if match:
                md.port = int(match.group(1))
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{type(md).__name__.lower()} did not start:\n{md.output}")
            time.sleep(0.05)
        yield md
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
