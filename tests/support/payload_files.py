"""Payload files for cache and bundle tests: real bytes, sparse giants, and their offer values."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from omaha_proxy.payloads.verify import Expected, verify_file


def expected_for(data: bytes, name: str, *, main: bool = True) -> Expected:
    """What an offer would say about ``data`` (the postinstall sha256 only for the main payload)."""
    sha256 = hashlib.sha256(data).digest()
    return Expected(
        name=name,
        size=len(data),
        sha256_b64=base64.b64encode(sha256).decode() if main else None,
        sha256_hex=sha256.hex(),
        sha1_b64=base64.b64encode(hashlib.sha1(data).digest()).decode(),
    )


def write_payload(path: Path, size: int, seed: int = 0) -> bytes:
    """Write ``size`` bytes that depend on ``seed`` to ``path``; return them."""
    block = hashlib.sha256(str(seed).encode()).digest() * 64
    data = (block * (size // len(block) + 1))[:size]
    path.write_bytes(data)
    return data


def write_sparse(path: Path, size: int) -> None:
    """Create a sparse file of ``size`` bytes (zeros, no disk blocks) ending in one marker byte."""
    with open(path, "wb") as f:
        f.truncate(size - 1)
        f.seek(size - 1)
        f.write(b"\x01")


def expected_for_file(path: Path, name: str, *, main: bool = True) -> Expected:
    """The offer values for a file on disk (read once, streaming)."""
    digest = verify_file(path, Expected(name))
    return Expected(
        name=name,
        size=digest.size,
        sha256_b64=digest.sha256_b64 if main else None,
        sha256_hex=digest.sha256_hex,
        sha1_b64=digest.sha1_b64,
    )
