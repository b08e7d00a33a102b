"""An upstream on 127.0.0.1 that misbehaves on purpose, for the fault tests.

Behaviours (``FaultyUpstream(behaviour)``):

- ``reset``: reads the request, then resets the connection (RST, no answer);
- ``close``: reads the request, then closes cleanly without answering;
- ``garbage-http``: answers bytes that are not HTTP at all;
- ``garbage-200``: answers HTTP 200 ``text/xml`` whose body is not XML;
- ``slow``: waits ``delay`` seconds, then answers Nebraska's noupdate;
- ``status:<n>``: answers HTTP ``n`` with a short text body (e.g. ``status:503``).

Every connection is counted; each is served on its own daemon thread.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Self

from tests.support.upstream import NOUPDATE

GARBAGE_BODY = b"\x00\x01 this is not XML \xff\xfe"


class FaultyUpstream:
    def __init__(self, behaviour: str, delay: float = 5.0) -> None:
        self.behaviour = behaviour
        self.delay = delay
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self._answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def _answer(self, conn: socket.socket) -> None:
        kind = self.behaviour
        if kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "close":
            conn.shutdown(socket.SHUT_WR)
        elif kind == "garbage-http":
            conn.sendall(b"\x16\x03\x01 definitely not HTTP\r\n\r\n")
        elif kind == "garbage-200":
            conn.sendall(_response(200, GARBAGE_BODY))
        elif kind == "slow":
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.05)
            conn.sendall(_response(200, NOUPDATE))
        elif kind.startswith("status:"):
            status = int(kind.split(":", 1)[1])
            conn.sendall(_response(status, f"upstream says {status}\n".encode(), "text/plain"))
        else:
            raise ValueError(f"unknown behaviour {kind!r}")

    def __enter__(self) -> Self:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()


def _response(status: int, body: bytes, content_type: str = "text/xml") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body
