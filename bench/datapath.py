"""Data path benchmark: put, range and watch through a tenant's proxy, through the pair it replaced (the nginx guard
in front of etcd's grpc-proxy: "before"), and with the same client straight to the core etcd. The ratio to direct is
the price of isolation.

    python -m bench.datapath            # full run (about three minutes)
    python -m bench.datapath --etcd 3.5 # the same with a core etcd 3.5
    python -m bench.datapath --quick    # a few seconds, to check that the benchmark still works

Everything runs on loopback, started here and stopped at the end: the core etcd (3.6 unless --etcd says 3.5, built
by testbed/binaries/build-etcd.sh; TLS with client certificates), a tenant's proxy pod as testbed/stack.py runs it (the
tenant proxy of this repository), and the previous pod (grpc-proxy of the same etcd with --namespace on plaintext
loopback, the guard in front: nginx from Debian with the production configuration but one worker). Every path uses
the same client, the grpcio one of testbed/etcdrpc.py, over TLS with a client certificate, one HTTP/2
connection shared by every client thread, requests encoded once and answers not decoded (but the watch events),
so the client spends as little as it can of the two cores that etcd and the proxies also need.
Steps run for a fixed time each. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import grpc

from bench.servers import machine, percentile, table
from etcdstorage import names
from testbed import etcdrpc, stack
from testbed import etcdwire as wire
from testbed.etcd import etcd_server, start_grpc_proxy
from testbed.guard import nginx_binary, start_guard

VALUE: Final = b"v" * 1024  # about a small Kubernetes object
LIST_KEYS: Final = 100  # a range over a prefix returns this many
CONCURRENCY: Final = (1, 16)
TENANT: Final = "bench"


@dataclasses.dataclass(frozen=True)
class Route:
    """One way to the data: a client, the key prefix it writes under (a proxy's is inside the tenant's view), and
    the processes between the client and the core etcd, whose CPU and memory are measured."""

    name: str
    client: etcdrpc.Client
    prefix: bytes
    pids: tuple[int, ...] = ()


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User and system CPU time the processes have used so far (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def resident_mib(pids: tuple[int, ...]) -> float:
    """Resident memory of the processes together (VmRSS), MiB; nginx's workers are its children, counted too."""
    total = 0
    for pid in pids:
        for each in [pid, *_children(pid)]:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(child) for child in children]
    return found


@dataclasses.dataclass(frozen=True)
class Figures:
    rate: float  # operations (or events) per second
    p50: float  # milliseconds
    p99: float


def _bytes(message: bytes) -> bytes:
    return message


def closed_loop(call: Callable[[int], object], clients: int, seconds: float) -> Figures:
    """`clients` threads call `call(i)` back to back for `seconds` (after a short warm-up); latency of every call."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        mine = latencies[index]
        i = index * 7919
        for _ in range(20):  # warm-up: connection, TLS, grpc-proxy's and etcd's caches
            call(i)
            i += 1
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            call(i)
            mine.append(time.perf_counter() - began)
            i += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = sorted(value for mine in latencies for value in mine)
    return Figures(len(every) / elapsed, percentile(every, 50) * 1e3, percentile(every, 99) * 1e3)


def kv_steps(route: Route, keys: int) -> dict[str, Callable[[int], object]]:
    """The operations, each a call with its request encoded in advance; puts cycle over `keys` keys, gets read them."""
    put = route.client.channel.unary_unary(etcdrpc.KV + "Put", _bytes, _bytes)
    range_ = route.client.channel.unary_unary(etcdrpc.KV + "Range", _bytes, _bytes)
    names = [route.prefix + b"kv/%04d" % n for n in range(keys)]
    puts = [wire.put_request(key, VALUE) for key in names]
    gets = [wire.range_request(key) for key in names]
    listed = route.prefix + b"list/"
    for n in range(LIST_KEYS):
        put(wire.put_request(listed + b"%04d" % n, VALUE), timeout=etcdrpc.TIMEOUT)
    for request in puts:  # every key exists before the gets
        put(request, timeout=etcdrpc.TIMEOUT)
    list_request = wire.range_request(listed, listed[:-1] + bytes([listed[-1] + 1]))
    return {
        "put 1 KiB": lambda i: put(puts[i % keys], timeout=etcdrpc.TIMEOUT),
        "range: 1 key": lambda i: range_(gets[i % keys], timeout=etcdrpc.TIMEOUT),
        f"range: {LIST_KEYS} keys": lambda _: range_(list_request, timeout=etcdrpc.TIMEOUT),
    }


class TimedWatch:
    """One Watch RPC on a prefix whose reader thread stamps each event with its arrival time."""

    def __init__(self, client: etcdrpc.Client, prefix: bytes) -> None:
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self.arrivals: queue.Queue[tuple[float, wire.WatchResponse]] = queue.Queue()
        stream = client.channel.stream_stream(etcdrpc.WATCH, _bytes, _bytes)
        self._call = stream(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._requests.put(wire.watch_create(prefix, prefix[:-1] + bytes([prefix[-1] + 1])))
        _, created = self.arrivals.get(timeout=etcdrpc.TIMEOUT)
        if not created.created:
            raise RuntimeError("the watch was not created")

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):  # also how a cancelled stream ends
            for message in self._call:
                self.arrivals.put((time.perf_counter(), wire.WatchResponse.parse(message)))

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._reader.join(timeout=5)


def watch_delivery(route: Route, writers: int, seconds: float) -> Figures:
    """Events per second seen by one watcher while `writers` threads put back to back, and the time from sending each
    put to its event's arrival."""
    prefix = route.prefix + b"watch/"
    put = route.client.channel.unary_unary(etcdrpc.KV + "Put", _bytes, _bytes)
    sent: dict[bytes, float] = {}
    stop = threading.Event()
    watch = TimedWatch(route.client, prefix)

    def writer(index: int) -> None:
        n = 0
        while not stop.is_set():
            key = prefix + b"%02d/%06d" % (index, n)
            sent[key] = time.perf_counter()
            put(wire.put_request(key, VALUE), timeout=etcdrpc.TIMEOUT)
            n += 1

    try:
        threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(writers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        delays: list[float] = []
        last = began
        deadline = time.monotonic() + etcdrpc.TIMEOUT
        while len(delays) < len(sent) and time.monotonic() < deadline:
            try:
                arrived, response = watch.arrivals.get(timeout=1)
            except queue.Empty:
                continue
            for event in response.events:
                delays.append(arrived - sent[event.kv.key])
                last = arrived
        if len(delays) != len(sent):
            raise RuntimeError(f"{route.name}: {len(sent)} puts but {len(delays)} events arrived")
    finally:
        watch.close()
    delays.sort()
    return Figures(len(delays) / (last - began), percentile(delays, 50) * 1e3, percentile(delays, 99) * 1e3)


PATHS: Final = ("tenant proxy", "before", "direct")


def row(name: str, clients: int, measured: dict[str, Figures]) -> list[object]:
    proxy, before, direct = (measured[path] for path in PATHS)
    figures = [proxy.rate, before.rate, direct.rate]
    ratios = [proxy.rate / direct.rate, before.rate / direct.rate]
    latencies = [proxy.p50, before.p50, direct.p50, proxy.p99, before.p99, direct.p99]
    return [name, clients, *(_shown(value) for value in figures), *(f"{value:.2f}" for value in ratios),
            *(_shown(value) for value in latencies)]  # fmt: skip


def _shown(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


@contextlib.contextmanager
def data_paths(workdir: Path, version: str) -> Iterator[tuple[Route, ...]]:
    with (
        stack.core_etcd(workdir / "core", version=version) as core,
        stack.tenant(workdir / "tenant", core, TENANT) as tenant,
        core.client() as direct,
        tenant.client() as proxied,
        _before(workdir / "before", core, tenant) as before,
    ):
        yield (
            Route(PATHS[0], proxied, b"/bench/", (tenant.proxy.process.popen.pid,)),
            before,
            Route(PATHS[2], direct, b"/bench-direct/"),
        )


@contextlib.contextmanager
def _before(workdir: Path, core: stack.Core, tenant: stack.Tenant) -> Iterator[Route]:
    """The pod the tenant proxy replaced: grpc-proxy (the core's etcd version) on loopback, the guard in front."""
    grpc_proxy = start_grpc_proxy(workdir / "grpc-proxy", core.etcd, namespace=names.key_prefix(TENANT + "-before"))
    try:
        guard = start_guard(workdir / "guard", tenant.pki.proxy, grpc_proxy)
        try:
            with etcdrpc.Client(guard.address, tenant.identity) as client:
                yield Route(PATHS[1], client, b"/bench/", (grpc_proxy.process.popen.pid, guard.process.popen.pid))
        finally:
            guard.stop()
    finally:
        grpc_proxy.process.stop()


def versions(etcd_version: str) -> str:
    etcd = subprocess.run([etcd_server(etcd_version), "--version"], capture_output=True, text=True, check=True).stdout
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=True).stderr
    return f"etcd {etcd.split()[2]}, {nginx.strip().removeprefix('nginx version: ')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: check that it runs, figures mean little")
    parser.add_argument("--etcd", choices=stack.ETCD_VERSIONS, default=stack.ETCD_VERSIONS[-1], help="core etcd")
    args = parser.parse_args()
    if shutil.which("nginx") is None and shutil.which("/usr/sbin/nginx") is None:
        raise SystemExit("nginx is required (Debian: apt-get install nginx-light)")
    seconds, keys = (0.25, 50) if args.quick else (5.0, 1000)
    print(f"{machine()}; {versions(args.etcd)}")
    print()
    header = ["operation", "clients", "proxy ops/s", "before ops/s", "direct ops/s", "proxy/direct", "before/direct",
              "p50 ms proxy", "before", "direct", "p99 ms proxy", "before", "direct"]  # fmt: skip
    watch_header = ["watch", "writers", *header[2:]]
    kv_rows: list[list[object]] = []
    watch_rows: list[list[object]] = []
    usage: dict[str, list[float]] = {path: [0.0, 0.0] for path in PATHS[:2]}  # CPU seconds, operations
    with (
        tempfile.TemporaryDirectory(prefix="etcdstorage-bench-") as scratch,
        data_paths(Path(scratch), args.etcd) as routes,
    ):
        idle = {route.name: resident_mib(route.pids) for route in routes if route.pids}
        peak = dict(idle)
        steps = {route.name: kv_steps(route, keys) for route in routes}

        def measure(route: Route, run: Callable[..., Figures], *args: object) -> Figures:
            cpu = cpu_seconds(route.pids)
            figures = run(*args)
            if route.pids:
                usage[route.name][0] += cpu_seconds(route.pids) - cpu
                usage[route.name][1] += figures.rate * seconds
                peak[route.name] = max(peak[route.name], resident_mib(route.pids))
            return figures

        for operation in steps[PATHS[0]]:
            for clients in CONCURRENCY:
                measured = {
                    route.name: measure(route, closed_loop, steps[route.name][operation], clients, seconds)
                    for route in routes
                }
                kv_rows.append(row(operation, clients, measured))
        for writers in CONCURRENCY:
            measured = {route.name: measure(route, watch_delivery, route, writers, seconds) for route in routes}
            watch_rows.append(row("put → event", writers, measured))
    print(table(f"KV, grpcio client over TLS, {seconds:g}s per step; before = guard + grpc-proxy", header, kv_rows))
    print()
    title = f"Watch: one watcher on a prefix, writers put for {seconds:g}s; latency from sending a put to its event"
    print(table(title, watch_header, watch_rows))
    print()
    resources = [
        [path, f"{usage[path][0] / usage[path][1] * 1000 * 1000:.0f}", f"{idle[path]:.0f}", f"{peak[path]:.0f}"]
        for path in PATHS[:2]
    ]
    print(table("The proxies' own cost", ["path", "CPU ms per 1,000 ops", "RSS idle MiB", "RSS peak MiB"], resources))
    print()
    print(machine(prefix="after"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
