"""A simulated Flatcar machine and the exact bytes its update_engine 0.4.10 sends.

update_engine builds its request with string formatting (omaha_request_action.cc
``GetRequestXml``), so layout, attribute order and whitespace are fixed: 4/8-space
indentation, a stray space before ``>`` on ``<app``, every attribute always present, a
trailing newline (reference omaha-protocol.md §1.3). There are three body flavours:

- update check: ``<ping>`` + ``<updatecheck>`` + one ``<event eventtype="3" ...>``
  (:func:`update_check_request`);
- event report: one ``<event>`` only (:func:`event_request`);
- ping only, while waiting for reboot (:func:`ping_request`).

Attribute values pass through libxml2's ``xmlEncodeEntitiesReentrant`` (:func:`xml_encode`),
which does **not** escape ``"``: a quote in ``MACHINE_ALIAS`` yields malformed XML on the real
client too, and so it does here.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from random import Random

FLATCAR_APPID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
UPDATER_VERSION = "update_engine-0.4.10"
#: update_engine ORs ErrorFlag.TEST_OMAHA_URL into error codes for any other SERVER.
PRODUCTION_SERVER = "https://public.update.flatcar-linux.net/v1/update/"

_XML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ARCH_BY_BOARD = {"amd64-usr": "x86_64", "arm64-usr": "aarch64"}


@dataclass(frozen=True, slots=True)
class Machine:
    """What one machine's update_engine puts into every request.

    ``machine_id`` is /etc/machine-id (32 hex, no braces); ``boot_id`` is the kernel boot id
    in braces; ``aleph`` the first version ever installed; ``alias`` is ``MACHINE_ALIAS``.
    """

    machine_id: str
    boot_id: str
    version: str
    track: str = "stable"
    oem: str = "qemu"
    oem_version: str = ""
    alias: str = ""
    board: str = "amd64-usr"
    aleph: str = ""
    appid: str = FLATCAR_APPID

    @property
    def sp(self) -> str:
        """``os@sp``: ``<version>_<uname -m>``, e.g. ``4081.2.0_x86_64``."""
        return f"{self.version}_{_ARCH_BY_BOARD.get(self.board, 'x86_64')}"

    @classmethod
    def random(cls, rng: Random | None = None, *, version: str = "4081.2.0", **fields: str) -> Machine:
        """A machine with a random machine id and boot id (reproducible with a seeded ``rng``)."""
        rng = rng or Random()
        fields.setdefault("aleph", version)
        return cls(
            machine_id=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
            boot_id=_random_boot_id(rng),
            version=version,
            **fields,
        )

    def rebooted(self, version: str, rng: Random | None = None) -> Machine:
        """The same machine after a reboot into ``version``: a new boot id, same machine id."""
        return dataclasses.replace(self, version=version, boot_id=_random_boot_id(rng or Random()))


def _random_boot_id(rng: Random) -> str:
    return "{" + str(uuid.UUID(int=rng.getrandbits(128), version=4)) + "}"


def xml_encode(value: str) -> str:
    """Escape an attribute value like libxml2's ``xmlEncodeEntitiesReentrant(NULL, ...)``.

    ``& < >`` become entities, CR becomes ``&#13;``, non-ASCII characters become
    ``&#xHEX;`` (upper-case hex of the code point), other control characters are dropped.
    Quotes are left alone: that is the bug that makes a ``"`` in a config value fatal.
    """
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == "\r":
            out.append("&#13;")
        elif code >= 0x80:
            out.append(f"&#x{code:X};")
        elif code >= 0x20 or ch in "\t\n":
            out.append(ch)
    return "".join(out)


def _document(machine: Machine, app_body: str, *, interactive: bool) -> bytes:
    e = xml_encode
    m = machine
    install_source = "ondemandupdate" if interactive else "scheduler"
    return (
        _XML_HEADER
        + f'<request protocol="3.0" version="{UPDATER_VERSION}" updaterversion="{UPDATER_VERSION}"'
        f' installsource="{install_source}" ismachine="1">\n'
        f'    <os version="Chateau" platform="CoreOS" sp="{e(m.sp)}"></os>\n'
        f'    <app appid="{e(m.appid)}" version="{e(m.version)}" track="{e(m.track)}"'
        f' bootid="{e(m.boot_id)}" oem="{e(m.oem)}" oemversion="{e(m.oem_version)}"'
        f' alephversion="{e(m.aleph)}" machineid="{e(m.machine_id)}" machinealias="{e(m.alias)}"'
        f' lang="en-US" board="{e(m.board)}" hardware_class="" delta_okay="false" >\n'
        + app_body
        + "    </app>\n</request>\n"
    ).encode()


def _event(eventtype: int, eventresult: int, errorcode: int | None) -> str:
    # errorcode is written only when the result is not success (1); update_engine prints it
    # with %d, so bit 31 (DevModeFlag) shows as a negative number.
    code = ""
    if eventresult != 1:
        signed = (errorcode or 0) & 0xFFFFFFFF
        signed = signed - (1 << 32) if signed >= 1 << 31 else signed
        code = f' errorcode="{signed}"'
    return f'        <event eventtype="{eventtype}" eventresult="{eventresult}"{code}></event>\n'


def update_check_request(
    machine: Machine, *, previous_version: str = "", interactive: bool = False, rollback: bool = False
) -> bytes:
    """The update check: ping + updatecheck + event 3/2 with ``previousversion``.

    ``previous_version`` is ``""`` in steady state, ``"0.0.0.0"`` on a first boot without
    prefs, the old version on the first check after rebooting into an update. ``rollback``
    sends update_engine's 3/0 errorcode 44 instead (booted back into the previous version).
    """
    if rollback:
        event = _event(3, 0, 44)
    else:
        event = f'        <event eventtype="3" eventresult="2" previousversion="{xml_encode(previous_version)}"></event>\n'
    body = '        <ping active="1"></ping>\n        <updatecheck></updatecheck>\n' + event
    return _document(machine, body, interactive=interactive)


def event_request(
    machine: Machine,
    eventtype: int,
    eventresult: int,
    errorcode: int | None = None,
    *,
    interactive: bool = False,
) -> bytes:
    """An event report: one ``<event>``, no ping, no updatecheck (13/1, 14/1, 3/1, 3/0+code)."""
    return _document(machine, _event(eventtype, eventresult, errorcode), interactive=interactive)


def ping_request(machine: Machine) -> bytes:
    """The ping-only request sent instead of a check while waiting for reboot."""
    return _document(machine, '        <ping active="1"></ping>\n', interactive=False)
