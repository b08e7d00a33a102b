"""Run every benchmark under ``benchmarks/`` and write the results table to docs/benchmarks.md.

Each ``bench_*.py`` runs as its own process with ``--json`` (plus its arguments below), one
after the other so that they do not load the machine for each other, each bounded by a
timeout. A benchmark that fails or times out is reported as such in the table; the others
still run. ``./dev bench`` runs this script.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--output docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (arguments, --quick arguments, timeout in seconds). Benchmarks not listed run with
# no arguments and the default timeout.
PLAN: dict[str, tuple[list[str], list[str], float]] = {
    "bench_codec": ([], ["--number", "1000"], 300),
    "bench_proxy": ([], ["--requests", "400"], 400),
    "bench_proxy_modes": ([], ["--requests", "300"], 400),
    "bench_fleet": ([], ["--machines", "1000"], 420),
    "bench_store": ([], ["--exchanges", "100000", "--inserts", "500"], 600),
    "bench_soak": ([], ["--requests", "3000"], 600),
    "bench_cache_memory": ([], ["--size-mb", "128"], 600),
}
DEFAULT_TIMEOUT = 600.0


def discover(only: list[str] | None) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if not only or n in only]


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Run one benchmark; returns its figures (parsed JSON) or its failure."""
    args, quick_args, timeout = PLAN.get(name, ([], [], DEFAULT_TIMEOUT))
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", *(quick_args if quick else args)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "seconds": timeout, "error": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        return {"name": name, "seconds": seconds, "error": f"exit {done.returncode}:\n{tail}"}
    try:
        figures = json.loads(done.stdout[done.stdout.index("{") :] if "{" in done.stdout else done.stdout)
    except ValueError:
        return {"name": name, "seconds": seconds, "error": "no JSON output", "raw": done.stdout}
    return {"name": name, "seconds": seconds, "figures": figures, "command": " ".join(cmd[1:])}


# ----------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return " / ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _render(value: Any, level: int = 4) -> list[str]:
    lines: list[str] = []
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for row in value for k in row))
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in value]
        return [*lines, ""]
    if isinstance(value, list):
        return [f"- {_cell(v)}" for v in value] + [""]
    if not isinstance(value, dict):
        return [_cell(value), ""]
    flat = {k: v for k, v in value.items() if not isinstance(v, dict | list) or _is_small(v)}
    if flat:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in flat.items()]
        lines.append("")
    for key, sub in value.items():
        if key not in flat:
            lines.append(f"{'#' * level} {key}")
            lines.append("")
            lines += _render(sub, level + 1)
    return lines


def _is_small(value: Any) -> bool:
    """Short lists/dicts of scalars render inline in one cell."""
    items = value.values() if isinstance(value, dict) else value
    return len(value) <= 4 and all(not isinstance(v, dict | list) for v in items)


def markdown(results: list[dict[str, Any]], info: dict[str, str], started: datetime, quick: bool) -> str:
    total = sum(r["seconds"] for r in results)
    lines = [
        "# Benchmarks",
        "",
        "Written by `./dev bench` (`python benchmarks/run_all.py`); do not edit by hand.",
        "Each benchmark measures its comparisons side by side in one run (interleaved rounds).",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC{' (quick run)' if quick else ''}",
        f"- machine: {info['nproc']} CPUs (nproc), {info['platform']}",
        f"- python {info['python']}, mitmproxy {info['mitmproxy']}",
        f"- total time: {total:.0f} s",
        "",
        "| benchmark | status | seconds |",
        "|---|---|---|",
    ]
    for r in results:
        status = "ok" if "figures" in r else r["error"].splitlines()[0]
        lines.append(f"| [{r['name']}](#{r['name'].replace('_', '')}) | {status} | {r['seconds']:.0f} |")
    lines.append("")
    targets = [(r["name"], t) for r in results for t in _targets(r.get("figures"))]
    if targets:
        lines += ["**Targets**", ""]
        lines += [f"- {name}: {text}" for name, text in targets]
        lines.append("")
    for r in results:
        lines += [f"## {r['name']}", ""]
        doc = _docstring(r["name"])
        if doc:
            lines += [doc, ""]
        if "figures" in r:
            lines += [f"`{r['command']}`", ""]
            lines += _render(r["figures"], 3)
        else:
            lines += ["```", r["error"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _targets(figures: Any) -> list[str]:
    """A benchmark's verdicts (``verdict``/``verdicts`` strings, or ``target_met``)."""
    if not isinstance(figures, dict):
        return []
    found = figures.get("verdicts") or figures.get("verdict") or []
    out = [found] if isinstance(found, str) else [str(v) for v in found]
    if "target_met" in figures:
        out.append(f"target met: {figures['target_met']}")
    return out


def _docstring(name: str) -> str:
    """A benchmark's module docstring (what it measures and how), without its usage line."""
    text = (HERE / f"{name}.py").read_text()
    if '"""' not in text:
        return ""
    body = text.split('"""', 2)[1].strip()
    paragraphs = [p for p in body.split("\n\n") if not p.strip().startswith("python ")]
    return "\n\n".join(paragraphs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, minutes)")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (e.g. bench_store)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    started = datetime.now(UTC)
    results = []
    for name in discover(args.only):
        print(f"== {name} ...", flush=True)
        result = run_one(name, args.quick)
        print(
            f"   {'ok' if 'figures' in result else result['error']} ({result['seconds']:.0f} s)", flush=True
        )
        results.append(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(results, machine_info(), started, args.quick))
    print(f"wrote {args.output}")
    return 0 if all("figures" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
