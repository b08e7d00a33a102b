"""Recordings: Omaha sessions on disk, versioned, scrubbed and readable in a diff.

A recording is one pretty-printed JSON file (one key per line)::

    {
      "format": "omaha-proxy-recording",
      "version": 1,
      "created": "2026-11-27T17:20:00Z",
      "source": "proxy",
      "exchanges": [
        {"seq": 1, "machine": "machine-1", "kind": "updatecheck",
         "request": {"method", "path", "headers", "body"},
         "response": {"status", "headers", "body"},
         "facts": {"appid", "version", "track", "events", "response", ...}}
      ],
      "payloads": {"name": {"path": "payloads/x.gz", "sha256": "<hex>", "size": 123}}
    }

Bodies are stored as text (``body_base64`` instead when they are not UTF-8). ``facts`` are
decoded for the reader; the replayer matches on the bodies, never on the facts.

Scrubbing happens in :class:`RecordingBuilder` before anything reaches a file: machine ids,
boot ids, machine aliases and client addresses become stable placeholders (``machine-1``,
``{boot-1}``, ``alias-1``, ``client-1``), the same value always getting the same placeholder
across requests, responses and headers. Credentials headers are dropped.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omaha_proxy.protocol import decode as codec
from omaha_proxy.protocol.describe import app_kind
from omaha_proxy.protocol.errors import CodecError, RecordingError
from omaha_proxy.protocol.model import Request, Response

FORMAT = "omaha-proxy-recording"
VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Headers whose value is recomputed or meaningless once the body is stored as text.
_DROPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})
# Credentials never go into a recording, scrubbed or not.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Headers that carry client addresses (Nebraska trusts the first X-Forwarded-For entry).
_ADDRESS_HEADERS = frozenset({"x-forwarded-for", "x-real-ip", "forwarded"})
_ID_ATTR = re.compile(r'\b(machineid|bootid|machinealias)="([^"]*)"')
_ADDRESS = re.compile(r"\[?[0-9A-Fa-f:.]*[0-9A-Fa-f][0-9A-Fa-f:.]*\]?")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """The HTTP request of one exchange (headers in order, body as bytes)."""

    method: str = "POST"
    path: str = "/v1/update/"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class RecordedResponse:
    """The HTTP response of one exchange."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/xml"),)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded request/answer pair. ``machine`` is the (scrubbed) machine id."""

    seq: int
    machine: str | None
    kind: str
    request: RecordedRequest
    response: RecordedResponse
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PayloadRef:
    """A payload file named by a recording; ``path`` is relative to the recording's folder."""

    name: str
    path: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    """A loaded recording. ``base_dir`` (not serialised) resolves payload paths."""

    exchanges: tuple[Exchange, ...] = ()
    payloads: tuple[PayloadRef, ...] = ()
    created: str | None = None
    source: str | None = None
    version: int = VERSION
    base_dir: Path | None = None

    def payload(self, name: str) -> PayloadRef | None:
        """The payload entry called ``name``, or None."""
        return next((p for p in self.payloads if p.name == name), None)

    def payload_file(self, name: str) -> Path | None:
        """Where the payload ``name`` lives on disk, or None if the recording names none."""
        ref = self.payload(name)
        if ref is None:
            return None
        return (self.base_dir or Path(".")) / ref.path

    @property
    def machines(self) -> tuple[str | None, ...]:
        """The recorded machines in order of first appearance."""
        return tuple(dict.fromkeys(e.machine for e in self.exchanges))


def payload_ref(name: str, path: str | os.PathLike[str], *, base_dir: str | os.PathLike[str]) -> PayloadRef:
    """A payload entry for the file at ``path``: its SHA-256 and size, its path relative to
    ``base_dir`` (the folder of the recording that will name it). Raises OSError."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    relative = os.path.relpath(Path(path).resolve(), Path(base_dir).resolve())
    return PayloadRef(name, Path(relative).as_posix(), digest.hexdigest(), size)


def with_payloads(recording: Recording, refs: Iterable[PayloadRef]) -> Recording:
    """The recording naming ``refs`` as well (an entry of the same name is replaced)."""
    table = {p.name: p for p in recording.payloads}
    table.update((p.name, p) for p in refs)
    return dataclasses.replace(recording, payloads=tuple(table.values()))


# ---------------------------------------------------------------------------- scrubbing


class Scrubber:
    """Replaces identifying values by stable placeholders, consistently across a recording.

    ``keep_ids=True`` turns it into a no-op except for credential headers.
    """

    _PREFIX = {"machineid": "machine", "bootid": "boot", "machinealias": "alias", "client": "client"}

    def __init__(self, *, keep_ids: bool = False) -> None:
        self.keep_ids = keep_ids
        self._maps: dict[str, dict[str, str]] = {kind: {} for kind in self._PREFIX}

    def placeholder(self, kind: str, value: str) -> str:
        """The placeholder for ``value`` of ``kind`` (``machineid``, ``bootid``...)."""
        if self.keep_ids or not value:
            return value
        table = self._maps[kind]
        if value not in table:
            name = f"{self._PREFIX[kind]}-{len(table) + 1}"
            # Keep the braces of braced GUIDs so the document keeps its shape.
            table[value] = "{" + name + "}" if value.startswith("{") and value.endswith("}") else name
        return table[value]

    def learn(self, request_text: str) -> None:
        """Register every machine id, boot id and alias found in a request body."""
        for match in _ID_ATTR.finditer(request_text):
            self.placeholder(match.group(1), match.group(2))

    def text(self, text: str) -> str:
        """``text`` with every known identifying value replaced."""
        if self.keep_ids:
            return text
        text = _ID_ATTR.sub(lambda m: f'{m.group(1)}="{self.placeholder(m.group(1), m.group(2))}"', text)
        for kind in ("machineid", "bootid"):
            for value, placeholder in self._maps[kind].items():
                # Ids are long random strings: safe to replace anywhere (headers, echoes).
                if len(value) >= 8:
                    text = text.replace(value, placeholder)
        return text

    def headers(self, headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """Headers with credentials dropped, addresses and ids replaced."""
        out: list[tuple[str, str]] = []
        for name, value in headers:
            lname = name.lower()
            if lname in _SECRET_HEADERS or lname in _DROPPED_HEADERS:
                continue
            if lname in _ADDRESS_HEADERS and not self.keep_ids:
                value = _ADDRESS.sub(lambda m: self._address(m.group(0)), value)
            out.append((name, self.text(value)))
        return tuple(out)

    def _address(self, token: str) -> str:
        # Only tokens that look like IPs (digits and dots, or hex with colons) are addresses.
        bare = token.strip("[]")
        if bare.count(".") == 3 or bare.count(":") >= 2:
            return self.placeholder("client", bare)
        return token

    def machine(self, machine_id: str | None) -> str | None:
        """The placeholder used for the ``machine`` field of an exchange."""
        return None if machine_id is None else self.placeholder("machineid", machine_id)


# ----------------------------------------------------------------------------- building


class RecordingBuilder:
    """Accumulates exchanges, scrubbed as they arrive, and yields a :class:`Recording`."""

    def __init__(self, *, source: str, keep_ids: bool = False, created: str | None = None) -> None:
        self.source = source
        self.scrubber = Scrubber(keep_ids=keep_ids)
        self.created = created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._exchanges: list[Exchange] = []
        self._payloads: dict[str, PayloadRef] = {}

    def __len__(self) -> int:
        return len(self._exchanges)

    def add(
        self,
        request_body: bytes,
        response_body: bytes,
        *,
        status: int = 200,
        method: str = "POST",
        path: str = "/v1/update/",
        request_headers: Iterable[tuple[str, str]] = (),
        response_headers: Iterable[tuple[str, str]] = (("Content-Type", "text/xml"),),
    ) -> Exchange:
        """Scrub and append one exchange; returns it as stored."""
        scrub = self.scrubber
        request_text = _decode(request_body)
        if request_text is not None:
            scrub.learn(request_text)
        request_body = _scrub_body(scrub, request_body)
        response_body = _scrub_body(scrub, response_body)
        kind, facts = exchange_facts(request_body, response_body, status)
        exchange = Exchange(
            seq=len(self._exchanges) + 1,
            machine=machine_of(request_body),
            kind=kind,
            request=RecordedRequest(method, path, scrub.headers(request_headers), request_body),
            response=RecordedResponse(status, scrub.headers(response_headers), response_body),
            facts=facts,
        )
        self._exchanges.append(exchange)
        return exchange

    def add_payload(self, ref: PayloadRef) -> None:
        """Name a payload file the recording ships (replaces an entry of the same name)."""
        self._payloads[ref.name] = ref

    def recording(self) -> Recording:
        """The recording built so far."""
        return Recording(
            exchanges=tuple(self._exchanges),
            payloads=tuple(self._payloads.values()),
            created=self.created,
            source=self.source,
        )


def _decode(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _scrub_body(scrub: Scrubber, body: bytes) -> bytes:
    text = _decode(body)
    return body if text is None else scrub.text(text).encode("utf-8")


# --------------------------------------------------------------------------------- facts


def machine_of(request: Request | bytes) -> str | None:
    """The first machine id in a request (body or parsed), or None."""
    if isinstance(request, bytes):
        try:
            request = codec.parse_request(request)
        except CodecError:
            return None
    return next((a.machineid for a in request.apps if a.machineid), None)


def event_label(eventtype: int, eventresult: int | None, errorcode: int | None = None) -> str:
    """``13/1`` or ``3/0/268435466``: how recordings and explanations write an event."""
    label = f"{eventtype}/{eventresult if eventresult is not None else 0}"
    return label if errorcode is None else f"{label}/{errorcode}"


def exchange_facts(request_body: bytes, response_body: bytes, status: int) -> tuple[str, dict[str, Any]]:
    """Return ``(kind, facts)`` decoded from one exchange, for readers of the recording.

    ``kind`` is the first app's request kind (``updatecheck``, ``event``, ``ping``, ``other``).
    Undecodable bodies give kind ``other`` and an ``error`` fact; nothing raises.
    """
    facts: dict[str, Any] = {}
    try:
        request = codec.parse_request(request_body)
    except CodecError as e:
        return "other", {"error": f"request: {e}"}
    app = request.apps[0] if request.apps else None
    kind = str(app_kind(app)) if app is not None else "other"
    if app is not None:
        facts.update(appid=app.appid, version=app.version, track=app.track, board=app.board)
        facts["events"] = [event_label(e.eventtype, e.eventresult, e.errorcode) for e in app.events]
        previous = [e.previousversion for e in app.events if e.previousversion is not None]
        if previous:
            facts["previousversion"] = previous[0]
    facts["http_status"] = status
    try:
        response = codec.parse_response(response_body)
    except CodecError as e:
        facts["response"] = f"not Omaha: {e}" if response_body else "empty"
        return kind, facts
    facts.update(_response_facts(response))
    return kind, facts


def _response_facts(response: Response) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    app = response.apps[0] if response.apps else None
    if app is None:
        return {"response": "no app"}
    facts["app_status"] = app.status
    check = app.updatecheck
    if check is None:
        facts["response"] = "ack"
        return facts
    facts["response"] = check.status
    manifest = check.manifest
    if check.status == "ok" and manifest is not None:
        facts["offered_version"] = manifest.version
        facts["packages"] = [p.name for p in manifest.packages or ()]
        facts["codebases"] = [u.codebase for u in check.urls or ()]
    return facts


# ------------------------------------------------------------------------ (de)serialising


def to_json(recording: Recording) -> dict[str, Any]:
    """The JSON-ready form of a recording."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": recording.created,
        "source": recording.source,
        "exchanges": [_exchange_json(e) for e in recording.exchanges],
        "payloads": {
            p.name: {"path": p.path, "sha256": p.sha256, "size": p.size} for p in recording.payloads
        },
    }


def dumps(recording: Recording) -> str:
    """Serialise to pretty-printed JSON text (one key per line, trailing newline)."""
    return json.dumps(to_json(recording), indent=2, ensure_ascii=False) + "\n"


def dump(recording: Recording, path: str | os.PathLike[str]) -> None:
    """Write the recording to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dumps(recording))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a recording is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def loads(text: str, *, base_dir: Path | None = None, origin: str = "recording") -> Recording:
    """Parse recording text. Raises :class:`RecordingError` naming what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordingError(f"{origin}: not JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordingError(f'{origin}: not an omaha-proxy recording (expected "format": "{FORMAT}")')
    version = data.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise RecordingError(
            f"{origin}: recording format version {version!r} is not supported "
            f"(this omaha-proxy reads version {', '.join(map(str, SUPPORTED_VERSIONS))}); "
            "upgrade omaha-proxy or re-make the recording"
        )
    try:
        exchanges = tuple(_exchange_from_json(e) for e in data.get("exchanges", []))
        payloads = tuple(
            PayloadRef(name, str(p["path"]), p.get("sha256"), p.get("size"))
            for name, p in (data.get("payloads") or {}).items()
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RecordingError(f"{origin}: malformed exchange or payload entry: {e!r}") from e
    return Recording(exchanges, payloads, data.get("created"), data.get("source"), version, base_dir)


def load(path: str | os.PathLike[str]) -> Recording:
    """Read a recording file. Raises :class:`RecordingError` (missing, malformed, unknown version)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RecordingError(f"cannot read recording {p}: {e.strerror or e}") from e
    return loads(text, base_dir=p.parent, origin=str(p))


def _body_json(body: bytes) -> dict[str, str]:
    text = _decode(body)
    if text is None:
        return {"body_base64": base64.b64encode(body).decode("ascii")}
    return {"body": text}


def _body_from_json(d: Mapping[str, Any]) -> bytes:
    if "body_base64" in d:
        return base64.b64decode(d["body_base64"])
    return str(d.get("body", "")).encode("utf-8")


def _headers_json(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        # Repeated headers are joined as HTTP allows (Omaha traffic has none).
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _exchange_json(e: Exchange) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "machine": e.machine,
        "kind": e.kind,
        "request": {
            "method": e.request.method,
            "path": e.request.path,
            "headers": _headers_json(e.request.headers),
            **_body_json(e.request.body),
        },
        "response": {
            "status": e.response.status,
            "headers": _headers_json(e.response.headers),
            **_body_json(e.response.body),
        },
        "facts": dict(e.facts),
    }


def _exchange_from_json(d: Mapping[str, Any]) -> Exchange:
    req, resp = d["request"], d["response"]
    return Exchange(
        seq=int(d["seq"]),
        machine=d.get("machine"),
        kind=str(d.get("kind", "other")),
        request=RecordedRequest(
            str(req.get("method", "POST")),
            str(req.get("path", "/v1/update/")),
            tuple((str(k), str(v)) for k, v in (req.get("headers") or {}).items()),
            _body_from_json(req),
        ),
        response=RecordedResponse(
            int(resp.get("status", 200)),
            tuple((str(k), str(v)) for k, v in (resp.get("headers") or {}).items()),
            _body_from_json(resp),
        ),
        facts=dict(d.get("facts") or {}),
    )
