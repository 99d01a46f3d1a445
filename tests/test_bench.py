"""The benchmarks must not rot: each runs in its `--quick` mode (tiny counts, real processes) and prints its tables.

No figure is checked here: speed is measured by bench/ and printed, never asserted in a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.real


def tables(output: str) -> dict[str, int]:
    """Each table's title, with how many rows it has (a title, a header, a line of dashes, then the rows)."""
    lines = output.splitlines()
    found = {}
    for index, line in enumerate(lines[:-2]):
        if lines[index + 2].startswith("---"):
            rows = 0
            for row in lines[index + 3 :]:
                if not row.strip() or row.startswith("  "):
                    break
                rows += 1
            found[line] = rows
    return found


def run(benchmark: str, timeout: float, *args: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return tables(result.stdout)


def rows_of(found: dict[str, int], title: str) -> int:
    matching = [rows for heading, rows in found.items() if heading.startswith(title)]
    assert matching, f"no table titled {title!r} in {sorted(found)}"
    return matching[0]


def test_the_hook_benchmark_prints_in_process_and_under_load_figures() -> None:
    found = run("hook", timeout=120)
    assert rows_of(found, "In-process, CPU time per call") == 5
    assert rows_of(found, "POST /sync, one uvicorn worker") == 2  # 1 and 16 clients


@pytest.mark.parametrize("etcd", ["3.5", "3.6"])
def test_the_data_path_benchmark_prints_kv_watch_and_cost_figures_for_every_path(etcd: str) -> None:
    found = run("datapath", 180, f"--etcd={etcd}")
    assert rows_of(found, "KV, grpcio client over TLS") == 6  # put, get, list; 1 and 16 clients
    assert rows_of(found, "Watch: one watcher on a prefix") == 2
    assert rows_of(found, "The proxies' own cost") == 2  # the tenant proxy, and guard + grpc-proxy


@pytest.mark.e2e
def test_the_job_benchmark_prints_passes_keys_and_start_up_figures() -> None:
    found = run("job", timeout=180)
    assert rows_of(found, "One job pass, in-process, against kube-apiserver") == 4  # 1 and 5 tenants, fresh and due
    assert rows_of(found, "The fresh pass's reads in the controller namespace") == 2
    assert rows_of(found, "Key generation") == 2
    assert rows_of(found, "A tenant's first issuance") == 2
    assert rows_of(found, "Job process start-up") == 2
