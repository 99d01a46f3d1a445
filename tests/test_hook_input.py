"""Hostile hook input against the hook as it runs: `python -m hooks` under uvicorn, spoken to over TCP.

A crash (orjson 3.8.3 died with SIGSEGV on deep nesting), a stalled event loop and a process's memory only show in
a real process. Each test prints what it measured; bounds are generous (the machine is shared): they tell a hook that
stalls or grows from one that does not, not a fast hook from a slow one.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from etcdstorage.settings import Settings
from testbed import processes
from tests.unit.captured import body, captured, expected_children

pytestmark = pytest.mark.real

ROOT: Final = Path(__file__).resolve().parent.parent
MiB: Final = 1024 * 1024
MEMORY_LIMIT: Final = 256 * MiB  # the hook container's limit (manifests/hook.yaml)
LIMIT: Final = Settings().hook_max_body_bytes


class Hook:
    def __init__(self, process: processes.Process, port: int) -> None:
        self.process, self.port, self.url = process, port, f"http://127.0.0.1:{port}"

    def peak_memory(self) -> int:
        """The process's peak resident memory (VmHWM), in bytes."""
        status = Path(f"/proc/{self.process.popen.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    def metric(self, line: str) -> float:
        for sample in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if sample.startswith(line + " "):
                return float(sample.rsplit(" ", 1)[1])
        return 0.0


@contextlib.contextmanager
def serve(tmp_path: Path, **environment: str) -> Iterator[Hook]:
    """`python -m hooks` on a free port, default settings but `environment`, as check_fixtures.py --serve runs it."""
    port = processes.free_port()
    unset = [arg for name in os.environ if name.startswith("ETCDSTORAGE_") for arg in ("-u", name)]
    argv = ["env", *unset, *(f"ETCDSTORAGE_{k}={v}" for k, v in environment.items()),
            sys.executable, "-m", "hooks", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = processes.start("hook", argv, log_dir=tmp_path, cwd=ROOT)
    with processes.running(process):
        process.wait_until(lambda: _healthy(port), what="serving /healthz", timeout=20)
        yield Hook(process, port)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hook]:
    with serve(tmp_path_factory.mktemp("hook")) as running:
        yield running


def upload(
    hook: Hook, path: str, chunks: Iterator[bytes], *, length: int | None = None, patience: float = 0
) -> tuple[int, Any, int]:
    """POST `chunks` over a raw socket, chunked unless `length` is given, and stop sending as soon as an answer
    arrives, as a client does once the server has answered: the status, the JSON answer, and the bytes sent.
    `patience`: seconds to wait for an early answer before sending the body.

    The connection is kept alive, as Metacontroller's are: the hook reads and drops what was still on its way, where
    closing it with unread bytes would reset the connection and could lose the answer."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    sent = 0
    with socket.create_connection(("127.0.0.1", hook.port), timeout=30) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: hook\r\n{framing}\r\n\r\n".encode())
        select.select([connection], [], [], patience)
        for chunk in chunks:
            if select.select([connection], [], [], 0)[0]:
                break  # answered before the body was sent
            connection.sendall(chunk if length is not None else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        else:
            if length is None:
                connection.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        head, _, content = answer.partition(b"\r\n\r\n")
        size = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(content) < size:
            content += connection.recv(65536)
    return int(head.split()[1]), json.loads(content), sent


def megabytes(count: int) -> Iterator[bytes]:
    return (b" " * MiB for _ in range(count))


@pytest.mark.parametrize(
    ("opening", "leaf", "closing"),
    [
        pytest.param(b'{"a":', b"1", b"}", id="60,000 nested objects are refused and the hook lives"),
        pytest.param(b"[", b"", b"]", id="60,000 nested lists are refused and the hook lives"),
    ],
)
def test_a_deeply_nested_body_is_refused_and_the_process_lives(
    hook: Hook, opening: bytes, leaf: bytes, closing: bytes
) -> None:
    before = hook.metric('etcdstorage_hook_errors_total{path="/sync",reason="invalid_json"}')
    sent = opening * 60_000 + leaf + closing * 60_000  # some 350 kB: orjson 3.8.3 died with SIGSEGV
    answer = httpx.post(f"{hook.url}/sync", content=sent, timeout=30)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_json"
    assert hook.process.running, hook.process.log_tail()
    assert httpx.get(f"{hook.url}/healthz", timeout=5).status_code == 200
    assert hook.metric('etcdstorage_hook_errors_total{path="/sync",reason="invalid_json"}') == before + 1


@pytest.mark.parametrize("path", ["/sync", "/customize"])
def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(hook: Hook, path: str) -> None:
    started = time.perf_counter()
    status, answer, sent = upload(hook, path, megabytes(50), length=50 * MiB, patience=5)
    print(f"413 after {sent} of {50 * MiB} bytes, in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert status == 413
    assert "ETCDSTORAGE_HOOK_MAX_BODY_BYTES" in answer["message"]
    assert sent == 0  # answered from Content-Length alone, the body was not waited for


def test_a_chunked_body_over_the_limit_is_refused_once_past_the_limit(hook: Hook) -> None:
    status, answer, sent = upload(hook, "/sync", megabytes(50))
    print(f"413 after {sent / MiB:.0f} MiB sent of 50")
    assert status == 413
    assert "ETCDSTORAGE_HOOK_MAX_BODY_BYTES" in answer["message"]
    assert sent < LIMIT + 12 * MiB  # socket buffers take some: the hook stopped reading at the limit
    assert hook.process.running


def slow_request() -> bytes:
    """A body within every limit that the hook takes long to refuse: 240,000 children that are not objects."""
    request = captured("existing-children")
    request["children"]["Deployment.apps/v1"] = dict.fromkeys(map(str, range(240_000)), 0)
    return body(request)


def test_health_and_other_requests_are_answered_while_a_slow_request_is_worked_on(hook: Hook) -> None:
    """Before, the hook worked on the event loop: /healthz waited seconds behind such a request (the fuzzer saw
    6.3 s), long enough for the kubelet's probes to fail. Judged by counts, not by seconds (a busy machine stretches
    every answer): a loop or a pool stalled behind the slow request answers at most once while it is worked on."""
    slow, normal = slow_request(), body(captured("existing-children"))
    finished: list[float] = []

    def send_slow() -> None:
        started = time.perf_counter()
        httpx.post(f"{hook.url}/sync", content=slow, timeout=60)
        finished.append(time.perf_counter() - started)

    worker = threading.Thread(target=send_slow)
    worker.start()
    health: list[float] = []
    syncs: list[float] = []
    try:
        time.sleep(0.05)  # the slow request is being read and worked on
        while not finished and len(health) < 400:
            started = time.perf_counter()
            assert httpx.get(f"{hook.url}/healthz", timeout=10).status_code == 200
            health.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = httpx.post(f"{hook.url}/sync", content=normal, timeout=10)
            syncs.append(time.perf_counter() - started)
            assert answer.status_code == 200
            assert len(answer.json()["children"]) == 3
    finally:
        worker.join(60)
    print(f"slow request {finished[0]:.2f} s; while it ran: {len(health)} /healthz, slowest "
          f"{max(health) * 1000:.0f} ms; {len(syncs)} syncs, slowest {max(syncs) * 1000:.0f} ms")  # fmt: skip
    assert health, "the slow request ended before /healthz was asked"
    assert len(health) >= 2, f"the event loop answered /healthz only {len(health)} times during the slow request"
    assert len(syncs) >= 2, f"only {len(syncs)} normal syncs were answered during the slow request"


@pytest.mark.parametrize(
    ("bodies", "size"),
    [
        pytest.param(8, 50 * MiB, id="8 bodies of 50 MB at once are refused without being held"),
        pytest.param(16, LIMIT - 4096, id="16 bodies at the limit that cost most to answer stay within 256Mi"),
    ],
)
def test_large_bodies_at_once_stay_within_the_containers_memory(tmp_path: Path, bodies: int, size: int) -> None:
    """The fuzzer saw 623 MB for 8 bodies of 50 MB. Within the limit, the worst body is a previous status echoed
    back while finalizing, made of ASCII and one emoji: 4 MiB read as a 16 MB string, answered as 4 MiB again."""
    request = captured("finalizing")
    request["parent"]["spec"]["replicas"] = 0  # refused, so the previous status is echoed as it is
    request["parent"]["status"] = {"x": ""}
    filler = size - len(body(request)) - 4
    request["parent"]["status"]["x"] = "a" * filler + "😀"
    sent = body(request)
    with serve(tmp_path) as fresh:
        baseline = fresh.peak_memory()
        results: list[int] = []

        def send() -> None:
            pieces = (sent[i : i + MiB] for i in range(0, len(sent), MiB))
            results.append(upload(fresh, "/sync", pieces, length=len(sent))[0])

        senders = [threading.Thread(target=send) for _ in range(bodies)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        peak = fresh.peak_memory()
        print(f"{bodies} bodies of {len(sent) / MiB:.1f} MiB: {sorted(set(results))}, "
              f"peak {peak / MiB:.0f} MiB (from {baseline / MiB:.0f} MiB)")  # fmt: skip
        assert results == [413 if size > LIMIT else 200] * bodies
        assert peak < MEMORY_LIMIT
        assert fresh.process.running


def test_a_refused_request_never_becomes_a_smaller_answer_over_http(hook: Hook) -> None:
    """The property that matters most, once more through uvicorn: each limit refuses, none answers fewer children."""
    request = captured("existing-children")
    answer = httpx.post(f"{hook.url}/sync", content=body(request), timeout=10)
    assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == expected_children(request)
    request["children"]["Service.v1"] |= {f"ns/{i}": {} for i in range(17)}
    refused = httpx.post(f"{hook.url}/sync", content=body(request), timeout=10)
    assert refused.status_code == 422
    assert "children" not in refused.json()
