"""Hook benchmark: POST /sync under load against the stack's ceiling, and the cost of one sync in-process.

    python -m bench.hook            # full run (about a minute)
    python -m bench.hook --quick    # a few seconds, to check that the benchmark still works

Load comes from wrk (Debian package `wrk`) in its own process on loopback, for a fixed time per step. The request
is a realistic one (tests/fixtures/existing-children: certificates present, both children observed). The baseline
is a bare ASGI app on the same uvicorn that answers a constant body of the same size: the ratio is what the hook
itself costs. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.servers import ROOT, free_port, serving, table, uvicorn
from hooks import sync
from hooks.app import create_app
from hooks.settings import Settings
from hooks.wire import SyncRequest

REQUEST = ROOT / "tests/fixtures/existing-children/request.json"


def hook_app() -> Any:
    """uvicorn factory: the hook as deployed, default settings."""
    return create_app(Settings())


def in_process(iterations: int) -> list[tuple[str, float]]:
    body = REQUEST.read_bytes()
    request = SyncRequest.model_validate_json(body)
    settings, now = Settings(), datetime.now(UTC)

    def per_call(run: Any) -> float:
        run()
        started = time.perf_counter()
        for _ in range(iterations):
            run()
        return (time.perf_counter() - started) / iterations * 1e6

    def whole() -> None:
        answer = sync.sync(SyncRequest.model_validate_json(body), settings, now)
        orjson.dumps(answer.model_dump(exclude_none=True))

    return [
        ("sync() on a parsed request", per_call(lambda: sync.sync(request, settings, now))),
        ("parse + sync() + encode", per_call(whole)),
        ("parse only", per_call(lambda: SyncRequest.model_validate_json(body))),
    ]


WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, connections: int, seconds: int, body_file: Path) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
    )
    threads = 1 if connections == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    result = subprocess.run(
        [*command, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    if "Non-2xx" in result.stdout:
        raise RuntimeError(f"the server answered errors under load:\n{result.stdout}")
    latency = {p: float(v) * UNITS[u] for p, v, u in WRK_LATENCY.findall(result.stdout)}
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    return {"rps": rate, "p50": latency["50"], "p99": latency["99"]}


def under_load(concurrency: list[int], seconds: int) -> list[list[object]]:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        body_file = Path(scratch) / "request.json"
        body_file.write_bytes(REQUEST.read_bytes())
        results: dict[str, dict[int, dict[str, float]]] = {}
        for name, app in (("baseline", "bench.baseline:create_app"), ("hook", "bench.hook:hook_app")):
            port = free_port()
            ready = f"http://127.0.0.1:{port}/healthz"
            with serving(uvicorn(app, port), ready):
                results[name] = {c: wrk(f"http://127.0.0.1:{port}/sync", c, seconds, body_file) for c in concurrency}
        for c in concurrency:
            base, hook = results["baseline"][c], results["hook"][c]
            figures = [
                hook["rps"],
                base["rps"],
                hook["rps"] / base["rps"],
                hook["p50"],
                hook["p99"],
                base["p50"],
                base["p99"],
            ]
            rows.append([c, *(f"{value:.2f}" if value < 100 else f"{value:.0f}" for value in figures)])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: check that it runs, figures mean little")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (Debian: apt-get install wrk)")
    iterations, seconds, concurrency = (200, 1, [1, 16]) if args.quick else (3000, 8, [1, 16, 64])
    print(table("In-process, per call (µs)", ["step", "µs"], [[n, f"{v:.1f}"] for n, v in in_process(iterations)]))
    print()
    header = [
        "clients",
        "hook rps",
        "baseline rps",
        "ratio",
        "hook p50 ms",
        "hook p99 ms",
        "base p50 ms",
        "base p99 ms",
    ]
    print(table(f"POST /sync, one uvicorn worker, wrk {seconds}s per step", header, under_load(concurrency, seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
