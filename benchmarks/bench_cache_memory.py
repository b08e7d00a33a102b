"""Peak memory of the proxy while ten machines download one large payload through the cache.

A real ``mitmdump -s addons/omaha.py`` with ``omaha_cache`` on (its cache file server runs in
the same process) sits in front of serve-package offering a sparse payload. Ten simulated
update_engines check, get the rewritten offer and download the payload at once: the first
requests wait for the single upstream fetch (streamed to disk, verified), then all stream
from disk. The figure is the proxy process's peak RSS (``VmHWM``). Target (issue 8):
**under 300 MB** for a 1 GB payload.

    python benchmarks/bench_cache_memory.py [--size-mb 1024] [--machines 10] [--mode both] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omaha_proxy.client.simulator import simulate  # noqa: E402
from omaha_proxy.payloads.cache import CacheStats, read_stats  # noqa: E402
from omaha_proxy.servers.http import OmahaServer, mapping_resolver  # noqa: E402
from omaha_proxy.servers.serve_package import PackageServer, load_packages  # noqa: E402

MITMDUMP = Path(sys.executable).parent / "mitmdump"
TARGET_MB = 300
_LISTENING = re.compile(r"listening at 127\.0\.0\.1:(\d+)")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size - 1)
        f.seek(size - 1)
        f.write(b"\x01")


def _start_mitmdump(mode: str, cache: Path, scratch: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    cmd = [
        str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", "0", "-s", str(ROOT / "addons/omaha.py"),
        "--mode", mode, "--set", "flow_detail=0", "--set", f"omaha_db={scratch / 'omaha.db'}",
        "--set", f"omaha_cache={cache}", "--set", "omaha_cache_listen=127.0.0.1:0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in stdout), daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _LISTENING.search("\n".join(lines))
        if match:
            return proc, int(match.group(1)), lines
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mitmdump did not start:\n" + "\n".join(lines))


def settled_stats(cache: Path, served: int, wait: float = 5.0) -> CacheStats:
    """The cache's figures once ``served`` bytes are counted (the file server counts a
    download just after its last byte went out), or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    stats = read_stats(cache)
    while stats.bytes_served < served and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = read_stats(cache)
    return stats


def run(
    size_mb: int = 1024, machines: int = 10, timeout: float = 600.0, regular: bool = False
) -> dict[str, object]:
    """Measure; returns the figures (``peak_rss_mb`` is the proxy's VmHWM).

    ``regular``: mitmdump in regular mode, the machines sending everything (Omaha and the
    payload GETs from the cache) through it as their HTTP proxy, as with ``ALL_PROXY``.
    """
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        scratch = Path(tmp)
        payload = scratch / "payload.gz"
        _sparse(payload, size_mb << 20)
        handler = PackageServer("4152.2.0", load_packages(payload))
        upstream = OmahaServer(
            handler, files={"/packages/": mapping_resolver({"flatcar_production_update.gz": payload})}
        )
        with upstream:
            mode = "regular" if regular else f"reverse:{upstream.url}"
            proc, port, _lines = _start_mitmdump(mode, scratch / "cache", scratch)
            try:
                idle_kib = _kib(proc.pid, "VmRSS")
                started = time.monotonic()
                proxy = f"http://127.0.0.1:{port}"
                report = simulate(upstream.omaha_url if regular else proxy + "/v1/update/", machines,
                                  concurrency=machines, cycles=1, timeout=timeout, request_timeout=timeout, oem="",
                                  proxy=proxy if regular else None)  # fmt: skip
                took = time.monotonic() - started
                stats = settled_stats(scratch / "cache", machines * (size_mb << 20))
                peak_kib = _kib(proc.pid, "VmHWM")
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    downloads = [s for m in report.machines for s in m.steps if s.kind == "download"]
    return {
        "mode": "regular" if regular else "reverse",
        "payload_mb": size_mb,
        "machines": machines,
        "updated": report.summary().get("waiting-reboot", 0) + report.summary().get("updated", 0),
        "downloads_ok": sum(1 for s in downloads if s.outcome.startswith("ok")),
        "seconds": round(took, 1),
        "served_mb": round(stats.bytes_served / (1 << 20)),
        "fetched_mb": round(stats.bytes_fetched / (1 << 20)),
        "idle_rss_mb": round(idle_kib / 1024, 1),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "target_mb": TARGET_MB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="payload size in MiB (default 1024)")
    parser.add_argument("--machines", type=int, default=10, help="machines downloading at once (default 10)")
    parser.add_argument(
        "--mode", choices=("reverse", "regular", "both"), default="both",
        help="reverse proxy (payloads straight from the cache server), regular proxy (payload GETs "
        "pass through mitmdump too), or both side by side (default)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    modes = ("reverse", "regular") if args.mode == "both" else (args.mode,)
    results = {mode: run(args.size_mb, args.machines, regular=mode == "regular") for mode in modes}
    if args.json:
        print(json.dumps(results))
    for r in results.values():
        if not args.json:
            print(
                f"{r['mode']} mode: {r['machines']} machines x {r['payload_mb']} MiB through the cache in "
                f"{r['seconds']} s ({r['downloads_ok']} verified downloads, fetched {r['fetched_mb']} MiB once, "
                f"served {r['served_mb']} MiB): proxy peak RSS {r['peak_rss_mb']} MB (idle {r['idle_rss_mb']} MB, "
                f"target < {TARGET_MB} MB)"
            )
    return 0 if all(float(r["peak_rss_mb"]) < TARGET_MB for r in results.values()) else 1  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
