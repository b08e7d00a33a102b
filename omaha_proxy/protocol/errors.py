"""One small error hierarchy. Normal outcomes (no update, no match) are values, not errors."""

from __future__ import annotations


class OmahaError(Exception):
    """Base of every error omaha-proxy raises on purpose."""


class CodecError(OmahaError, ValueError):
    """A body is not an Omaha document we can decode (or a model cannot be encoded).

    ``line``/``column`` locate the problem in the input when the XML parser knows it.
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(message + where)
        self.line = line
        self.column = column


class StoreError(OmahaError):
    """The SQLite log cannot be opened or written."""


class RecordingError(OmahaError):
    """A recording file is missing, malformed or of an unknown format version."""


class ReplayMiss(OmahaError):
    """A request matched no recorded exchange; ``explanation`` says why."""

    def __init__(self, explanation: str) -> None:
        super().__init__(explanation)
        self.explanation = explanation


class PayloadError(OmahaError):
    """A payload failed verification (size or hash) or could not be fetched."""


class BundleError(OmahaError):
    """An offline bundle is incomplete, tampered with, or of an unknown format version."""
