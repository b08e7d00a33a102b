"""The control option specs: block, pin and rollout, parsed into frozen values.

Each ``parse_*`` function takes the option string a user wrote (``--set omaha_block=...``)
and returns a frozen spec, or ``None`` when the option is off. A bad value raises
``ValueError`` whose message lists the valid forms; the addon turns it into ``OptionsError``.
Nothing here knows about mitmproxy, sqlite or the clock.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from omaha_proxy.protocol.model import AppRequest
from omaha_proxy.protocol.versions import parse_version

BLOCK_FORMS = (
    "valid forms: 'true' (every machine), 'false' or '' (off), or a comma-separated list of "
    "selectors 'track:<name>', 'machine:<id>', 'alias:<glob>', "
    "e.g. 'track:beta,machine:5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e,alias:canary-*'"
)
PIN_FORMS = (
    "valid forms: '' (off), '<version>' (every machine), or a comma-separated list of "
    "'<version>', '<track>=<version>', 'track:<name>=<version>', 'machine:<id>=<version>', "
    "'alias:<glob>=<version>', e.g. 'stable=4081.2.0,beta=4152.1.0,machine:5d2b...=4081.2.0'"
)
ROLLOUT_FORMS = (
    "valid forms: '' (off), or ';'-separated terms 'max=<n>/<period>' (period like 30m, 1h, "
    "1d, 1h30m), 'percent=<0-100>', 'salt=<text>', "
    "'window=[<days>] <HH:MM>-<HH:MM> [<timezone>]' (days like Mon-Fri or Sat,Sun; "
    "repeat window= for several), e.g. 'max=2/1h; percent=25; window=Mon-Fri 09:00-17:00 Europe/Berlin'"
)
BLOCK_EVENTS_FORMS = "valid values: 'forward' (default) or 'ack'"

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _norm_machine(machine_id: str | None) -> str:
    """Machine ids compare case-insensitively and without Nebraska-style braces."""
    return (machine_id or "").strip().strip("{}").lower()


# ------------------------------------------------------------------------------------ block


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """Which machines are blocked: all of them, or those matching any selector."""

    all: bool = False
    tracks: frozenset[str] = frozenset()
    machines: frozenset[str] = frozenset()
    aliases: tuple[str, ...] = ()

    def match(self, app: AppRequest) -> str | None:
        """Return the selector that blocks ``app`` (e.g. ``"track:beta"``), or None."""
        if self.all:
            return "all"
        if app.track is not None and app.track in self.tracks:
            return f"track:{app.track}"
        machine = _norm_machine(app.machineid)
        if machine and machine in self.machines:
            return f"machine:{machine}"
        for pattern in self.aliases:
            if app.machinealias and fnmatch.fnmatchcase(app.machinealias, pattern):
                return f"alias:{pattern}"
        return None


def parse_block_spec(spec: str) -> BlockSpec | None:
    """Parse ``omaha_block``. Returns None when off; raises ValueError listing valid forms."""
    text = spec.strip()
    if text.lower() in ("", "false", "off", "no", "0"):
        return None
    if text.lower() in ("true", "all", "on", "yes", "1"):
        return BlockSpec(all=True)
    tracks: set[str] = set()
    machines: set[str] = set()
    aliases: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        kind, sep, value = item.partition(":")
        value = value.strip()
        if not sep or not value:
            raise ValueError(f"bad block selector {item!r}; {BLOCK_FORMS}")
        if kind == "track":
            tracks.add(value)
        elif kind == "machine":
            machines.add(_norm_machine(value))
        elif kind == "alias":
            aliases.append(value)
        else:
            raise ValueError(f"unknown block selector kind {kind!r} in {item!r}; {BLOCK_FORMS}")
    return BlockSpec(tracks=frozenset(tracks), machines=frozenset(machines), aliases=tuple(aliases))


def parse_block_events(value: str) -> bool:
    """Parse ``omaha_block_events``: True when blocked machines' pings/events are acked locally."""
    if value not in ("forward", "ack"):
        raise ValueError(f"bad omaha_block_events {value!r}; {BLOCK_EVENTS_FORMS}")
    return value == "ack"


# -------------------------------------------------------------------------------------- pin


@dataclass(frozen=True, slots=True)
class PinSpec:
    """Pinned versions: per machine, then per alias glob, then per track, then for all."""

    default: str | None = None
    tracks: tuple[tuple[str, str], ...] = ()
    machines: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    def pin_for(self, app: AppRequest) -> tuple[str, str] | None:
        """Return ``(version, selector)`` pinning ``app``, or None when it is not pinned."""
        machine = _norm_machine(app.machineid)
        for key, version in self.machines:
            if machine and key == machine:
                return version, f"machine:{key}"
        for pattern, version in self.aliases:
            if app.machinealias and fnmatch.fnmatchcase(app.machinealias, pattern):
                return version, f"alias:{pattern}"
        for track, version in self.tracks:
            if app.track == track:
                return version, f"track:{track}"
        if self.default is not None:
            return self.default, "all"
        return None


def _check_version(version: str, item: str) -> str:
    if parse_version(version) is None:
        raise ValueError(f"bad version {version!r} in {item!r} (dotted numbers expected); {PIN_FORMS}")
    return version


def parse_pin_spec(spec: str) -> PinSpec | None:
    """Parse ``omaha_pin``. Returns None when off; raises ValueError listing valid forms."""
    text = spec.strip()
    if text.lower() in ("", "false", "off", "none"):
        return None
    default: str | None = None
    tracks: dict[str, str] = {}
    machines: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        key, sep, version = (s.strip() for s in item.partition("="))
        if not sep:
            if default is not None:
                raise ValueError(f"two default pins {default!r} and {item!r}; {PIN_FORMS}")
            default = _check_version(key, item)
            continue
        if not key:
            raise ValueError(f"missing selector in {item!r}; {PIN_FORMS}")
        _check_version(version, item)
        kind, colon, value = key.partition(":")
        if not colon:
            tracks[key] = version
        elif kind == "track" and value:
            tracks[value] = version
        elif kind == "machine" and value:
            machines[_norm_machine(value)] = version
        elif kind == "alias" and value:
            aliases[value] = version
        else:
            raise ValueError(f"unknown pin selector {key!r} in {item!r}; {PIN_FORMS}")
    return PinSpec(
        default=default,
        tracks=tuple(tracks.items()),
        machines=tuple(machines.items()),
        aliases=tuple(aliases.items()),
    )


# ---------------------------------------------------------------------------------- rollout


@dataclass(frozen=True, slots=True)
class Window:
    """Days of the week and a time range in a timezone; a range may cross midnight."""

    days: frozenset[int]  # 0 = Monday, like datetime.weekday()
    start: time
    end: time
    tz: str = "UTC"
    text: str = ""

    def contains(self, now: datetime) -> bool:
        """True when the aware datetime ``now`` falls inside the window (start inclusive)."""
        local = now.astimezone(ZoneInfo(self.tz))
        t = local.time().replace(tzinfo=None)
        if self.start == self.end:  # 00:00-24:00: the whole day
            return local.weekday() in self.days
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= t < self.end
        # Crossing midnight: the part after midnight belongs to the previous day's window.
        yesterday = (local.weekday() - 1) % 7
        return (local.weekday() in self.days and t >= self.start) or (yesterday in self.days and t < self.end)


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """Nebraska-style rollout: max grants per period, a stable percentage, time windows."""

    max_grants: int | None = None
    period: timedelta | None = None
    percent: float | None = None
    salt: str = "omaha-proxy"
    windows: tuple[Window, ...] = ()

    def bucket(self, machine_id: str | None) -> float:
        """The machine's stable position in [0, 100): it is in the rollout when below percent."""
        digest = hashlib.sha256(f"{self.salt}:{_norm_machine(machine_id)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % 10_000 / 100


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TERM_START = re.compile(r"[;,](?=\s*(?:max|percent|salt|window)\s*=)")


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``1h30m``, ``1d``, ``2w``; raises ValueError."""
    compact = text.strip().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"bad period {text!r} (e.g. 30m, 1h, 1h30m, 1d)")
    seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION.findall(compact))
    if seconds <= 0:
        raise ValueError(f"period {text!r} must be positive")
    return timedelta(seconds=seconds)


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        first, dash, last = part.partition("-")
        if first[:3] not in _DAYS or (dash and last[:3] not in _DAYS):
            raise ValueError(f"bad days {text!r} (e.g. Mon-Fri, Sat,Sun)")
        a = _DAYS.index(first[:3])
        b = _DAYS.index(last[:3]) if dash else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _parse_hhmm(text: str) -> time:
    """``HH:MM``; ``24:00`` means the midnight at the end of the day."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not match or int(match[1]) > 24 or int(match[2]) > 59 or (int(match[1]) == 24 and int(match[2])):
        raise ValueError(f"bad time {text!r} (HH:MM expected)")
    return time(int(match[1]) % 24, int(match[2]))


def parse_window(text: str) -> Window:
    """Parse ``[days] HH:MM-HH:MM [timezone]``; raises ValueError."""
    parts = text.split()
    days = frozenset(range(7))
    if parts and not parts[0][:1].isdigit():
        days = _parse_days(parts.pop(0))
    if not parts or len(parts) > 2:
        raise ValueError(f"bad window {text!r}")
    start_text, dash, end_text = parts[0].partition("-")
    if not dash:
        raise ValueError(f"bad window {text!r}: time range HH:MM-HH:MM expected")
    start, end = _parse_hhmm(start_text), _parse_hhmm(end_text)
    tz = parts[1] if len(parts) == 2 else "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown timezone {tz!r} in window {text!r}") from e
    return Window(days=days, start=start, end=end, tz=tz, text=" ".join(text.split()))


def parse_rollout_spec(spec: str) -> RolloutSpec | None:
    """Parse ``omaha_rollout``. Returns None when off; raises ValueError listing valid forms."""
    text = spec.strip()
    if text.lower() in ("", "false", "off", "none"):
        return None
    values: dict[str, object] = {}
    windows: list[Window] = []
    for term in (t.strip() for t in _TERM_START.sub(";", text).split(";")):
        if not term:
            continue
        key, sep, value = (s.strip() for s in term.partition("="))
        try:
            if not sep or not value:
                raise ValueError(f"bad term {term!r}")
            if key == "max":
                count, slash, period = value.partition("/")
                if not slash or not count.isdigit() or int(count) < 0:
                    raise ValueError(f"bad max {value!r} (<n>/<period> expected, e.g. 2/1h)")
                values["max_grants"], values["period"] = int(count), parse_duration(period)
            elif key == "percent":
                percent = float(value.rstrip("%"))
                if not 0 <= percent <= 100:
                    raise ValueError(f"percent {value!r} outside 0-100")
                values["percent"] = percent
            elif key == "salt":
                values["salt"] = value
            elif key == "window":
                windows.append(parse_window(value))
            else:
                raise ValueError(f"unknown term {key!r}")
        except ValueError as e:
            raise ValueError(f"bad rollout spec {spec!r}: {e}; {ROLLOUT_FORMS}") from e
    rollout = RolloutSpec(windows=tuple(windows), **values)  # type: ignore[arg-type]
    if rollout.max_grants is None and rollout.percent is None and not rollout.windows:
        raise ValueError(f"rollout spec {spec!r} sets no limit; {ROLLOUT_FORMS}")
    return rollout


def describe_rollout(rollout: RolloutSpec) -> str:
    """One line for ``omaha.status``: ``max 2/1:00:00, 25%, window Mon-Fri 09:00-17:00 UTC``."""
    parts = []
    if rollout.max_grants is not None:
        parts.append(f"max {rollout.max_grants} per {rollout.period}")
    if rollout.percent is not None:
        parts.append(f"{rollout.percent:g}% (salt {rollout.salt!r})")
    parts.extend(f"window {w.text}" for w in rollout.windows)
    return ", ".join(parts)
