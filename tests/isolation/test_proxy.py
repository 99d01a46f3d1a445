"""What a tenant's API server needs works through the tenant proxy: the real etcdctl and a raw gRPC client read,
write, watch, transact and lease under the tenant's own names; watch progress is answered; long-idle watches, many
streams and large messages pass; the probes answer; refusals are gRPC errors a Go client understands.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import grpc
import pytest

from testbed import etcdrpc, processes, proxy, stack
from testbed import etcdwire as wire
from testbed.etcd import etcdctl
from testbed.proxy import TenantProxy, start_tenant_proxy
from tests.isolation.attacks import DENIED_MESSAGE, PROXY_MESSAGE

pytestmark = pytest.mark.real

MiB = 1024 * 1024


def test_etcdctl_puts_gets_and_deletes_through_the_proxy(alpha: stack.Tenant, core: stack.Core) -> None:
    put = etcdctl(alpha.address, alpha.identity, "put", "/etcdctl/greeting", "hello")
    got = etcdctl(alpha.address, alpha.identity, "get", "/etcdctl/greeting", "--print-value-only")
    with core.client() as admin:
        stored = admin.get(alpha.prefix.encode() + b"/etcdctl/greeting")  # the prefix, then the key verbatim
    deleted = etcdctl(alpha.address, alpha.identity, "del", "/etcdctl/greeting")

    assert (put.returncode, put.stdout.strip()) == (0, "OK"), put.stderr
    assert got.stdout.strip() == "hello", got.stderr
    assert stored == b"hello"  # the core holds it under the tenant's prefix
    assert deleted.stdout.strip() == "1", deleted.stderr


def test_etcdctl_runs_a_transaction_through_the_proxy(alpha: stack.Tenant) -> None:
    create_if_absent = 'mod("/etcdctl/txn") = "0"\n\nput /etcdctl/txn created\n\nget /etcdctl/txn\n\n'

    first = etcdctl_txn(alpha, create_if_absent)
    second = etcdctl_txn(alpha, create_if_absent)

    assert first.splitlines()[0] == "SUCCESS", first
    assert "OK" in first.splitlines(), first
    assert second.splitlines()[0] == "FAILURE", second
    assert "created" in second.splitlines(), second


def test_etcdctl_grants_a_lease_and_reads_endpoint_status_through_the_proxy(
    alpha: stack.Tenant, core: stack.Core
) -> None:
    granted = etcdctl(alpha.address, alpha.identity, "lease", "grant", "600")
    lease = granted.stdout.split()[1]
    attached = etcdctl(alpha.address, alpha.identity, "put", "/etcdctl/leased", "x", f"--lease={lease}")
    status = etcdctl(alpha.address, alpha.identity, "endpoint", "status", "--write-out=simple")

    assert "granted with TTL(600s)" in granted.stdout, granted.stderr
    assert attached.stdout.strip() == "OK", attached.stderr
    assert status.returncode == 0, status.stderr
    assert f"{core.etcd.version}." in status.stdout


def test_a_refused_rpc_is_a_grpc_error_that_etcdctl_reports(alpha: stack.Tenant, tmp_path: Path) -> None:
    """A Go client (etcdctl) reads the refusal as a gRPC status naming the RPC."""
    snapshot = etcdctl(alpha.address, alpha.identity, "snapshot", "save", str(tmp_path / "core.db"))
    members = etcdctl(alpha.address, alpha.identity, "member", "list")

    for refused in (snapshot, members):
        assert refused.returncode != 0
        assert f"code = PermissionDenied desc = {PROXY_MESSAGE}etcd RPC etcdserverpb." in refused.stderr
        assert DENIED_MESSAGE in refused.stderr, refused.stderr
    assert not (tmp_path / "core.db").exists()


def test_compare_and_swap_transactions_work_as_kube_apiserver_writes(alpha: stack.Tenant) -> None:
    key = b"/registry/widgets/default/w"
    absent = wire.compare(key, wire.CompareResult.EQUAL, wire.CompareTarget.MOD, 0)
    with alpha.client() as client:
        client.delete_range(key)
        created = client.txn(
            wire.txn_request(
                [absent], [wire.op_put(wire.put_request(key, b"v1"))], [wire.op_range(wire.range_request(key))]
            )
        )
        revision = client.range(key).kvs[0].mod_revision
        unchanged = wire.compare(key, wire.CompareResult.EQUAL, wire.CompareTarget.MOD, revision)
        updated = client.txn(
            wire.txn_request(
                [unchanged], [wire.op_put(wire.put_request(key, b"v2"))], [wire.op_range(wire.range_request(key))]
            )
        )
        conflict = client.txn(
            wire.txn_request(
                [unchanged], [wire.op_put(wire.put_request(key, b"v3"))], [wire.op_range(wire.range_request(key))]
            )
        )

    assert created.succeeded
    assert updated.succeeded
    assert not conflict.succeeded
    assert [kv.value for kv in conflict.kvs()] == [b"v2"]  # the failure branch reads the current object


def test_a_watch_delivers_puts_and_deletes_under_the_tenants_own_names(alpha: stack.Tenant) -> None:
    with alpha.client() as client, client.watch(timeout=30) as stream:
        stream.create(b"/watched/", b"/watched0")
        client.put(b"/watched/a", b"1")
        client.delete_range(b"/watched/a")
        events = list(stream.events(timeout=2))

    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        (wire.EventType.PUT, b"/watched/a", b"1"),
        (wire.EventType.DELETE, b"/watched/a", b""),
    ]


def test_a_watch_answers_progress_requests(alpha: stack.Tenant) -> None:
    """kube-apiserver asks for watch progress to serve consistent reads from its cache (ConsistentListFromCache);
    etcd's grpc-proxy dropped these requests."""
    with alpha.client() as client, client.watch(timeout=30) as stream:
        stream.create(b"/progress/")
        revision = client.put(b"/progress-elsewhere", b"x").revision
        stream.send(wire.watch_progress())
        progress = stream.receive()

    assert progress.events == []
    assert progress.revision >= revision


def test_a_key_under_a_lease_expires_with_it(alpha: stack.Tenant) -> None:
    """How kube-apiserver stores objects with a TTL (events): LeaseGrant, then a put with the lease."""
    with alpha.client() as client:
        lease = client.lease_grant(2)
        client.put(b"/ttl/event", b"short-lived", lease=lease.lease_id)
        present = client.get(b"/ttl/event")
        deadline = time.monotonic() + 15
        while client.get(b"/ttl/event") is not None and time.monotonic() < deadline:
            time.sleep(0.25)
        expired = client.get(b"/ttl/event") is None

    assert lease.ttl >= 2
    assert lease.error == ""
    assert present == b"short-lived"
    assert expired


def test_status_reports_the_etcd_version_to_the_tenant(alpha: stack.Tenant, core: stack.Core) -> None:
    """kube-apiserver reads Status for its storage size metric and to detect etcd features; nothing else of the
    core's state (its leader, raft indexes, alarms) is passed on."""
    with alpha.client() as client:
        status = client.status()

    assert status.version.startswith(f"{core.etcd.version}.")
    assert status.db_size > 0
    assert status.leader == 0


def test_large_values_and_large_responses_pass_the_proxy(alpha: stack.Tenant) -> None:
    """Values up to etcd's 1.5 MiB request limit, and a list several MiB long."""
    values = {f"/large/{n}".encode(): bytes([n]) * MiB for n in range(5)}
    with alpha.client() as client:
        for key, value in values.items():
            client.put(key, value)
        listed = client.range(b"/large/", b"/large0")

    assert {kv.key: kv.value for kv in listed.kvs} == values


def test_hundreds_of_concurrent_streams_on_one_connection_all_work(alpha: stack.Tenant) -> None:
    """More watch streams than gRPC's usual 100 per HTTP/2 connection, all on one client connection."""
    count = 250
    with alpha.client() as client:
        streams = [client.watch(timeout=60) for _ in range(count)]
        try:
            for stream in streams:
                stream.create(b"/fanout")
            client.put(b"/fanout", b"to everyone")
            delivered = [[e.kv.value for e in stream.receive(timeout=10).events] for stream in streams]
        finally:
            for stream in streams:
                stream.close()

    assert delivered == [[b"to everyone"]] * count


def test_an_idle_watch_outlives_the_proxys_keepalive(alpha: stack.Tenant) -> None:
    """A watch on a quiet prefix carries nothing for hours; the proxy pings the client after a minute of silence and
    must not end the stream for it."""
    with alpha.client() as client, client.watch(timeout=300) as stream:
        stream.create(b"/quiet/", b"/quiet0")
        time.sleep(70)  # no message in either direction, no keepalive ping from this client
        client.put(b"/quiet/late", b"still listening")
        events = list(stream.events(timeout=5))

    assert [(e.kv.key, e.kv.value) for e in events] == [(b"/quiet/late", b"still listening")]


def test_the_proxy_answers_probes_and_serves_its_own_metrics_only(alpha: stack.Tenant) -> None:
    metrics = alpha.proxy.metrics()

    assert alpha.proxy.health("/livez") == 200
    assert alpha.proxy.health("/readyz") == 200
    assert 'etcdstorage_proxy_requests_total{code="OK",rpc="/etcdserverpb.KV/Range"}' in metrics
    assert "etcdstorage_proxy_certificate_not_after_timestamp_seconds" in metrics
    assert "etcd_server_has_leader" not in metrics  # grpc-proxy served the core etcd's metrics to tenants


@pytest.fixture
def lonely(tmp_path: Path, core: stack.Core) -> Iterator[tuple[stack.Core, stack.Tenant]]:
    """A tenant on a core etcd of its own, which the test may stop."""
    with (
        stack.core_etcd(tmp_path / "core", version=core.etcd.version) as own,
        stack.tenant(tmp_path, own, "gamma") as tenant,
    ):
        yield own, tenant


def test_the_proxy_is_unready_but_alive_while_the_core_etcd_is_down(lonely: tuple[stack.Core, stack.Tenant]) -> None:
    own, tenant = lonely
    ready_before = tenant.proxy.health("/readyz")
    own.etcd.process.stop()
    deadline = time.monotonic() + 30
    while tenant.proxy.health("/readyz") == 200 and time.monotonic() < deadline:
        time.sleep(0.5)

    assert ready_before == 200
    assert tenant.proxy.health("/readyz") == 503  # kubelet takes the pod out of the Service
    assert tenant.proxy.health("/livez") == 200  # but does not restart it: the core is what is down


def test_the_proxy_runs_unprivileged_and_writes_no_file(alpha: stack.Tenant) -> None:
    pid = alpha.proxy.process.popen.pid
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    written = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = os.readlink(f"/proc/{pid}/fd/{fd}")
        flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        if path.startswith("/") and flags & (os.O_WRONLY | os.O_RDWR):
            written.add(path)

    assert uid != "0"
    # Open for writing: its log (stdout and stderr) and /dev/null (stdin); on a read-only root filesystem it
    # needs nothing else.
    assert written <= {"/dev/null", str(alpha.proxy.process.log_path)}, written


def etcdctl_txn(tenant: stack.Tenant, script: str) -> str:
    result = etcdctl(tenant.address, tenant.identity, "txn", stdin=script)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_docs_security_lists_exactly_the_proxys_allowlist() -> None:
    """docs/security.md's table and the code's table (tenant-proxy --print-allowlist) say the same."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    table = text.split("## The allowlist", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(/[^`]+)` \| (.+?) \|$", table, flags=re.MULTILINE))

    assert documented == proxy.allowlist()


SHUTDOWN_DELAY: Final = 1.0  # seconds the stopping proxy serves on, unready (the pod spec's is 5)


@pytest.fixture
def pair(tmp_path: Path, core: stack.Core) -> Iterator[tuple[stack.Tenant, TenantProxy]]:
    """A tenant with two proxy pods: the one the test stops, and a second one its clients go to, as a Service's
    endpoints would send them."""
    args = [f"--shutdown-delay={SHUTDOWN_DELAY}s", "--shutdown-timeout=10s"]
    with stack.tenant(tmp_path, core, "delta", args=args) as tenant:
        second = start_tenant_proxy(
            tmp_path / "second",
            core.etcd,
            prefix=tenant.prefix,
            serving=tenant.pki.proxy,
            upstream=core.pki.proxy_client,
            name="delta-proxy-2",
        )
        try:
            yield tenant, second
        finally:
            second.stop()


def test_a_stopping_proxy_loses_no_write_and_its_watchers_resume_on_another(
    pair: tuple[stack.Tenant, TenantProxy], core: stack.Core
) -> None:
    tenant, second = pair
    stopping = tenant.proxy
    written: list[bytes] = []
    errors: list[grpc.StatusCode] = []
    done = threading.Event()

    def write() -> None:
        """Puts one after the other; on UNAVAILABLE the same put goes to the other proxy, as etcd's client does."""
        address = stopping.address
        n = 0
        while not done.is_set() and n < 2000:
            key = b"/stop/%05d" % n
            with etcdrpc.Client(address, tenant.identity) as client:
                try:
                    while not done.is_set() and n < 2000:
                        client.put(key, b"v")
                        written.append(key)
                        n += 1
                        key = b"/stop/%05d" % n
                        time.sleep(0.005)
                except grpc.RpcError as error:
                    errors.append(error.code())
                    address = second.address

    with tenant.client() as watcher, watcher.watch(timeout=60) as stream:
        stream.create(b"/stop/", b"/stop0")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(1.0)
        stopped_at = time.monotonic()
        stopping.terminate()
        # Unready at once: as soon as the process has taken the signal, well before the delay ends.
        processes.wait_for(lambda: stopping.health("/readyz") == 503, what="unready", timeout=SHUTDOWN_DELAY / 2)
        unready = time.monotonic() - stopped_at
        seen: list[wire.Event] = []
        ended: grpc.RpcError | None = None
        while ended is None and time.monotonic() - stopped_at < 15:
            try:
                seen += stream.receive(timeout=1).events
            except grpc.RpcError as error:
                ended = error
            except queue.Empty:
                continue
        stream_ended = time.monotonic() - stopped_at
        exit_code = stopping.process.popen.wait(timeout=15)
        exited = time.monotonic() - stopped_at

    # The watcher resumes on the other proxy from the revision after the last event it saw.
    resume = seen[-1].kv.mod_revision + 1 if seen else 0
    time.sleep(0.5)
    done.set()
    writer.join(timeout=10)
    with etcdrpc.Client(second.address, tenant.identity) as client, client.watch(timeout=30) as resumed:
        resumed.create(b"/stop/", b"/stop0", start_revision=resume)
        seen += list(resumed.events(timeout=2))
    with core.client() as admin:
        stored = set(admin.range(tenant.prefix.encode() + b"/stop/", tenant.prefix.encode() + b"/stop0").keys)

    assert unready < SHUTDOWN_DELAY  # out of the Service at once
    assert ended is not None
    assert ended.code() is grpc.StatusCode.UNAVAILABLE  # etcd clients retry this at once, elsewhere
    assert SHUTDOWN_DELAY <= stream_ended < SHUTDOWN_DELAY + 5  # when the delay ends, not after a grace period
    assert exit_code == 0
    assert exited < SHUTDOWN_DELAY + 10  # before --shutdown-timeout would cut anything
    assert '"stopped: every request finished"' in stopping.process.log()
    assert set(errors) <= {grpc.StatusCode.UNAVAILABLE}, errors
    assert len(written) > 200
    assert {tenant.prefix.encode() + key for key in written} <= stored  # every acknowledged write is stored
    assert [event.kv.key for event in seen] == written  # every write watched once, in order, across the stop


@pytest.fixture
def capped(tmp_path: Path, core: stack.Core) -> Iterator[stack.Tenant]:
    with stack.tenant(tmp_path, core, "epsilon", args=["--max-watches-per-stream=2"]) as tenant:
        yield tenant


def test_a_watch_over_the_streams_limit_is_refused_alone_and_the_others_go_on(capped: stack.Tenant) -> None:
    refused_before = capped.proxy.metric("etcdstorage_proxy_refusals_total", reason="too-many-watches")
    with capped.client() as client, client.watch(timeout=30) as stream:
        stream.create(b"/a")
        stream.create(b"/b")
        stream.send(wire.watch_create(b"/c"))
        refused = stream.receive()
        client.put(b"/a", b"still watched")
        events = list(stream.events(timeout=2))

    assert refused.created
    assert refused.canceled  # as etcd answers a create it cannot make: the client's watch ends with the reason
    assert "watches are open on this stream" in refused.cancel_reason
    assert [(event.kv.key, event.kv.value) for event in events] == [(b"/a", b"still watched")]
    assert capped.proxy.metric("etcdstorage_proxy_refusals_total", reason="too-many-watches") == refused_before + 1


def test_a_watch_response_larger_than_grpcs_default_4_mib_reaches_the_watcher(alpha: stack.Tenant) -> None:
    """One DeleteRange of four large keys is one revision: etcd sends its four events, each with the deleted value
    (prev_kv), in one response of about 5.6 MiB, beyond gRPC's default limit on what a client receives."""
    values = {b"/huge/%d" % n: bytes([65 + n]) * (1400 * 1024) for n in range(4)}
    with alpha.client() as client, client.watch(timeout=60) as stream:
        for key, value in values.items():
            client.put(key, value)
        stream.send(wire.watch_create(b"/huge/", b"/huge0", prev_kv=True))
        assert stream.receive().created
        client.delete_range(b"/huge/", b"/huge0")
        events = list(stream.events(timeout=5))

    assert [(event.type, event.kv.key) for event in events] == [(wire.EventType.DELETE, key) for key in values]
    assert [event.prev_kv.value for event in events if event.prev_kv] == list(values.values())
