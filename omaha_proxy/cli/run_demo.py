"""The one-command demo: a local upstream, the proxy with logging, a simulated fleet.

Everything runs on 127.0.0.1 and ends by itself:

1. a generated payload (random bytes, a few MiB) and an ``oem-qemu.gz`` extension package,
   served by serve-package on a free port as version :data:`DEMO_VERSION`;
2. ``mitmdump -s addons/omaha.py`` in reverse mode in front of it, logging to a SQLite file
   and saving the flows to a ``.mitm`` file;
3. a simulated fleet of update_engine 0.4.10 machines (most older, one already current)
   walking through check, download, install, reboot and the post-reboot check, through the
   proxy;
4. the proxy and the server are stopped (in ``finally``: no process is left behind) and the
   fleet is read back from the log.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omaha_proxy.client.machine import Machine
from omaha_proxy.client.simulator import SimulationReport, simulate
from omaha_proxy.mitm.launch import ProxyProcess, ProxySettings, proxy_command
from omaha_proxy.servers.http import OmahaServer
from omaha_proxy.servers.serve_package import serve_package
from omaha_proxy.store.store import Store

DEMO_VERSION = "4152.2.0"
_FLEET = (  # (alias, version): three behind, one further behind, one already current
    ("web-1", "4081.2.0"),
    ("web-2", "4081.2.0"),
    ("web-3", "4081.2.0"),
    ("db-1", "3975.2.1"),
    ("edge-1", DEMO_VERSION),
)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo did and where it left its files."""

    out_dir: Path
    db: Path
    flows: Path
    proxy_log: Path
    upstream_url: str
    proxy_url: str
    report: SimulationReport
    fleet: list[dict[str, Any]]
    fleet_summary: list[dict[str, Any]]
    exchanges: int

    @property
    def ok(self) -> bool:
        """True when every machine ended updated or already current and the log saw them all."""
        outcomes = {m.outcome for m in self.report.machines}
        return outcomes <= {"updated", "current"} and len(self.fleet) == len(self.report.machines)


def demo_fleet(machines: int = len(_FLEET), seed: int = 4152) -> list[Machine]:
    """The demo's machines: the five of :data:`_FLEET`, then more ``4081.2.0`` ones if asked."""
    rng = random.Random(seed)
    specs = list(_FLEET[:machines]) + [
        (f"node-{i}", "4081.2.0") for i in range(len(_FLEET) + 1, machines + 1)
    ]
    return [Machine.random(rng, version=version, alias=alias) for alias, version in specs]


def _write_random(path: Path, size: int, rng: random.Random) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    machines: int = len(_FLEET),
    payload_mib: int = 4,
    cycles: int = 3,
    interval: float = 0.2,
    timeout: float = 90.0,
    progress: Callable[[str], None] = lambda line: None,
) -> DemoResult:
    """Run the demo in ``out_dir`` (its previous log and flows are replaced).

    ``progress`` receives one line per stage. Returns a :class:`DemoResult`; raises
    RuntimeError when mitmdump does not start, OSError for file trouble.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db, flows, proxy_log = out / "omaha.db", out / "demo.mitm", out / "mitmdump.log"
    for stale in (db, out / "omaha.db-wal", out / "omaha.db-shm", flows):
        stale.unlink(missing_ok=True)
    packages = out / "packages"
    shutil.rmtree(packages, ignore_errors=True)
    packages.mkdir()
    rng = random.Random(DEMO_VERSION)
    payload, oem = packages / "flatcar_production_update.gz", packages / "oem-qemu.gz"
    _write_random(payload, payload_mib << 20, rng)
    _write_random(oem, 64 << 10, rng)

    server: OmahaServer | None = None
    proxy: ProxyProcess | None = None
    try:
        server = serve_package(payload, DEMO_VERSION, listen_address="127.0.0.1:0",
                               extra_packages=[("oem-qemu.gz", oem)]).start()  # fmt: skip
        progress(
            f"upstream  serve-package {DEMO_VERSION} ({payload_mib} MiB payload + oem-qemu.gz) at {server.omaha_url}"
        )
        settings = ProxySettings(upstream=server.url, listen="127.0.0.1:0", db=str(db), save_flows=str(flows),
                                 extra_sets=("flow_detail=1",))  # fmt: skip
        proxy = ProxyProcess(proxy_command(settings), proxy_log).start()
        proxy_url = f"{proxy.url}/v1/update/"
        progress(f"proxy     mitmdump -s addons/omaha.py, reverse mode to the upstream, at {proxy_url}")
        fleet = demo_fleet(machines)
        progress(
            f"fleet     {len(fleet)} simulated update_engine 0.4.10 machines, {cycles} checks each, through the proxy"
        )
        report = simulate(proxy_url, fleet, concurrency=min(len(fleet), 8), cycles=cycles, interval=interval,
                          timeout=timeout, request_timeout=15)  # fmt: skip
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
    with Store(db) as store:
        return DemoResult(
            out_dir=out,
            db=db,
            flows=flows,
            proxy_log=proxy_log,
            upstream_url=server.omaha_url,
            proxy_url=proxy_url,
            report=report,
            fleet=store.fleet(),
            fleet_summary=store.fleet_summary(),
            exchanges=store.count(),
        )
