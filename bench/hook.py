"""Hook benchmark: POST /sync under load against the stack's ceiling, and the cost of one sync in-process.

    python -m bench.hook            # full run (about a minute)
    python -m bench.hook --quick    # a few seconds, to check that the benchmark still works
    python -m bench.hook --profile  # also where the time goes in-process (cProfile, CPU time)

Load comes from wrk (Debian package `wrk`) in its own process on loopback, for a fixed time per step. The request
is a realistic one (tests/fixtures/existing-children: certificates present, both children observed). The baseline
is a bare ASGI app on the same uvicorn that answers a constant body of the same size: the ratio is what the hook
itself costs. In-process, the same request goes through the app's steps one by one and through the whole app as an
ASGI call, against the bare app. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import baseline
from bench.servers import ROOT, free_port, machine, serving, table, uvicorn
from etcdstorage.settings import Settings
from hooks import sync
from hooks.app import create_app, encode_answer, parse_body
from hooks.wire import SyncRequest

REQUEST = ROOT / "tests/fixtures/existing-children/request.json"


def hook_app() -> Any:
    """uvicorn factory: the hook as deployed, default settings."""
    return create_app(Settings())


def asgi_post(app: Any, body: bytes) -> Callable[[], Awaitable[None]]:
    """One POST /sync straight into the ASGI app: no socket, no HTTP parsing; the answer must be a 200."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/sync", "raw_path": b"/sync", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def call() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"the app answered {status}")

    return call


def per_call(run: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """CPU microseconds per call (this process's CPU time: waiting for a core the machine's other work holds does
    not count), the best of `repeats` rounds."""
    run()
    rounds = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(iterations):
            run()
        rounds.append((time.process_time() - started) / iterations * 1e6)
    return min(rounds)


def in_process(iterations: int) -> list[list[object]]:
    body = REQUEST.read_bytes()
    request = parse_body(SyncRequest, body)
    settings, now = Settings(), datetime.now(UTC)
    answer = sync.sync(request, settings, now)
    loop = asyncio.new_event_loop()
    try:
        hook, bare = asgi_post(create_app(settings), body), asgi_post(baseline.create_app(), body)
        app = per_call(lambda: loop.run_until_complete(hook()), iterations)
        base = per_call(lambda: loop.run_until_complete(bare()), iterations)
    finally:
        loop.close()
    steps = [
        ("parse the body (app.parse_body)", per_call(lambda: parse_body(SyncRequest, body), iterations)),
        ("sync() on a parsed request", per_call(lambda: sync.sync(request, settings, now), iterations)),
        ("encode the answer (app.encode_answer)", per_call(lambda: encode_answer(answer), iterations)),
        ("the app: one POST /sync, ASGI, no socket", app),
        ("baseline: bare ASGI app, same body", base),
    ]
    return [[name, f"{value:.1f}", f"{value / base:.1f}"] for name, value in steps]


def profile(iterations: int) -> str:
    """cProfile (CPU time) of the app answering POST /sync in-process: where the hook's own time goes."""
    body = REQUEST.read_bytes()
    hook = asgi_post(create_app(Settings()), body)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(hook())
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(iterations):
            loop.run_until_complete(hook())
        profiler.disable()
    finally:
        loop.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


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
    parser.add_argument("--profile", action="store_true", help="also cProfile the app in-process")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (Debian: apt-get install wrk)")
    iterations, seconds, concurrency = (200, 1, [1, 16]) if args.quick else (3000, 8, [1, 16, 64])
    print(machine())
    print()
    title = f"In-process, CPU time per call, best of 5 rounds of {iterations}; × = over the bare ASGI app"
    print(table(title, ["step", "µs", "×"], in_process(iterations)))
    print()
    if args.profile:
        print(f"cProfile of {iterations} POST /sync in-process, CPU time, by own time:")
        print(profile(iterations))
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
    print()
    print(machine(prefix="after"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
