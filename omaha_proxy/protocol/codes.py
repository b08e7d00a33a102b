"""Named Omaha codes: event types and results, update_engine error codes, statuses, states.

Sources: Google's ServerProtocolV3 tables, go-omaha ``codes.go`` and
``client/update_engine_events.go``, Flatcar update_engine 0.4.10 ``action_processor.h``,
Nebraska ``api/events.go`` (instance states).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from typing import Self


class _LookupIntEnum(IntEnum):
    @classmethod
    def lookup(cls, value: int) -> Self | int:
        """Return the named member for ``value``, or ``value`` itself when it has no name."""
        try:
            return cls(value)
        except ValueError:
            return value


class EventType(_LookupIntEnum):
    """``event@eventtype``. update_engine sends 3, 13 and 14; 800 is Nebraska's own."""

    UNKNOWN = 0
    DOWNLOAD_COMPLETE = 1
    INSTALL_COMPLETE = 2
    UPDATE_COMPLETE = 3
    UNINSTALL = 4
    DOWNLOAD_STARTED = 5
    INSTALL_STARTED = 6
    NEW_APP_INSTALL_STARTED = 9
    SETUP_STARTED = 10
    SETUP_FINISHED = 11
    UPDATE_APP_STARTED = 12
    UPDATE_DOWNLOAD_STARTED = 13
    UPDATE_DOWNLOAD_FINISHED = 14
    UPDATE_INSTALLER_STARTED = 15
    SETUP_UPDATE_BEGIN = 16
    SETUP_UPDATE_COMPLETE = 17
    REGISTER_PRODUCT_COMPLETE = 20
    OEM_INSTALL_FIRST_CHECK = 30
    APP_COMMAND_STARTED = 40
    APP_COMMAND_ENDED = 41
    UPDATE_CHECK_FAILURE = 50
    SETUP_FAILURE = 100
    COM_SERVER_FAILURE = 102
    SETUP_UPDATE_FAILURE = 103
    # Nebraska-only "installed, completion held by instance"; update_engine never sends it.
    INSTALLED_HELD = 800


class EventResult(_LookupIntEnum):
    """``event@eventresult``. update_engine sends 0, 1, 2 and 9."""

    ERROR = 0
    SUCCESS = 1
    SUCCESS_REBOOT = 2
    SUCCESS_RESTART_BROWSER = 3
    CANCELLED = 4
    ERROR_INSTALLER_MSI = 5
    ERROR_INSTALLER_OTHER = 6
    NOUPDATE = 7
    ERROR_INSTALLER_SYSTEM = 8
    UPDATE_DEFERRED = 9
    HANDOFF_ERROR = 10


class ErrorCode(_LookupIntEnum):
    """update_engine's ActionExitCode (the base of ``event@errorcode``)."""

    SUCCESS = 0
    ERROR = 1
    OMAHA_REQUEST_ERROR = 2
    OMAHA_RESPONSE_HANDLER_ERROR = 3
    FILESYSTEM_COPIER_ERROR = 4
    POSTINSTALL_RUNNER_ERROR = 5
    SET_BOOTABLE_FLAG_ERROR = 6
    INSTALL_DEVICE_OPEN_ERROR = 7
    KERNEL_DEVICE_OPEN_ERROR = 8
    DOWNLOAD_TRANSFER_ERROR = 9
    PAYLOAD_HASH_MISMATCH = 10
    PAYLOAD_SIZE_MISMATCH = 11
    DOWNLOAD_PAYLOAD_VERIFICATION_ERROR = 12
    DOWNLOAD_NEW_PARTITION_INFO_ERROR = 13
    DOWNLOAD_WRITE_ERROR = 14
    NEW_ROOTFS_VERIFICATION_ERROR = 15
    NEW_KERNEL_VERIFICATION_ERROR = 16
    SIGNED_DELTA_PAYLOAD_EXPECTED = 17
    DOWNLOAD_PAYLOAD_PUBKEY_VERIFICATION_ERROR = 18
    POSTINSTALL_BOOTED_FROM_FIRMWARE_B = 19
    DOWNLOAD_STATE_INITIALIZATION_ERROR = 20
    DOWNLOAD_INVALID_METADATA_MAGIC_STRING = 21
    DOWNLOAD_SIGNATURE_MISSING_IN_MANIFEST = 22
    DOWNLOAD_MANIFEST_PARSE_ERROR = 23
    DOWNLOAD_METADATA_SIGNATURE_ERROR = 24
    DOWNLOAD_METADATA_SIGNATURE_VERIFICATION_ERROR = 25
    DOWNLOAD_METADATA_SIGNATURE_MISMATCH = 26
    DOWNLOAD_OPERATION_HASH_VERIFICATION_ERROR = 27
    DOWNLOAD_OPERATION_EXECUTION_ERROR = 28
    DOWNLOAD_OPERATION_HASH_MISMATCH = 29
    OMAHA_REQUEST_EMPTY_RESPONSE = 30
    OMAHA_REQUEST_XML_PARSE_ERROR = 31
    DOWNLOAD_INVALID_METADATA_SIZE = 32
    DOWNLOAD_INVALID_METADATA_SIGNATURE = 33
    OMAHA_RESPONSE_INVALID = 34
    OMAHA_UPDATE_IGNORED_PER_POLICY = 35
    OMAHA_UPDATE_DEFERRED_PER_POLICY = 36
    OMAHA_ERROR_IN_HTTP_RESPONSE = 37
    DOWNLOAD_OPERATION_HASH_MISSING = 38
    DOWNLOAD_METADATA_SIGNATURE_MISSING = 39
    OMAHA_UPDATE_DEFERRED_FOR_BACKOFF = 40
    POSTINSTALL_POWERWASH_ERROR = 41
    NEW_PCR_POLICY_VERIFICATION_ERROR = 42
    NEW_PCR_POLICY_HTTP_ERROR = 43
    ROLLBACK = 44  # missing in go-omaha; sent as 3/0 inside an update check
    DOWNLOAD_INCOMPLETE = 100


# update_engine reports HTTP failures as 2000 + status (e.g. 2503).
HTTP_RESPONSE_BASE = 2000


class ErrorFlag(IntFlag):
    """Bits update_engine ORs into a reported error code."""

    TEST_OMAHA_URL = 1 << 28  # SERVER is not the production URL (so: behind our proxy)
    TEST_IMAGE = 1 << 29
    RESUMED = 1 << 30
    DEV_MODE = 1 << 31


_FLAG_MASK = 0xF0000000
_FLAG_NAMES = {
    ErrorFlag.TEST_OMAHA_URL: "non-production-server",
    ErrorFlag.TEST_IMAGE: "test-image",
    ErrorFlag.RESUMED: "resumed",
    ErrorFlag.DEV_MODE: "dev-mode",
}


@dataclass(frozen=True, slots=True)
class ErrorCodeInfo:
    """A reported ``errorcode`` split into its base code and flag bits."""

    raw: int
    base: int
    flags: ErrorFlag

    @property
    def name(self) -> str:
        """The base code's name, e.g. ``PayloadHashMismatch`` or ``HTTP 503``."""
        return error_code_name(self.base)

    @property
    def flag_names(self) -> tuple[str, ...]:
        """Readable names of the set flag bits, lowest bit first."""
        return tuple(name for flag, name in _FLAG_NAMES.items() if flag in self.flags)

    def __str__(self) -> str:
        text = f"{self.raw} = {self.name} ({self.base})"
        return text + "".join(f" + {n}" for n in self.flag_names)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def error_code_name(base: int) -> str:
    """Name of a base error code: ``PayloadHashMismatch``, ``HTTP 503``, or ``error 77``."""
    if HTTP_RESPONSE_BASE <= base < HTTP_RESPONSE_BASE + 1000:
        return f"HTTP {base - HTTP_RESPONSE_BASE}"
    member = ErrorCode.lookup(base)
    return _camel(member.name) if isinstance(member, ErrorCode) else f"error {base}"


def decode_error_code(code: int) -> ErrorCodeInfo:
    """Split update_engine's ``errorcode`` into base code and flags.

    Negative values (bit 31 printed signed, or Windows HRESULTs) are taken as unsigned 32-bit.
    E.g. 268435466 -> base 10 (PayloadHashMismatch) + TEST_OMAHA_URL.
    """
    unsigned = code & 0xFFFFFFFF
    return ErrorCodeInfo(raw=code, base=unsigned & ~_FLAG_MASK, flags=ErrorFlag(unsigned & _FLAG_MASK))


class UpdateStatus(StrEnum):
    """Known ``updatecheck@status`` values. The set is open: models keep any string."""

    OK = "ok"
    NOUPDATE = "noupdate"
    ERROR_INTERNAL = "error-internal"
    ERROR_HASH = "error-hash"
    ERROR_OS_NOT_SUPPORTED = "error-osnotsupported"
    ERROR_HW_NOT_SUPPORTED = "error-hwnotsupported"
    ERROR_UNSUPPORTED_PROTOCOL = "error-unsupportedProtocol"
    ERROR_PLUGIN_RESTRICTED_HOST = "error-pluginRestrictedHost"


class AppStatus(StrEnum):
    """Known ``app@status`` values (spec, go-omaha and Nebraska). Open set as well."""

    OK = "ok"
    RESTRICTED = "restricted"
    ERROR_UNKNOWN_APPLICATION = "error-unknownApplication"
    ERROR_INVALID_APP_ID = "error-invalidAppId"
    ERROR_NO_PACKAGE_FOUND = "error-noPackageFound"
    ERROR_UNKNOWN_APPLICATION_OR_GROUP = "error-unknownApplicationOrGroup"
    ERROR_INSTANCE_REGISTRATION_FAILED = "error-instanceRegistrationFailed"
    ERROR_MAX_UPDATES_PER_PERIOD = "error-maxUpdatesPerPeriodLimitReached"
    ERROR_MAX_CONCURRENT_UPDATES = "error-maxConcurrentUpdatesLimitReached"
    ERROR_MAX_TIMED_OUT_UPDATES = "error-maxTimedOutUpdatesLimitReached"
    ERROR_UPDATES_DISABLED = "error-updatesDisabled"
    ERROR_COULD_NOT_CHECK_UPDATES_STATS = "error-couldNotCheckUpdatesStats"
    ERROR_UPDATE_IN_PROGRESS = "error-updateInProgressOnInstance"
    ERROR_FAILED_TO_RETRIEVE_PACKAGE_INFO = "error-failedToRetrieveUpdatePackageInfo"


class InstanceState(IntEnum):
    """Nebraska's instance states (ids as in its database, reference §2.5)."""

    UNDEFINED = 1
    UPDATE_GRANTED = 2
    ERROR = 3
    COMPLETE = 4
    INSTALLED = 5
    DOWNLOADED = 6
    DOWNLOADING = 7
    ON_HOLD = 8

    @property
    def label(self) -> str:
        """Nebraska's spelling: ``UpdateGranted``, ``OnHold``..."""
        return _camel(self.name)
