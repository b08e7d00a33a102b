"""Typed model of Omaha v3 documents: one frozen dataclass per protocol element.

Every element keeps what the model does not name: ``extra`` holds unknown attributes in
document order, ``unknown`` holds unknown child elements (as :class:`XmlElement`) in
document order. A proxy that rewrites one attribute must forward all the others.

Attribute values are kept as the strings on the wire, except the few that are integers by
protocol (event type/result/code, ping day counters, package size). Booleans stay strings
because update_engine compares them to the literal ``"true"`` (``"True"`` is false to it).
``None`` always means "attribute absent"; ``""`` means present and empty (update_engine
sends ``hardware_class=""``, ``oemversion=""``).

Each class has an ``_ATTRS`` table: ``(field name, XML attribute name, is_int)`` in the
order the encoder writes them (update_engine's order for requests, Nebraska's for
responses). The codec is driven by these tables.

The classes are frozen but not slotted: the decoder builds instances by filling
``__dict__`` directly, leaving absent attributes to the class-level defaults, which is
several times faster than the generated ``__init__`` and yields identical objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omaha_proxy.protocol.codes import ErrorCodeInfo, EventResult, EventType, decode_error_code

Attrs = tuple[tuple[str, str], ...]
AttrSpec = tuple[tuple[str, str, bool], ...]


@dataclass(frozen=True)
class XmlElement:
    """An element the model does not name, kept verbatim (attributes, text, children)."""

    tag: str
    attrs: Attrs = ()
    text: str | None = None
    children: tuple[XmlElement, ...] = ()


# --------------------------------------------------------------------------- request side


@dataclass(frozen=True)
class Hw:
    sse: str | None = None
    sse2: str | None = None
    sse3: str | None = None
    ssse3: str | None = None
    sse41: str | None = None
    sse42: str | None = None
    avx: str | None = None
    physmemory: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = tuple(
        (n, n, False) for n in ("sse", "sse2", "sse3", "ssse3", "sse41", "sse42", "avx", "physmemory")
    )


@dataclass(frozen=True)
class Os:
    version: str | None = None
    platform: str | None = None
    sp: str | None = None
    arch: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    # update_engine writes version, platform, sp (no arch); go-omaha adds arch.
    _ATTRS: ClassVar[AttrSpec] = (
        ("version", "version", False),
        ("platform", "platform", False),
        ("sp", "sp", False),
        ("arch", "arch", False),
    )


@dataclass(frozen=True)
class Ping:
    """``<ping>`` in a request. update_engine always sends exactly ``active="1"``."""

    active: int | None = None
    a: int | None = None
    r: int | None = None
    ad: int | None = None
    rd: int | None = None
    ping_freshness: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("active", "active", True),
        ("a", "a", True),
        ("r", "r", True),
        ("ad", "ad", True),
        ("rd", "rd", True),
        ("ping_freshness", "ping_freshness", False),
    )


@dataclass(frozen=True)
class UpdateCheck:
    """``<updatecheck>`` in a request (update_engine sends it empty)."""

    targetversionprefix: str | None = None
    tttoken: str | None = None
    updatedisabled: str | None = None
    sameversionupdate: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("targetversionprefix", "targetversionprefix", False),
        ("tttoken", "tttoken", False),
        ("updatedisabled", "updatedisabled", False),
        ("sameversionupdate", "sameversionupdate", False),
    )


@dataclass(frozen=True)
class Event:
    """``<event>`` in a request: what the client reports (13/1, 14/1, 3/1, 3/0+code, 3/2...)."""

    eventtype: int
    eventresult: int | None = None
    errorcode: int | None = None
    previousversion: str | None = None
    nextversion: str | None = None
    extracode1: str | None = None
    errorcat: str | None = None
    download_time_ms: str | None = None
    downloaded: str | None = None
    total: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("eventtype", "eventtype", True),
        ("eventresult", "eventresult", True),
        ("errorcode", "errorcode", True),
        ("previousversion", "previousversion", False),
        ("nextversion", "nextversion", False),
        ("extracode1", "extracode1", False),
        ("errorcat", "errorcat", False),
        ("download_time_ms", "download_time_ms", False),
        ("downloaded", "downloaded", False),
        ("total", "total", False),
    )

    @property
    def type(self) -> EventType | int:
        """The event type as a named :class:`EventType` when known, else the plain int."""
        return EventType.lookup(self.eventtype)

    @property
    def result(self) -> EventResult | int:
        """The event result (spec default 0 when absent), named when known."""
        return EventResult.lookup(self.eventresult or 0)

    @property
    def error(self) -> ErrorCodeInfo | None:
        """The decoded ``errorcode`` (base code plus flag bits), or None when absent."""
        return None if self.errorcode is None else decode_error_code(self.errorcode)


@dataclass(frozen=True)
class Data:
    """``<data>`` in a request or response; ``text`` is its character content."""

    name: str | None = None
    index: str | None = None
    status: str | None = None
    text: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("name", "name", False),
        ("index", "index", False),
        ("status", "status", False),
    )


@dataclass(frozen=True)
class AppRequest:
    """``<app>`` in a request. Attribute order is update_engine 0.4.10's."""

    appid: str | None = None
    version: str | None = None
    track: str | None = None
    bootid: str | None = None
    oem: str | None = None
    oemversion: str | None = None
    alephversion: str | None = None
    machineid: str | None = None
    machinealias: str | None = None
    lang: str | None = None
    board: str | None = None
    hardware_class: str | None = None
    delta_okay: str | None = None
    nextversion: str | None = None
    from_track: str | None = None
    multi_manifest_ok: str | None = None
    client: str | None = None
    brand: str | None = None
    ap: str | None = None
    installage: str | None = None
    installsource: str | None = None
    iid: str | None = None
    cohort: str | None = None
    cohorthint: str | None = None
    cohortname: str | None = None
    tag: str | None = None
    fp: str | None = None
    ping: Ping | None = None
    updatecheck: UpdateCheck | None = None
    events: tuple[Event, ...] = ()
    data: tuple[Data, ...] = ()
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = tuple(
        (n, n, False)
        for n in (
            "appid", "version", "track", "bootid", "oem", "oemversion", "alephversion",
            "machineid", "machinealias", "lang", "board", "hardware_class", "delta_okay",
            "nextversion", "from_track", "multi_manifest_ok", "client", "brand", "ap",
            "installage", "installsource", "iid", "cohort", "cohorthint", "cohortname",
            "tag", "fp",
        )
    )  # fmt: skip


@dataclass(frozen=True)
class Request:
    """``<request>``: the document update_engine POSTs to ``SERVER``."""

    protocol: str | None = "3.0"
    version: str | None = None
    updaterversion: str | None = None
    updater: str | None = None
    updaterchannel: str | None = None
    installsource: str | None = None
    ismachine: str | None = None
    testsource: str | None = None
    requestid: str | None = None
    sessionid: str | None = None
    userid: str | None = None
    dedup: str | None = None
    hw: Hw | None = None
    os: Os | None = None
    apps: tuple[AppRequest, ...] = ()
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = tuple(
        (n, n, False)
        for n in (
            "protocol", "version", "updaterversion", "updater", "updaterchannel",
            "installsource", "ismachine", "testsource", "requestid", "sessionid", "userid",
            "dedup",
        )
    )  # fmt: skip


# -------------------------------------------------------------------------- response side


@dataclass(frozen=True)
class DayStart:
    elapsed_seconds: str | None = None
    elapsed_days: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    # update_engine ignores <daystart>; a non-numeric value must not fail the parse.
    _ATTRS: ClassVar[AttrSpec] = (
        ("elapsed_seconds", "elapsed_seconds", False),
        ("elapsed_days", "elapsed_days", False),
    )


@dataclass(frozen=True)
class Ack:
    """``<ping status="ok">`` or ``<event status="ok">`` in a response."""

    status: str | None = "ok"
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (("status", "status", False),)


@dataclass(frozen=True)
class Url:
    """``<url codebase=...>``: a prefix; the client appends the package name."""

    codebase: str | None = None
    codebasediff: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("codebase", "codebase", False),
        ("codebasediff", "codebasediff", False),
    )


@dataclass(frozen=True)
class Package:
    """``<package>``. ``hash`` is base64 SHA-1; ``hash_sha256`` is hex (Nebraska, ue-rs)."""

    name: str | None = None
    hash: str | None = None
    hash_sha256: str | None = None
    size: int | None = None
    required: str | None = None
    fp: str | None = None
    namediff: str | None = None
    sizediff: str | None = None
    hashdiff: str | None = None
    hashdiff_sha256: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()  # e.g. go-omaha's <metadata> child

    # Nebraska's order: name, hash, hash_sha256, size, required.
    _ATTRS: ClassVar[AttrSpec] = (
        ("name", "name", False),
        ("hash", "hash", False),
        ("hash_sha256", "hash_sha256", False),
        ("size", "size", True),
        ("required", "required", False),
        ("fp", "fp", False),
        ("namediff", "namediff", False),
        ("sizediff", "sizediff", False),
        ("hashdiff", "hashdiff", False),
        ("hashdiff_sha256", "hashdiff_sha256", False),
    )


@dataclass(frozen=True)
class Action:
    """``<action>``. update_engine reads its payload parameters from the ``postinstall`` one.

    Attribute names are case-sensitive on the wire (``DisablePayloadBackoff``); booleans are
    kept as strings because update_engine tests them with ``== "true"``.
    """

    event: str | None = None
    display_version: str | None = None
    sha256: str | None = None
    needsadmin: str | None = None
    is_delta_payload: str | None = None
    disable_payload_backoff: str | None = None
    max_failure_count_per_url: str | None = None
    metadata_signature_rsa: str | None = None
    metadata_size: str | None = None
    deadline: str | None = None
    more_info: str | None = None
    prompt: str | None = None
    chromeos_version: str | None = None
    chrome_version: str | None = None
    is_delta: str | None = None
    max_days_to_scatter: str | None = None
    run: str | None = None
    arguments: str | None = None
    successurl: str | None = None
    terminateallbrowsers: str | None = None
    successaction: str | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    # Nebraska's (go-omaha struct) order first, then legacy Chrome OS and spec attributes.
    _ATTRS: ClassVar[AttrSpec] = (
        ("event", "event", False),
        ("display_version", "DisplayVersion", False),
        ("sha256", "sha256", False),
        ("needsadmin", "needsadmin", False),
        ("is_delta_payload", "IsDeltaPayload", False),
        ("disable_payload_backoff", "DisablePayloadBackoff", False),
        ("max_failure_count_per_url", "MaxFailureCountPerUrl", False),
        ("metadata_signature_rsa", "MetadataSignatureRsa", False),
        ("metadata_size", "MetadataSize", False),
        ("deadline", "deadline", False),
        ("more_info", "MoreInfo", False),
        ("prompt", "Prompt", False),
        ("chromeos_version", "ChromeOSVersion", False),
        ("chrome_version", "ChromeVersion", False),
        ("is_delta", "IsDelta", False),
        ("max_days_to_scatter", "MaxDaysToScatter", False),
        ("run", "run", False),
        ("arguments", "arguments", False),
        ("successurl", "successurl", False),
        ("terminateallbrowsers", "terminateallbrowsers", False),
        ("successaction", "successaction", False),
    )


@dataclass(frozen=True)
class Manifest:
    """``<manifest>``. Nebraska may send several (floor versions) to multi-manifest clients.

    ``packages``/``actions`` are None when the wrapper element is absent and ``()`` when
    it is present but empty (Nebraska always writes ``<actions></actions>``).
    """

    version: str | None = None
    is_floor: str | None = None
    floor_reason: str | None = None
    is_target: str | None = None
    packages: tuple[Package, ...] | None = None
    actions: tuple[Action, ...] | None = None
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("version", "version", False),
        ("is_floor", "is_floor", False),
        ("floor_reason", "floor_reason", False),
        ("is_target", "is_target", False),
    )

    @property
    def postinstall(self) -> Action | None:
        """The first ``event="postinstall"`` action (the one update_engine reads), or None."""
        for action in self.actions or ():
            if action.event == "postinstall":
                return action
        return None


@dataclass(frozen=True)
class UpdateCheckResponse:
    """``<updatecheck>`` in a response.

    ``status`` is an open set: ``ok``, ``noupdate`` and any ``error-*`` string are kept as
    sent. ``urls`` is None when ``<urls>`` is absent, ``()`` for Nebraska's ``<urls></urls>``.
    """

    status: str | None = None
    poll_interval: str | None = None
    info: str | None = None
    tttoken: str | None = None
    errorurl: str | None = None
    urls: tuple[Url, ...] | None = None
    manifests: tuple[Manifest, ...] = ()
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("status", "status", False),
        ("poll_interval", "PollInterval", False),
        ("info", "info", False),
        ("tttoken", "tttoken", False),
        ("errorurl", "errorurl", False),
    )

    @property
    def manifest(self) -> Manifest | None:
        """The first manifest: the only one update_engine reads."""
        return self.manifests[0] if self.manifests else None


@dataclass(frozen=True)
class AppResponse:
    """``<app>`` in a response. Nebraska's child order: ping, updatecheck, event*."""

    appid: str | None = None
    status: str | None = None
    experiments: str | None = None
    cohort: str | None = None
    cohorthint: str | None = None
    cohortname: str | None = None
    ping: Ack | None = None
    updatecheck: UpdateCheckResponse | None = None
    events: tuple[Ack, ...] = ()
    data: tuple[Data, ...] = ()
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = tuple(
        (n, n, False) for n in ("appid", "status", "experiments", "cohort", "cohorthint", "cohortname")
    )


@dataclass(frozen=True)
class Response:
    """``<response>``: what the server answers."""

    protocol: str | None = "3.0"
    server: str | None = None
    daystart: DayStart | None = None
    apps: tuple[AppResponse, ...] = ()
    extra: Attrs = ()
    unknown: tuple[XmlElement, ...] = ()

    _ATTRS: ClassVar[AttrSpec] = (
        ("protocol", "protocol", False),
        ("server", "server", False),
    )


Document = Request | Response
