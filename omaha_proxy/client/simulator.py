"""An update_engine 0.4.10 simulator: one machine's walk, and a fleet of them at once.

Each :class:`SimulatedMachine` follows the real client's sequence (reference
omaha-protocol.md §1.5), one scheduler tick at a time:

1. update check (ping + updatecheck + event 3/2 with ``previousversion`` ``""``,
   ``"0.0.0.0"`` on a first boot, the old version right after rebooting into an update),
   judged with :func:`omaha_proxy.client.verdict.update_engine_verdict`;
2. on an offer: event 13/1, payload GET (``codebase + name``, each URL in turn), size then
   base64 SHA-256 verified exactly as update_engine does (error 11, then 10), event 14/1,
   the postinstall's OEM extension download when the manifest lists ``oem-<oem>.gz`` (ue-rs:
   ``Url::join`` on the first codebase, hex ``hash_sha256`` and base64 SHA-1), event 3/1;
3. while waiting for reboot, ping-only requests; after ``reboot_after`` of them the machine
   "reboots" (new boot id, running the offered version) and its next check carries event 3/2
   with ``previousversion=<old>``.

Any failure ends the attempt with one 3/0 event whose code carries update_engine's flags
(``1<<28`` whenever SERVER is not the production URL; HTTP failures are 2000 + status). A
``noupdate`` produces no event. Payload signatures (CrAU) are not checked.

:func:`simulate` runs many machines with bounded concurrency and total time; the 45-minute
interval is compressed to ``interval`` seconds (±5/45 fuzz, as update_engine's ±5 min), and
doubles after an HTTP 500/503 up to the 4-hour cap, as update_engine's scheduler does.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import enum
import hashlib
import random
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from omaha_proxy.client.http import DeadlineExceeded, HttpClient, HttpResult
from omaha_proxy.client.machine import (
    PRODUCTION_SERVER,
    Machine,
    event_request,
    ping_request,
    update_check_request,
)
from omaha_proxy.client.verdict import Verdict, update_engine_verdict
from omaha_proxy.protocol.codes import ErrorCode, ErrorFlag, decode_error_code
from omaha_proxy.protocol.decode import parse_response
from omaha_proxy.protocol.errors import CodecError
from omaha_proxy.protocol.model import Package, Response

HTTP_BASE = 2000  # update_engine: kActionCodeOmahaRequestHTTPResponseBase
RETRY_DELAY = 10 / 2700  # 10 s, as a fraction of the 45-minute interval
MAX_RESUMES = 20
MAX_BACKOFF = (
    240 / 45
)  # the interval after repeated HTTP 500/503: at most 4 h instead of 45 min  # libcurl_http_fetcher: a truncated download is resumed up to 20 times


class State(enum.StrEnum):
    """Where a simulated machine is in update_engine's cycle."""

    IDLE = "idle"
    NEED_REBOOT = "need-reboot"


@dataclass(frozen=True, slots=True)
class Step:
    """One HTTP exchange a machine made, and what update_engine made of it."""

    at: float
    kind: str  # updatecheck | event | ping | download
    detail: str  # "3/2 previousversion=''", "13/1", a URL ...
    status: int | None  # HTTP status; None when no response arrived
    outcome: str  # noupdate | update <v> | error <code> ... | ok | acked
    duration: float


@dataclass(frozen=True, slots=True)
class MachineReport:
    """What happened to one machine during a simulation."""

    machine_id: str
    alias: str
    start_version: str
    version: str
    state: str
    updates: int
    error_codes: tuple[int, ...]
    steps: tuple[Step, ...]
    finished: bool = True

    @property
    def outcome(self) -> str:
        """One word for the fleet table: updated, waiting-reboot, failed, current, unfinished."""
        if not self.finished:
            return "unfinished"
        if self.state == State.NEED_REBOOT:
            return "waiting-reboot"
        if self.updates:
            return "updated"
        return "failed" if self.error_codes else "current"


class SimulatedMachine:
    """One machine's update_engine state machine (mutable; used by one thread at a time)."""

    def __init__(
        self,
        machine: Machine,
        server: str,
        http: HttpClient,
        *,
        first_boot: bool = False,
        interactive: bool = False,
        reboot_after: int = 1,
        retry_delay: float = 0.0,
        rng: random.Random | None = None,
        clock_start: float | None = None,
    ) -> None:
        self.machine = machine
        self.start = machine
        self.server = server
        self.http = http
        self.retry_delay = retry_delay
        self.interactive = interactive
        self.reboot_after = reboot_after
        self.rng = rng or random.Random()
        self.flags = 0 if server == PRODUCTION_SERVER else int(ErrorFlag.TEST_OMAHA_URL)
        self.state = State.IDLE
        self.previous_version = "0.0.0.0" if first_boot else ""
        self.pending_version: str | None = None
        self.pings = 0
        self.backoff = 1.0  # multiplies the next interval after HTTP 500/503
        self.updates = 0
        self.error_codes: list[int] = []
        self.steps: list[Step] = []
        self.t0 = time.monotonic() if clock_start is None else clock_start

    # ----------------------------------------------------------------- the cycle

    def tick(self) -> None:
        """One scheduler tick (every ~45 min on a real machine).

        With ``interactive`` the first tick is ``update_engine_client -update``: its check and
        the events of that attempt say ``installsource="ondemandupdate"``; later ones are
        scheduled.
        """
        try:
            if self.state is State.NEED_REBOOT:
                if self.pings < self.reboot_after:
                    self._ping()
                    return
                self._reboot()
            self._check()
        finally:
            self.interactive = False

    def _reboot(self) -> None:
        old = self.machine.version
        self.machine = self.machine.rebooted(self.pending_version or old, self.rng)
        self.previous_version = old  # the "SuccessReboot" signal on the next check
        self.state, self.pending_version, self.pings = State.IDLE, None, 0
        self.updates += 1

    def _check(self) -> None:
        previous = self.previous_version
        body = update_check_request(self.machine, previous_version=previous, interactive=self.interactive)
        detail = f"3/2 previousversion={previous!r}"
        # Only the update check is retried when no HTTP answer arrives at all: after 10 s,
        # 3 times for a scheduled check, once for an interactive one (reference §1.2).
        retries = 1 if self.interactive else 3
        result, t, took = self._post(body)
        while result.status is None and retries:
            self._record("updatecheck", detail, result, f"no response ({result.error}); retrying", t, took)
            self.http.sleep(self.retry_delay)
            retries -= 1
            result, t, took = self._post(body)
        if result.status is not None:
            self.previous_version = ""  # the pref is reset once the check went through
            self._note_status(result.status)
        if not result.ok:
            status = result.status or 0
            code = HTTP_BASE + (0 if 200 <= status < 300 else status)  # a cut 2xx answer: no status
            self._record("updatecheck", detail, result, f"error {code} ({result.error or 'HTTP'})", t, took)
            self._fail(code)
            return
        verdict = update_engine_verdict(result.body)
        if verdict.kind == "noupdate":
            self._record("updatecheck", detail, result, "noupdate", t, took)
        elif verdict.kind == "error":
            self._record(
                "updatecheck", detail, result, f"error {verdict.error_code}: {verdict.reason}", t, took
            )
            self._fail(int(verdict.error_code or ErrorCode.OMAHA_RESPONSE_INVALID))
        else:
            self._record("updatecheck", detail, result, f"update {verdict.version}", t, took)
            self._install(verdict, result.body)

    def _install(self, verdict: Verdict, response_body: bytes) -> None:
        self._event(13, 1)
        code = self._download(list(verdict.urls), verdict.size or 0, verdict.sha256_b64 or "")
        if code:
            self._fail(code)
            return
        self._event(14, 1)
        code = self._postinstall(response_body)
        if code:
            self._fail(code)
            return
        self._event(3, 1)
        self.state, self.pending_version, self.pings = State.NEED_REBOOT, verdict.version, 0

    def _download(self, urls: list[str], size: int, sha256_b64: str) -> int:
        """Fetch the payload from the first URL that delivers it; returns 0 or an error code."""
        for url in urls:
            t = time.monotonic()
            result, received, digest, resumes = self._fetch(url)
            took = time.monotonic() - t
            if result.status is not None:
                self._note_status(result.status)
            if not result.ok:
                self._record("download", url, result, f"failed ({result.error or result.status})", t, took)
                continue
            # update_engine: byte count first (11), then base64 SHA-256 as a plain string (10).
            if received != size:
                self._record("download", url, result, f"size {received} != {size}", t, took)
                return ErrorCode.PAYLOAD_SIZE_MISMATCH
            actual = base64.b64encode(digest).decode()
            if actual != sha256_b64:
                self._record("download", url, result, f"sha256 {actual} != {sha256_b64}", t, took)
                return ErrorCode.PAYLOAD_HASH_MISMATCH
            resumed = f" (resumed {resumes}x)" if resumes else ""
            self._record("download", url, result, f"ok {size} bytes{resumed}", t, took)
            return 0
        return ErrorCode.DOWNLOAD_TRANSFER_ERROR

    def _fetch(self, url: str) -> tuple[HttpResult, int, bytes, int]:
        """GET ``url``, resuming a cut transfer with ``Range`` (update_engine: up to 20 times).

        Returns the last result, the byte count, the SHA-256 of what arrived and the number of
        resumes. A server that
        ignores the ``Range`` and answers 200 starts the count and the hash over.
        """
        got = _Hashed()
        resumes = 0
        while True:
            headers = {"Range": f"bytes={got.size}-"} if got.size else None
            result = self.http.request("GET", url, headers=headers, sink=got.update, on_headers=got.start)
            if result.ok or result.status not in (200, 206) or resumes == MAX_RESUMES:
                return result, got.size, got.sha256.digest(), resumes
            resumes += 1

    def _postinstall(self, response_body: bytes) -> int:
        """ue-rs ``download_sysext``: fetch and check ``oem-<oem>.gz`` if the manifest lists it."""
        if not self.machine.oem:
            return 0
        try:
            response = parse_response(response_body)
        except CodecError:
            return 0
        found = _extension(response, f"oem-{self.machine.oem}.gz")
        if found is None:
            return 0
        url, package = found
        sha256, sha1 = hashlib.sha256(), hashlib.sha1()

        def sink(chunk: bytes) -> None:
            sha256.update(chunk)
            sha1.update(chunk)

        t = time.monotonic()
        result = self.http.request("GET", url, sink=sink)
        took = time.monotonic() - t
        problem = None
        if not result.ok:
            problem = f"failed ({result.error or result.status})"
        elif package.hash_sha256 and sha256.hexdigest() != package.hash_sha256.lower():
            problem = "hash_sha256 mismatch"
        elif package.hash and base64.b64encode(sha1.digest()).decode() != package.hash:
            problem = "hash (sha1) mismatch"
        self._record("download", url, result, problem or f"ok {result.received} bytes", t, took)
        return ErrorCode.POSTINSTALL_RUNNER_ERROR if problem else 0

    def _ping(self) -> None:
        result, t, took = self._post(ping_request(self.machine))
        self.pings += 1
        outcome = (
            "acked"
            if result.ok and _well_formed(result.body)
            else f"failed ({result.error or result.status})"
        )
        self._record("ping", "ping only", result, outcome, t, took)

    def _event(self, eventtype: int, eventresult: int, errorcode: int | None = None) -> None:
        # Events are best effort: update_engine ignores the transport result and the body.
        body = event_request(self.machine, eventtype, eventresult, errorcode, interactive=self.interactive)
        result, t, took = self._post(body)
        detail = f"{eventtype}/{eventresult}" + (f" errorcode={errorcode}" if errorcode is not None else "")
        self._record("event", detail, result, "acked" if result.ok else "not delivered", t, took)

    def _note_status(self, status: int) -> None:
        # update_check_scheduler: a 500 or 503 on the check or the payload doubles the next
        # interval, capped at 4 h; any other answer brings it back to 45 min.
        self.backoff = min(self.backoff * 2, MAX_BACKOFF) if status in (500, 503) else 1.0

    def _fail(self, code: int) -> None:
        flagged = code | self.flags
        self.error_codes.append(flagged)
        self._event(3, 0, flagged)

    # ------------------------------------------------------------------ helpers

    def _post(self, body: bytes) -> tuple[HttpResult, float, float]:
        t = time.monotonic()
        result = self.http.request("POST", self.server, body, content_type="text/xml")
        return result, t, time.monotonic() - t

    def _record(
        self, kind: str, detail: str, result: HttpResult, outcome: str, t: float, took: float
    ) -> None:
        self.steps.append(Step(round(t - self.t0, 4), kind, detail, result.status, outcome, round(took, 4)))

    def report(self, *, finished: bool = True) -> MachineReport:
        """A snapshot of what happened so far."""
        return MachineReport(
            machine_id=self.start.machine_id,
            alias=self.start.alias,
            start_version=self.start.version,
            version=self.machine.version,
            state=str(self.state),
            updates=self.updates,
            error_codes=tuple(self.error_codes),
            steps=tuple(self.steps),
            finished=finished,
        )


class _Hashed:
    """Byte count and SHA-256 of a download that may arrive in several resumed parts."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def start(self, status: int, headers: dict[str, str]) -> None:
        if status != 206:  # a full answer (or an error page) replaces what came before
            self.sha256, self.size = hashlib.sha256(), 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.size += len(chunk)


def _well_formed(body: bytes) -> bool:
    try:
        parse_response(body)
    except CodecError:
        return False
    return True


def _extension(response: Response, name: str) -> tuple[str, Package] | None:
    """The ``(url, package)`` of an extension package in the first app's first manifest."""
    for app in response.apps:
        uc = app.updatecheck
        if uc is None or not uc.manifests or not uc.urls:
            continue
        for package in uc.manifests[0].packages or ():
            if package.name == name and uc.urls[0].codebase:
                return urllib.parse.urljoin(uc.urls[0].codebase, name), package
        return None
    return None


# ----------------------------------------------------------------------------- fleet


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """The result of :func:`simulate`."""

    url: str
    proxy: str | None
    cycles: int
    duration: float
    machines: tuple[MachineReport, ...]
    timed_out: bool

    @property
    def requests(self) -> int:
        """HTTP exchanges made by all machines (Omaha POSTs and payload GETs)."""
        return sum(len(m.steps) for m in self.machines)

    def summary(self) -> dict[str, int]:
        """Machines per outcome (updated, current, failed, waiting-reboot, unfinished)."""
        counts: dict[str, int] = {}
        for m in self.machines:
            counts[m.outcome] = counts.get(m.outcome, 0) + 1
        return counts

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (error codes also decoded)."""
        data = dataclasses.asdict(self)
        data["summary"] = self.summary()
        data["requests"] = self.requests
        for m, raw in zip(data["machines"], self.machines, strict=True):  # type: ignore[call-overload]
            m["outcome"] = raw.outcome
            m["errors"] = [str(decode_error_code(c)) for c in raw.error_codes]
        return data


def format_report(report: SimulationReport) -> str:
    """The per-machine table plus a summary line."""
    rows: list[tuple[str, ...]] = [("MACHINE", "ALIAS", "FROM", "TO", "OUTCOME", "REQS", "ERRORS")]
    for m in report.machines:
        rows.append((m.machine_id[:12], m.alias, m.start_version, m.version, m.outcome, str(len(m.steps)),
                     ",".join(str(c) for c in m.error_codes) or "-"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rows.insert(1, tuple("-" * w for w in widths))
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.summary().items()))
    rate = report.requests / report.duration if report.duration else 0.0
    lines.append(
        f"{len(report.machines)} machines: {counts}; {report.requests} requests in {report.duration:.2f}s "
        f"({rate:.0f}/s){'; TIMED OUT' if report.timed_out else ''}"
    )
    return "\n".join(lines)


def make_fleet(
    count: int,
    *,
    version: str = "4081.2.0",
    track: str = "stable",
    oem: str = "qemu",
    board: str = "amd64-usr",
    alias_prefix: str = "sim-",
    seed: int | None = 0,
) -> list[Machine]:
    """``count`` machines with reproducible random ids, aliased ``<alias_prefix>001``..."""
    rng = random.Random(seed)
    return [
        Machine.random(
            rng, version=version, track=track, oem=oem, board=board, alias=f"{alias_prefix}{i + 1:03d}"
        )
        for i in range(count)
    ]


def simulate(
    url: str,
    machines: int | Sequence[Machine] = 1,
    *,
    concurrency: int = 8,
    cycles: int = 3,
    interval: float = 0.0,
    timeout: float = 60.0,
    request_timeout: float = 30.0,
    proxy: str | None = None,
    version: str = "4081.2.0",
    track: str = "stable",
    oem: str = "qemu",
    board: str = "amd64-usr",
    first_boot: bool = False,
    interactive: bool = False,
    reboot_after: int = 1,
    alias_prefix: str = "sim-",
    seed: int | None = 0,
) -> SimulationReport:
    """Run ``machines`` simulated update_engines against ``url`` (the ``SERVER`` value).

    Each machine makes ``cycles`` scheduler ticks, ``interval`` seconds apart (the compressed
    45 minutes; the first tick comes within one interval). At most ``concurrency`` ticks run
    at once; ``timeout`` bounds the whole run (machines cut short are reported
    ``unfinished``). ``proxy`` sends everything through an HTTP proxy (regular mode).
    When ``machines`` is a count, ``version``, ``track``, ``oem``, ``board``, ``alias_prefix``
    and ``seed`` shape the generated fleet (:func:`make_fleet`); a sequence of
    :class:`Machine` is used as given. Returns a :class:`SimulationReport`; network trouble
    is reported, never raised; raises ValueError for impossible parameters.
    """
    fleet = (
        make_fleet(
            machines, version=version, track=track, oem=oem, board=board, alias_prefix=alias_prefix, seed=seed
        )
        if isinstance(machines, int)
        else list(machines)
    )
    if concurrency < 1 or cycles < 0 or interval < 0 or timeout <= 0:
        raise ValueError("need concurrency >= 1, cycles >= 0, interval >= 0, timeout > 0")
    coro = _run(url, fleet, concurrency, cycles, interval, timeout, request_timeout, proxy,
                first_boot, interactive, reboot_after, seed)  # fmt: skip
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:  # called from async code: own loop
        return ex.submit(asyncio.run, coro).result()


async def _run(
    url: str,
    fleet: list[Machine],
    concurrency: int,
    cycles: int,
    interval: float,
    timeout: float,
    request_timeout: float,
    proxy: str | None,
    first_boot: bool,
    interactive: bool,
    reboot_after: int,
    seed: int | None,
) -> SimulationReport:
    t0 = time.monotonic()
    http = HttpClient(proxy=proxy, timeout=request_timeout, deadline=t0 + timeout)
    rng = random.Random(seed)
    sims = [
        SimulatedMachine(m, url, http, first_boot=first_boot, interactive=interactive, reboot_after=reboot_after,
                         retry_delay=interval * RETRY_DELAY, rng=random.Random(rng.random()), clock_start=t0)
        for m in fleet
    ]  # fmt: skip
    finished = [False] * len(sims)
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="sim")

    async def life(i: int, sim: SimulatedMachine) -> None:
        for n in range(cycles):
            # First check within one interval (update_engine: 7 min ±5 after start), then 45 ±5 min.
            await asyncio.sleep(
                sim.rng.uniform(0, interval)
                if n == 0
                else interval * sim.backoff * sim.rng.uniform(8 / 9, 10 / 9)
            )
            await loop.run_in_executor(pool, sim.tick)
        finished[i] = True

    try:
        tasks = [asyncio.create_task(life(i, sim)) for i, sim in enumerate(sims)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if (exc := task.exception()) is not None and not isinstance(exc, DeadlineExceeded):
                raise exc
        pool.shutdown(wait=True, cancel_futures=True)  # running ticks stop at the deadline
    finally:  # an error or Ctrl-C: make running ticks give up at their next read
        http.deadline = time.monotonic()
        pool.shutdown(wait=False, cancel_futures=True)
    return SimulationReport(
        url=url,
        proxy=proxy,
        cycles=cycles,
        duration=round(time.monotonic() - t0, 3),
        machines=tuple(sim.report(finished=finished[i]) for i, sim in enumerate(sims)),
        timed_out=bool(pending) or not all(finished),
    )
