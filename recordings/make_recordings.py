"""Re-make the bundled recordings: simulated update_engines talking through a real mitmdump.

    .venv/bin/python recordings/make_recordings.py                  # every recording
    .venv/bin/python recordings/make_recordings.py full-update fleet # some of them

For each scenario: start a local upstream on 127.0.0.1 (``serve-package`` with generated
payload files, or a scripted Nebraska stand-in), start ``mitmdump -s addons/omaha.py`` in
reverse mode in front of it with ``--set omaha_record=recordings/<name>.json``, run
:func:`omaha_proxy.client.simulator.simulate` against the proxy, stop everything, then name the
payload files the upstream served in the recording (copied to ``recordings/payloads/``) so
the update replays fully offline. Nothing in the recordings is typed by hand; only the
payload names are added afterwards, by this script, through the library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # tests.support: the mitmdump runner the e2e tests use

from omaha_proxy.client.machine import Machine  # noqa: E402
from omaha_proxy.client.simulator import SimulationReport, simulate  # noqa: E402
from omaha_proxy.protocol.describe import RequestKind, request_kind  # noqa: E402
from omaha_proxy.protocol.model import Request  # noqa: E402
from omaha_proxy.replay import recording  # noqa: E402
from omaha_proxy.replay.recording import payload_ref, with_payloads  # noqa: E402
from omaha_proxy.servers.http import OmahaServer  # noqa: E402
from omaha_proxy.servers.serve_package import serve_package  # noqa: E402
from tests.support.mitmdump_run import run_mitmdump  # noqa: E402

NEW = "4081.2.0"
SAMPLES = REPO / "tests" / "data"
PAYLOADS = HERE / "payloads"
MAIN = "flatcar_production_update.gz"
OEM = "oem-qemu.gz"


def payload_bytes(name: str, size: int) -> bytes:
    """Deterministic stand-in payload bytes (the simulator checks size and SHA-256, not CrAU)."""
    return random.Random(name).randbytes(size)


@dataclass
class Scenario:
    """One recording: who talks to which upstream, for how many scheduler ticks."""

    name: str
    what: str
    machines: list[Machine]
    cycles: int
    packages: dict[str, int] = field(default_factory=dict)  # name -> size served by serve-package
    corrupt: bool = False  # serve a main payload whose hash does not match the offer
    upstream: str = "serve-package"  # or "nebraska-refusal"


def machine(seed: int, version: str, **fields: str) -> Machine:
    return Machine.random(random.Random(seed), version=version, alias=f"rec-{seed}", **fields)


SCENARIOS = [
    Scenario("full-update", "one machine: 3975.2.1 -> 4081.2.0, reboot, steady state",
             [machine(1, "3975.2.1")], cycles=4, packages={MAIN: 16384}),
    Scenario("steady-noupdate", "one machine already on 4081.2.0: noupdate, three times",
             [machine(2, NEW)], cycles=3, packages={MAIN: 16384}),
    Scenario("failed-update-hash-mismatch", "the payload served does not match the offered hash: 3/0 error 10, twice",
             [machine(3, "3975.2.1")], cycles=2, packages={MAIN: 16384}, corrupt=True),
    Scenario("upstream-refusal", "Nebraska-style refusal: app error-updatesDisabled, updatecheck error-internal",
             [machine(4, "3975.2.1")], cycles=2, upstream="nebraska-refusal"),
    Scenario("extension-packages", "an offer with an OEM extension package (oem-qemu.gz) fetched by postinstall",
             [machine(5, "3975.2.1", oem="qemu")], cycles=4, packages={MAIN: 16384, OEM: 2048}),
    Scenario("fleet", "four machines at different versions and tracks against one server",
             [machine(6, "3975.2.1"), machine(7, "4054.1.0"), machine(8, NEW),
              machine(9, "3975.2.1", track="beta")], cycles=4, packages={MAIN: 16384}),
]  # fmt: skip


def _nebraska_refusal() -> OmahaServer:
    """A scripted Nebraska stand-in answering with the nebraska-shape samples, byte for byte."""
    answers = {
        RequestKind.UPDATECHECK: "updatecheck_error_updatesDisabled",
        RequestKind.EVENT: "event_ack",
        RequestKind.PING: "ping_ack",
    }

    def handle(request: Request, raw: bytes, client_ip: str) -> tuple[int, dict[str, str], bytes]:
        name = answers.get(request_kind(request), "event_ack")
        return (
            200,
            {"Content-Type": "text/xml"},
            (SAMPLES / f"nebraska-shape__{name}.GENERATED.xml").read_bytes(),
        )

    return OmahaServer(handle)


@contextlib.contextmanager
def upstream(scenario: Scenario, workdir: Path) -> Iterator[tuple[OmahaServer, dict[str, Path]]]:
    """The scenario's upstream, started, and the payload files it serves."""
    if scenario.upstream == "nebraska-refusal":
        with _nebraska_refusal() as server:
            yield server, {}
        return
    files = {}
    for name, size in scenario.packages.items():
        files[name] = workdir / name
        files[name].write_bytes(payload_bytes(f"{scenario.name}/{name}", size))
    extra = [(n, p) for n, p in files.items() if n != MAIN]
    server = serve_package(files[MAIN], NEW, listen_address="127.0.0.1:0", extra_packages=extra)
    if scenario.corrupt:
        # Hashes were taken at start; now serve other bytes of the same size (error 10, not 11).
        files[MAIN].write_bytes(payload_bytes(f"{scenario.name}/{MAIN}/corrupt", scenario.packages[MAIN]))
    with server:
        yield server, files


def make(scenario: Scenario) -> SimulationReport:
    """Record one scenario into ``recordings/<name>.json``; returns the simulation report."""
    out = HERE / f"{scenario.name}.json"
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp, upstream(scenario, Path(tmp)) as (server, files):
        args = ["--mode", f"reverse:{server.url}", "--set", f"omaha_record={out}"]
        with run_mitmdump(*args) as proxy:
            report = simulate(
                f"{proxy.url}/v1/update/",
                scenario.machines,
                cycles=scenario.cycles,
                concurrency=1,
                timeout=60,
            )
        rec = recording.load(out)
        offered = {name for e in rec.exchanges for name in e.facts.get("packages", ())}
        refs = []
        for name in sorted(offered & files.keys()):
            target = PAYLOADS / scenario.name / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[name], target)
            refs.append(payload_ref(name, target, base_dir=HERE))
    rec = dataclasses.replace(with_payloads(rec, refs), source=f"make_recordings.py {scenario.name}")
    recording.dump(rec, out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help=f"scenarios (default all): {', '.join(s.name for s in SCENARIOS)}"
    )
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.names or s.name in args.names]
    unknown = set(args.names) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    for scenario in chosen:
        report = make(scenario)
        outcomes = ", ".join(f"{m.start_version}->{m.version} {m.outcome}" for m in report.machines)
        print(f"{scenario.name}: {report.requests} requests; {outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
