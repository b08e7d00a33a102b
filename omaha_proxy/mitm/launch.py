"""Start mitmdump or mitmweb with the omaha-proxy addons, for users who would rather not
learn mitmproxy's flags (``omaha-proxy proxy``) and for the demo.

:func:`proxy_command` turns a :class:`ProxySettings` into the argument list (the
executables next to ``sys.executable``, ``-s`` with the entry script, the ``--set``s);
:class:`ProxyProcess` runs it in the background, learns the listening port from mitmproxy's
log line and stops it with SIGINT (so the addons' ``done`` runs) or, failing that, SIGKILL.

Reverse mode (``upstream`` given) is the usual set-up: machines get
``SERVER=http://HOST:PORT/v1/update/``. Without an upstream mitmproxy runs as a regular
proxy and machines use ``ALL_PROXY=http://HOST:PORT`` (https then needs the mitmproxy CA
in the machines' trust store, reference §6).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self


def script_path() -> Path:
    """The absolute path of the mitmproxy entry script, ``mitm/omaha.py`` (for ``-s``)."""
    return Path(__file__).resolve().with_name("omaha.py")


_LISTENING = re.compile(r"listening at \[?([0-9A-Za-z.:_-]*?)\]?:(\d+)\.")


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT``; raises ValueError naming the expected form."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return host, int(port)


def mitm_executable(web: bool = False) -> str:
    """Path of ``mitmweb``/``mitmdump`` next to the running Python, else on PATH.

    Raises FileNotFoundError when neither exists.
    """
    name = "mitmweb" if web else "mitmdump"
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable} or on PATH (pip install mitmproxy)"
        )
    return found


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What ``omaha-proxy proxy`` passes to mitmproxy; empty strings mean "option unset"."""

    upstream: str | None = None
    listen: str = "127.0.0.1:8080"
    db: str = "omaha.db"
    web: bool = False
    web_port: int = 8081
    block: str = ""
    pin: str = ""
    rollout: str = ""
    allow_downgrade: bool = False
    replay: str | None = None
    record: str | None = None
    redact: bool = False
    save_flows: str | None = None
    read_flows: str | None = None
    extra_sets: tuple[str, ...] = ()

    def omaha_url(self, port: int | None = None) -> str:
        """``SERVER=`` for machines in reverse mode, e.g. ``http://127.0.0.1:8080/v1/update/``."""
        host, listen_port = parse_listen(self.listen)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{listen_port if port is None else port}/v1/update/"


def proxy_command(settings: ProxySettings) -> list[str]:
    """The mitmdump/mitmweb argument list for ``settings``.

    ``connection_strategy=lazy`` lets synthetic answers (block, replay) work with the
    upstream down (mitmproxy-12.md §1.7). Raises ValueError for a bad listen address.
    """
    host, port = parse_listen(settings.listen)
    argv = [mitm_executable(settings.web), "--listen-host", host, "--listen-port", str(port)]
    argv += ["--mode", f"reverse:{settings.upstream}" if settings.upstream else "regular"]
    argv += ["-s", str(script_path())]
    sets = ["connection_strategy=lazy", f"omaha_db={settings.db}"]
    optional = (
        ("omaha_block", settings.block), ("omaha_pin", settings.pin), ("omaha_rollout", settings.rollout),
        ("omaha_allow_downgrade", "true" if settings.allow_downgrade else ""),
        ("omaha_replay", settings.replay), ("omaha_record", settings.record),
        ("omaha_redact", "true" if settings.redact else ""),
    )  # fmt: skip
    sets += [f"{name}={value}" for name, value in optional if value]
    if settings.web:
        sets += ["web_open_browser=false", f"web_port={settings.web_port}"]
    sets += settings.extra_sets
    for item in sets:
        argv += ["--set", item]
    if settings.save_flows:
        argv += ["-w", settings.save_flows]
    if settings.read_flows:
        argv += ["-r", settings.read_flows]
    return argv


class ProxyProcess:
    """A background mitmdump/mitmweb whose output goes to ``log_path``; stop it with :meth:`stop`."""

    def __init__(self, argv: list[str], log_path: str | os.PathLike[str]) -> None:
        self.argv = argv
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.host = ""
        self.port = 0

    def start(self, timeout: float = 30.0) -> Self:
        """Start and wait for the "listening at HOST:PORT" line. Raises RuntimeError on failure."""
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := _LISTENING.search(self.log_path.read_text(errors="replace")):
                self.host, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{Path(self.argv[0]).name} did not start listening:\n{output}")

    @property
    def url(self) -> str:
        """Base URL of the proxy, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (addons flush their logs), then SIGKILL after ``timeout``; returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
