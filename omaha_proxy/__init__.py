"""omaha-proxy: watch, control and replay the Omaha update traffic of Flatcar machines.

The library works without mitmproxy running: codec, builders, the update_engine verdict,
the SQLite store, policies, recordings, replay, the server and the simulator.
"""

from omaha_proxy.client.verdict import Verdict, update_engine_verdict
from omaha_proxy.protocol.build import (
    PackageInfo,
    ack_response,
    noupdate_response,
    offer_response,
    package_info_from_bytes,
    package_info_from_file,
    replace_updatecheck,
    with_codebase,
    with_noupdate,
)
from omaha_proxy.protocol.codes import (
    AppStatus,
    ErrorCode,
    ErrorCodeInfo,
    ErrorFlag,
    EventResult,
    EventType,
    InstanceState,
    UpdateStatus,
    decode_error_code,
)
from omaha_proxy.protocol.decode import encode, parse, parse_request, parse_response, sniff
from omaha_proxy.protocol.describe import RequestKind, app_kind, describe_request, describe_response
from omaha_proxy.protocol.errors import (
    BundleError,
    CodecError,
    OmahaError,
    PayloadError,
    RecordingError,
    ReplayMiss,
    StoreError,
)
from omaha_proxy.protocol.model import (
    Ack,
    Action,
    AppRequest,
    AppResponse,
    Data,
    DayStart,
    Event,
    Hw,
    Manifest,
    Os,
    Package,
    Ping,
    Request,
    Response,
    UpdateCheck,
    UpdateCheckResponse,
    Url,
    XmlElement,
)
from omaha_proxy.protocol.versions import compare_versions, parse_version

__version__ = "0.1.0"

# The heavier layers (SQLite store, servers, simulator, replay, cache, bundles, policies) load
# on first use, so that `import omaha_proxy` for the codec stays light.
_LAZY: dict[str, tuple[str, str]] = {
    "Store": ("omaha_proxy.store.store", "Store"),
    "Machine": ("omaha_proxy.client.machine", "Machine"),
    "simulate": ("omaha_proxy.client.simulator", "simulate"),
    "OmahaServer": ("omaha_proxy.servers.http", "OmahaServer"),
    "serve_package": ("omaha_proxy.servers.serve_package", "serve_package"),
    "Recording": ("omaha_proxy.replay.recording", "Recording"),
    "load_recording": ("omaha_proxy.replay.recording", "load"),
    "Player": ("omaha_proxy.replay.player", "Player"),
    "MissPolicy": ("omaha_proxy.replay.player", "MissPolicy"),
    "PolicyState": ("omaha_proxy.policy.decide", "PolicyState"),
    "Decision": ("omaha_proxy.policy.decide", "Decision"),
    "decide": ("omaha_proxy.policy.decide", "decide"),
    "PayloadCache": ("omaha_proxy.payloads.cache", "PayloadCache"),
    "export_bundle": ("omaha_proxy.payloads.bundle", "export_bundle"),
    "load_bundle": ("omaha_proxy.payloads.bundle", "load_bundle"),
}


def __getattr__(name: str) -> object:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'omaha_proxy' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "Ack",
    "Action",
    "AppRequest",
    "AppResponse",
    "AppStatus",
    "BundleError",
    "CodecError",
    "Data",
    "DayStart",
    "Decision",
    "ErrorCode",
    "ErrorCodeInfo",
    "ErrorFlag",
    "Event",
    "EventResult",
    "EventType",
    "Hw",
    "InstanceState",
    "Machine",
    "Manifest",
    "MissPolicy",
    "OmahaError",
    "OmahaServer",
    "Os",
    "Package",
    "PackageInfo",
    "PayloadCache",
    "PayloadError",
    "Ping",
    "Player",
    "PolicyState",
    "Recording",
    "RecordingError",
    "ReplayMiss",
    "Request",
    "RequestKind",
    "Response",
    "Store",
    "StoreError",
    "UpdateCheck",
    "UpdateCheckResponse",
    "UpdateStatus",
    "Url",
    "Verdict",
    "XmlElement",
    "ack_response",
    "app_kind",
    "compare_versions",
    "decide",
    "decode_error_code",
    "describe_request",
    "describe_response",
    "encode",
    "export_bundle",
    "load_bundle",
    "load_recording",
    "noupdate_response",
    "offer_response",
    "package_info_from_bytes",
    "package_info_from_file",
    "parse",
    "parse_request",
    "parse_response",
    "parse_version",
    "replace_updatecheck",
    "serve_package",
    "simulate",
    "sniff",
    "update_engine_verdict",
    "with_codebase",
    "with_noupdate",
]
