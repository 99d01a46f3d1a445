"""Where the hook listens: `--host ::` is one dual-stack socket (a pod of a dual-stack cluster is probed and called on
either family), loopback stays loopback, and a port in use or a pod without IPv6 gets a clear outcome."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hooks import __main__ as entry
from testbed import processes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.real


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def hook_on(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    started: list[processes.Process] = []

    def start(host: str) -> int:
        port = processes.free_port()
        argv = [sys.executable, "-m", "hooks", "--host", host, "--port", str(port), "--log-level", "warning"]
        process = processes.start(f"hook-{len(started)}", argv, log_dir=tmp_path, cwd=ROOT)
        started.append(process)
        process.wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz") or answers(
            f"http://[::1]:{port}/healthz"), what="serving /healthz", timeout=20)  # fmt: skip
        return port

    yield start
    for process in started:
        process.stop()


def test_double_colon_serves_ipv4_and_ipv6_on_one_port(hook_on: Callable[[str], int]) -> None:
    port = hook_on("::")
    assert answers(f"http://127.0.0.1:{port}/healthz")
    assert answers(f"http://[::1]:{port}/healthz")


def test_a_loopback_host_is_loopback_only(hook_on: Callable[[str], int]) -> None:
    port = hook_on("127.0.0.1")
    assert answers(f"http://127.0.0.1:{port}/healthz")
    assert not answers(f"http://[::1]:{port}/healthz")


def test_a_port_in_use_is_a_clear_error_not_a_traceback() -> None:
    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "hooks", "--host", "::", "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"etcdstorage-hook: cannot listen on :: port {port}: Address already in use"


def test_without_ipv6_double_colon_falls_back_to_every_ipv4_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has IPv6; a kernel without it is simulated: creating an AF_INET6 socket fails as it would there.
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    with entry.listen("::", 0) as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockname()[0] == "0.0.0.0"
