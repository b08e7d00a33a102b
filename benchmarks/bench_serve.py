"""serve-package and the simulator under load.

1. Streaming: a serve-package process serves a sparse payload (default 1 GiB) to a client
   that reads and discards it; prints MiB/s and the growth of the server's peak RSS
   (``VmHWM``), which must stay flat whatever the file size.
2. Fleet: ``simulate()`` walks N machines (check, 13/1, GET payload + oem, 14/1, 3/1, ping,
   post-reboot check) against serve-package directly, then through a real mitmdump with the
   omaha-proxy addons logging to SQLite; prints machines/s and requests/s.

    python benchmarks/bench_serve.py [--size-mib 1024] [--machines 200] [--concurrency 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omaha_proxy.client.simulator import simulate  # noqa: E402
from omaha_proxy.mitm.launch import ProxyProcess, ProxySettings, proxy_command  # noqa: E402
from omaha_proxy.servers.serve_package import serve_package  # noqa: E402

_SERVER = """
import sys
from omaha_proxy.servers.serve_package import serve_package
srv = serve_package(sys.argv[1], "4152.2.0", listen_address="127.0.0.1:0")
print(srv.port, flush=True)
srv.serve_forever()
"""


def _vm_hwm_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def bench_streaming(size_mib: int) -> dict[str, float]:
    """Download a sparse ``size_mib`` file from a serve-package process; MiB/s and RSS growth."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload.gz"
        with payload.open("wb") as f:
            f.truncate(size_mib << 20)
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(payload)], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        try:
            port = int(proc.stdout.readline())  # type: ignore[union-attr]
            before = _vm_hwm_mib(proc.pid)
            t0 = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /packages/flatcar_production_update.gz HTTP/1.1\r\nHost: b\r\n\r\n")
                buf = bytearray(1 << 20)
                total = 0
                while total < (size_mib << 20):
                    n = s.recv_into(buf)
                    if not n:
                        break
                    total += n
            elapsed = time.perf_counter() - t0
            return {
                "size_mib": size_mib,
                "seconds": round(elapsed, 3),
                "mib_per_s": round(size_mib / elapsed),
                "server_rss_growth_mib": round(_vm_hwm_mib(proc.pid) - before, 1),
            }
        finally:
            proc.terminate()
            proc.wait(10)


def bench_fleet(machines: int, concurrency: int) -> dict[str, dict[str, float]]:
    """A fleet walking the full update through serve-package, directly and via mitmdump."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "p.gz").write_bytes(os.urandom(256 << 10))
        (d / "oem.gz").write_bytes(os.urandom(4096))
        server = serve_package(d / "p.gz", "4152.2.0", listen_address="127.0.0.1:0",
                               extra_packages=[("oem-qemu.gz", d / "oem.gz")])  # fmt: skip
        with server:
            runs = {"direct": server.omaha_url}
            settings = ProxySettings(upstream=server.url, listen="127.0.0.1:0", db=str(d / "omaha.db"),
                                     extra_sets=("flow_detail=0",))  # fmt: skip
            with ProxyProcess(proxy_command(settings), d / "mitmdump.log") as proxy:
                runs["mitmdump+addons"] = f"{proxy.url}/v1/update/"
                for name, url in runs.items():
                    report = simulate(url, machines, concurrency=concurrency, cycles=3, timeout=600)
                    results[name] = {
                        "machines": machines,
                        "updated": report.summary().get("updated", 0),
                        "requests": report.requests,
                        "seconds": report.duration,
                        "machines_per_s": round(machines / report.duration, 1),
                        "requests_per_s": round(report.requests / report.duration),
                    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {
        "streaming": bench_streaming(args.size_mib),
        "fleet": bench_fleet(args.machines, args.concurrency),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    s = figures["streaming"]
    print(f"serve-package streams {s['size_mib']} MiB at {s['mib_per_s']} MiB/s; "
          f"server peak RSS grew {s['server_rss_growth_mib']} MiB")  # fmt: skip
    for name, f in figures["fleet"].items():
        print(f"fleet {name:16} {f['machines']} machines ({f['updated']} updated), {f['requests']} requests "
              f"in {f['seconds']}s: {f['machines_per_s']} machines/s, {f['requests_per_s']} requests/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
