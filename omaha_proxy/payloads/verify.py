"""Verify payload files against the offer that named them, in one streaming pass.

An offer (``<updatecheck status="ok">``) lists packages; the first is the main payload,
the others are extension packages (``oem-*.gz``, ``flatcar-*.gz``). What each download must
match, and who checks it on a real machine:

- ``size``: update_engine (code 11 on mismatch) and ue-rs;
- the postinstall action's ``sha256`` (base64, main payload only): update_engine, as a plain
  string comparison (code 10 on mismatch);
- ``hash_sha256`` (hex) and ``hash`` (SHA-1, base64): ue-rs, for extension packages.

:class:`Verifier` hashes while the bytes stream past (to disk, to a client), so a payload of
any size is read once with flat memory. Nothing here does I/O beyond the file objects it is
given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from omaha_proxy.protocol.errors import PayloadError
from omaha_proxy.protocol.model import Manifest, Response, UpdateCheckResponse

_HEX64 = re.compile(r"[0-9a-f]{64}")

CHUNK_SIZE = 1 << 20
"""Bytes read or written per step when streaming a payload."""


class PayloadMismatch(PayloadError):
    """A payload does not match its offer. ``failed`` names the checks that failed
    (``size``, ``sha256`` for the postinstall base64 hash, ``hash_sha256``, ``hash``)."""

    def __init__(self, name: str, failures: Iterable[tuple[str, str]]) -> None:
        self.name = name
        self.details = tuple(failures)
        self.failed = tuple(check for check, _ in self.details)
        super().__init__(f"{name}: " + "; ".join(text for _, text in self.details))


@dataclass(frozen=True, slots=True)
class Expected:
    """What one package of an offer must be. ``None`` means the offer does not say.

    ``sha256_b64`` is the postinstall action's hash, set for the main payload only.
    """

    name: str
    size: int | None = None
    sha256_b64: str | None = None
    sha256_hex: str | None = None
    sha1_b64: str | None = None

    @property
    def has_hash(self) -> bool:
        """True when at least one hash pins the content (size alone does not)."""
        return bool(self.sha256_b64 or self.sha256_hex or self.sha1_b64)

    def content_sha256(self) -> str | None:
        """The SHA-256 the content must have, as lowercase hex, from either form; None when
        the offer gives none or only a malformed one (never a string unsafe as a file name)."""
        if self.sha256_hex:
            value = self.sha256_hex.lower()
            return value if _HEX64.fullmatch(value) else None
        if self.sha256_b64:
            try:
                digest = base64.b64decode(self.sha256_b64, validate=True)
            except (binascii.Error, ValueError):
                return None
            return digest.hex() if len(digest) == 32 else None
        return None


@dataclass(frozen=True, slots=True)
class Digest:
    """What a verified file is: its byte count and hashes (every form the offer can use)."""

    size: int
    sha256_hex: str
    sha1_b64: str

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256_hex)).decode("ascii")


def expected_packages(manifest: Manifest) -> tuple[Expected, ...]:
    """Return one :class:`Expected` per named package of ``manifest``, in offer order.

    The postinstall ``sha256`` belongs to the first package (update_engine reads only the
    first package and the first postinstall action). Packages without a name are skipped:
    no client can download them.
    """
    postinstall = manifest.postinstall
    result = []
    for index, package in enumerate(manifest.packages or ()):
        if not package.name:
            continue
        result.append(
            Expected(
                name=package.name,
                size=package.size,
                sha256_b64=(postinstall.sha256 or None) if index == 0 and postinstall else None,
                sha256_hex=package.hash_sha256 or None,
                sha1_b64=package.hash or None,
            )
        )
    return tuple(result)


def offered_updatechecks(response: Response) -> list[tuple[str | None, UpdateCheckResponse]]:
    """Return ``(appid, updatecheck)`` for every app of ``response`` that offers an update:
    ``status="ok"`` with at least one url and one manifest."""
    return [
        (app.appid, app.updatecheck)
        for app in response.apps
        if app.updatecheck is not None
        and app.updatecheck.status == "ok"
        and app.updatecheck.urls
        and app.updatecheck.manifest is not None
    ]


class Verifier:
    """Hash and count bytes as they stream past; :meth:`finish` checks them against the offer.

    ``update`` raises :class:`PayloadMismatch` as soon as more bytes arrive than the offer's
    size, so an endless upstream cannot fill a disk.
    """

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        """Account for ``chunk``. Raises PayloadMismatch when the size limit is passed."""
        self.size += len(chunk)
        if self.expected.size is not None and self.size > self.expected.size:
            raise PayloadMismatch(
                self.expected.name,
                [("size", f"size: more than the offered {self.expected.size} bytes")],
            )
        self._sha256.update(chunk)
        self._sha1.update(chunk)

    def finish(self) -> Digest:
        """Return the digest when every check the offer makes passes.

        Raises PayloadMismatch naming each failed check with the expected and actual values.
        """
        exp = self.expected
        digest = Digest(
            self.size, self._sha256.hexdigest(), base64.b64encode(self._sha1.digest()).decode("ascii")
        )
        failures: list[tuple[str, str]] = []
        if exp.size is not None and digest.size != exp.size:
            failures.append(("size", f"size: got {digest.size} bytes, offer {exp.size}"))
        # update_engine compares the postinstall sha256 as a base64 string (omaha_response_handler).
        if exp.sha256_b64 is not None and digest.sha256_b64 != exp.sha256_b64:
            failures.append(
                (
                    "sha256",
                    f"sha256 (postinstall, base64): got {digest.sha256_b64}, offer {exp.sha256_b64}",
                )
            )
        if exp.sha256_hex is not None and digest.sha256_hex != exp.sha256_hex.lower():
            failures.append(
                ("hash_sha256", f"hash_sha256 (hex): got {digest.sha256_hex}, offer {exp.sha256_hex}")
            )
        if exp.sha1_b64 is not None and not _same_b64(digest.sha1_b64, exp.sha1_b64):
            failures.append(("hash", f"hash (SHA-1, base64): got {digest.sha1_b64}, offer {exp.sha1_b64}"))
        if failures:
            raise PayloadMismatch(exp.name, failures)
        return digest


def _same_b64(actual: str, offered: str) -> bool:
    # ue-rs decodes the base64 before comparing, so padding/alphabet variants still match.
    try:
        return base64.b64decode(offered, validate=True) == base64.b64decode(actual)
    except (binascii.Error, ValueError):
        return False


def copy_verified(
    src: BinaryIO, expected: Expected, sink: BinaryIO | None = None, *, chunk_size: int = CHUNK_SIZE
) -> Digest:
    """Stream ``src`` to its end into ``sink`` (if given) while verifying it; return the digest.

    Raises PayloadMismatch when the bytes do not match ``expected`` (``sink`` then holds a
    partial or wrong copy the caller must discard) and OSError on read/write failures.
    """
    verifier = Verifier(expected)
    while True:
        chunk = src.read(chunk_size)
        if not chunk:
            break
        verifier.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return verifier.finish()


def verify_file(path: str | Path, expected: Expected) -> Digest:
    """Verify the file at ``path`` against ``expected``; return its digest.

    Raises PayloadMismatch on a mismatch and PayloadError when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return copy_verified(f, expected)
    except OSError as e:
        raise PayloadError(f"{expected.name}: cannot read {path}: {e}") from e
