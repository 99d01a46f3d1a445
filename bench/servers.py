"""Processes for benchmarks: free ports, a server started and stopped around a measurement; figures: tables,
percentiles, and the machine they were taken on."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(args: Sequence[str], ready_url: str, timeout: float = 20) -> Iterator[subprocess.Popen[bytes]]:
    """Run `args` until the block ends; wait until `ready_url` answers 200 first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDSTORAGE_")}
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{args[0]} did not start: {process.stderr.read().decode() if process.stderr else ''}"
                )
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def uvicorn(app: str, port: int) -> list[str]:
    """One uvicorn worker, no access log: the same stack for the hook and its baseline."""
    return [sys.executable, "-m", "uvicorn", app, "--factory", "--port", str(port), "--workers", "1",
            "--no-access-log", "--log-level", "warning"]  # fmt: skip


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells[1:]
    ]
    return "\n".join(lines)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The `p`th percentile of sorted values (nearest rank); NaN for no values."""
    if not ordered:
        return float("nan")
    rank = max(1, round(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine(prefix: str = "machine") -> str:
    """Cores and load average: figures taken while other work runs on the machine are noisy, and say so."""
    one, five, fifteen = os.getloadavg()
    return f"{prefix}: {os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"
