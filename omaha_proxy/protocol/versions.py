"""Flatcar versions compared as dotted numbers (``4081.2.0`` < ``4152.2.0``).

go-omaha's serve-package uses strict SemVer and answers ``error-internal`` for anything
else; we compare dotted numbers and report "cannot compare" as None instead.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1024)  # a fleet has a handful of versions; policies ask per flow
def parse_version(text: str | None) -> tuple[int, ...] | None:
    """Return the numeric parts of ``4081.2.0`` as ``(4081, 2, 0)``, or None if not dotted numbers.

    Trailing zero parts are dropped so that ``4081.2`` and ``4081.2.0`` compare equal.
    """
    if not text:
        return None
    parts = text.split(".")
    if not all(p.isdigit() and p.isascii() for p in parts):
        return None
    numbers = [int(p) for p in parts]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def compare_versions(a: str | None, b: str | None) -> int | None:
    """Return -1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``.

    Returns None when either side is not a dotted-number version.
    """
    pa, pb = parse_version(a), parse_version(b)
    if pa is None or pb is None:
        return None
    return (pa > pb) - (pa < pb)
