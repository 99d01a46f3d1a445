"""The tenant proxy's request checks: the attacks that the old design (an nginx allowlist in front of etcd's
grpc-proxy) let through, each refused now, judged by what a victim would notice: the core etcd's memory and write
latency, the core's and another tenant's own lease grants, the proxy serving on, the headers the core receives, and
every key outside the tenant's prefix. Where it shows that a test can fail, the same attack goes to a bare grpc-proxy
(TLS and client certificates checked by the grpc-proxy itself, as the original project deployed it) and succeeds.

Attacks that would harm the shared session core (its memory) run on a core etcd of their own, and so does every
bare grpc-proxy that lets an attack on leases or memory through; `tidy` revokes whatever lease a test on the session
core granted, and puts the attacker's keys back as they were.

The fuzz at the end draws from a fixed seed (printed; $ETCDSTORAGE_FUZZ_SEED picks another): the same seed sends
the same requests in the same order, so a failure names the call to replay.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Final

import grpc
import pytest

from testbed import etcdrpc, processes, stack
from testbed import etcdwire as wire
from testbed.certs import TLSFiles
from testbed.etcd import GrpcProxy, start_grpc_proxy
from tests.isolation.attacks import PROXY_MESSAGE, Target, Victims, status_of

pytestmark = pytest.mark.real

KV: Final = "/etcdserverpb.KV/"
LEASE: Final = "/etcdserverpb.Lease/"
WATCH: Final = "/etcdserverpb.Watch/Watch"
MAINTENANCE: Final = "/etcdserverpb.Maintenance/"
MiB: Final = 1024 * 1024
MAX_REQUEST_BYTES: Final = 1536 * 1024  # the proxy's limit, etcd's default --max-request-bytes


def _resident_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def _timed_put(admin: etcdrpc.Client, key: bytes = b"/registry/configmaps/kube-system/heartbeat") -> float:
    """Seconds a Put of the core's own client takes."""
    started = time.monotonic()
    admin.put(key, b"the core cluster writes on")
    return time.monotonic() - started


def _prefix_end(prefix: str) -> bytes:
    return prefix.encode()[:-1] + b"0"  # "/x/" ends before "/x0"


@dataclasses.dataclass(frozen=True)
class Isolated:
    """A core etcd of the test's own, with one tenant behind its tenant proxy."""

    core: stack.Core
    tenant: stack.Tenant


@pytest.fixture
def isolated(tmp_path: Path, core: stack.Core) -> Iterator[Isolated]:
    with (
        stack.core_etcd(tmp_path / "core", version=core.etcd.version) as own,
        stack.tenant(tmp_path / "gamma", own, "gamma") as tenant,
    ):
        yield Isolated(core=own, tenant=tenant)


@pytest.fixture
def isolated_bare(tmp_path: Path, isolated: Isolated) -> Iterator[GrpcProxy]:
    """The isolated tenant's prefix behind a bare grpc-proxy as well (on that core of its own)."""
    proxy = start_grpc_proxy(
        tmp_path / "gamma-bare",
        isolated.core.etcd,
        namespace=isolated.tenant.prefix,
        name="gamma-bare-grpc-proxy",
        listen_tls=isolated.tenant.pki.proxy,
    )
    try:
        yield proxy
    finally:
        proxy.process.stop()


@pytest.fixture
def doomed_bare(tmp_path: Path, core: stack.Core, alpha: stack.Tenant) -> Iterator[GrpcProxy]:
    """alpha's prefix behind a bare grpc-proxy of the test's own: the test kills it."""
    proxy = start_grpc_proxy(
        tmp_path / "doomed", core.etcd, namespace=alpha.prefix, name="doomed-grpc-proxy", listen_tls=alpha.pki.proxy
    )
    try:
        yield proxy
    finally:
        proxy.process.stop()


def _kvs(admin: etcdrpc.Client, prefix: str) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in admin.range(prefix.encode(), _prefix_end(prefix)).kvs}


@pytest.fixture
def tidy(core: stack.Core, alpha: stack.Tenant) -> Iterator[None]:
    """Undo what the test left in the session core: the leases that appeared are revoked, alpha's keys are put back
    as they were (through the core's own client)."""
    with core.client() as admin:
        leases = set(admin.lease_leases())
        kept = _kvs(admin, alpha.prefix)
    yield
    with core.client() as admin:
        new = sorted(set(admin.lease_leases()) - leases)
        admin.unary_many(LEASE + "LeaseRevoke", [wire.lease_id_request(lease) for lease in new])
        now = _kvs(admin, alpha.prefix)
        for key in now.keys() - kept.keys():
            admin.delete_range(key)
        for key, value in kept.items():
            if now.get(key) != value:
                admin.put(key, value)


# --- 1. Transactions that multiply their reads inside the core's apply loop -----------------------------------------
AMPLIFIED_KEY: Final = b"/k"
AMPLIFIED_VALUE: Final = b"v" * 2048
AMPLIFIED_WRITE: Final = b"/w"
LEVELS, WIDTH = 3, 34  # 34 ** 3 = 39,304 reads of one 2 KiB key: 77 MiB of answer from 320 KB of request


def _amplifying_txn() -> bytes:
    """The measured attack: a Txn three levels deep, 34 operations a level, whose innermost operations all read the
    same 2 KiB key of the tenant's own; a Put in the outer level makes it a write, run by the core's apply loop
    (where every member executes it while every other write of the cluster waits)."""
    op = wire.op_range(wire.range_request(AMPLIFIED_KEY))
    for _ in range(LEVELS - 1):
        op = wire.op_txn(wire.txn_request(success=[op] * WIDTH))
    return wire.txn_request(success=[op] * WIDTH + [wire.op_put(wire.put_request(AMPLIFIED_WRITE, b"written"))])


def _refused_txn(tenant: etcdrpc.Client, core: stack.Core, request: bytes) -> tuple[grpc.RpcError, float]:
    """Send the Txn `request`, which must be refused; the error, and how much the core etcd's memory grew meanwhile
    (MiB)."""
    pid = core.etcd.process.popen.pid
    before = _resident_mib(pid)
    with pytest.raises(grpc.RpcError) as raised:
        tenant.unary(KV + "Txn", request, timeout=60)
    return raised.value, _resident_mib(pid) - before


def test_a_nested_transaction_of_39304_reads_is_refused_before_it_reaches_the_core_etcd(
    isolated: Isolated, capsys: pytest.CaptureFixture[str]
) -> None:
    request = _amplifying_txn()
    with isolated.tenant.client() as tenant:
        tenant.put(AMPLIFIED_KEY, AMPLIFIED_VALUE)
        error, grown = _refused_txn(tenant, isolated.core, request)
    with isolated.core.client() as admin:
        latency = _timed_put(admin)
        applied = admin.get(isolated.tenant.prefix.encode() + AMPLIFIED_WRITE)
    with capsys.disabled():
        print(
            f"\ntenant proxy, nested Txn of {len(request)} bytes: core etcd resident memory "
            f"{grown:+.1f} MiB after the refusal; a core Put right after took {latency * 1000:.1f} ms"
        )

    code, details = status_of(error)
    assert 300_000 < len(request) < MAX_REQUEST_BYTES  # small enough to pass the size limit: refused for its shape
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(PROXY_MESSAGE)
    assert "nests another Txn" in details
    assert grown < 20
    assert applied is None  # the core never ran it


def test_a_bare_grpc_proxy_passes_the_nested_transaction_to_the_core_etcd(
    isolated: Isolated, isolated_bare: GrpcProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """The comparison: the same request through a bare grpc-proxy is executed by the core. Only what is robust is
    asserted (the core ran it); its memory growth and the latency of the core's own writes meanwhile are printed,
    as they vary with the machine (61 -> 519 MiB and 3.5 s where first measured)."""
    request = _amplifying_txn()
    pid = isolated.core.etcd.process.popen.pid
    answered: list[str] = []
    failed: list[grpc.StatusCode] = []

    def attack() -> None:
        with etcdrpc.Client(isolated_bare.address, isolated.tenant.identity) as attacker:
            try:
                answered.append(f"{len(attacker.unary(KV + 'Txn', request, timeout=60)) / MiB:.0f} MiB of answer")
            except grpc.RpcError as error:
                code, details = status_of(error)
                failed.append(code)
                answered.append(f"{code.name}: {details[:80]}")

    with etcdrpc.Client(isolated_bare.address, isolated.tenant.identity) as tenant:
        tenant.put(AMPLIFIED_KEY, AMPLIFIED_VALUE)
    before = _resident_mib(pid)
    attacker = threading.Thread(target=attack, daemon=True)
    slowest, puts = 0.0, 0
    with isolated.core.client() as admin:
        admin.put(b"/registry/warm-up", b"x")  # the core client's connection is up before the attack starts
        attacker.start()
        deadline = time.monotonic() + 60
        while attacker.is_alive() and time.monotonic() < deadline and puts < 20_000:
            slowest, puts = max(slowest, _timed_put(admin)), puts + 1
        attacker.join(timeout=max(deadline - time.monotonic(), 0))
        after = _resident_mib(pid)
        applied = admin.get(isolated.tenant.prefix.encode() + AMPLIFIED_WRITE)
    with capsys.disabled():
        print(
            f"\nbare grpc-proxy, nested Txn of {len(request)} bytes: {answered[0] if answered else 'no answer'}; "
            f"core etcd resident memory {before:.0f} -> {after:.0f} MiB; "
            f"slowest of {puts} concurrent core Puts {slowest:.2f} s"
        )

    assert not attacker.is_alive()
    assert grpc.StatusCode.INVALID_ARGUMENT not in failed
    assert applied == b"written"  # the core's apply loop ran all 39,304 reads


def test_a_flat_transaction_of_129_operations_is_refused_as_too_large(proxied: Target) -> None:
    """etcd's --max-txn-ops (128) counts each branch of each level on its own; the proxy counts both branches."""
    read = wire.op_range(wire.range_request(b"/own"))
    with proxied.client() as client, pytest.raises(grpc.RpcError) as raised:
        client.unary(KV + "Txn", wire.txn_request(success=[read] * 100, failure=[read] * 29))

    code, details = status_of(raised.value)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert details.startswith(PROXY_MESSAGE)
    assert "129 operations" in details


FLAT_READS: Final = 127  # reads of one large key, and a Put: 128 operations, within --max-txn-ops
LARGE_VALUE: Final = b"v" * (MAX_REQUEST_BYTES - 4096)  # as large as one Put may write


def _flat_amplifying_txn() -> bytes:
    """127 reads of the same 1.5 MiB key and a write, about 1 KB: no nesting, no range, 128 operations; etcd would
    answer 190 MiB, built by the core's apply loop."""
    read = wire.op_range(wire.range_request(AMPLIFIED_KEY))
    return wire.txn_request(success=[read] * FLAT_READS + [wire.op_put(wire.put_request(AMPLIFIED_WRITE, b"w"))])


def test_a_flat_transaction_reading_one_large_key_127_times_is_refused(
    isolated: Isolated, capsys: pytest.CaptureFixture[str]
) -> None:
    request = _flat_amplifying_txn()
    with isolated.tenant.client() as tenant:
        tenant.put(AMPLIFIED_KEY, LARGE_VALUE)
        error, grown = _refused_txn(tenant, isolated.core, request)
        few = tenant.txn(wire.txn_request(success=[wire.op_range(wire.range_request(AMPLIFIED_KEY))] * 4))
    with capsys.disabled():
        print(f"\ntenant proxy, flat Txn of {len(request)} bytes: core etcd memory {grown:+.1f} MiB after the refusal")

    code, details = status_of(error)
    assert len(request) < 2048
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert details.startswith(PROXY_MESSAGE)
    assert f"reads {FLAT_READS} keys" in details
    assert grown < 20
    assert [kv.value for kv in few.kvs()] == [LARGE_VALUE] * 4  # a few reads per Txn pass


def test_a_bare_grpc_proxy_lets_a_1_kb_transaction_make_the_core_answer_190_mib(
    isolated: Isolated, isolated_bare: GrpcProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    request = _flat_amplifying_txn()
    pid = isolated.core.etcd.process.popen.pid
    with etcdrpc.Client(isolated_bare.address, isolated.tenant.identity) as tenant:
        tenant.put(AMPLIFIED_KEY, LARGE_VALUE)
        before = _resident_mib(pid)
        started = time.monotonic()
        answer = tenant.unary(KV + "Txn", request, timeout=120)
        took = time.monotonic() - started
    after = _resident_mib(pid)
    with capsys.disabled():
        print(
            f"\nbare grpc-proxy, flat Txn of {len(request)} bytes: {len(answer) / MiB:.0f} MiB of answer in "
            f"{took:.1f} s; core etcd resident memory {before:.0f} -> {after:.0f} MiB"
        )

    assert len(answer) > FLAT_READS * len(LARGE_VALUE)  # the core built and sent all of it


def test_a_transaction_that_reads_a_range_is_refused_where_a_bare_grpc_proxy_runs_it(
    proxied: Target, bare: Target
) -> None:
    request = wire.txn_request(success=[wire.op_range(wire.range_request(b"/own", b"/own0"))])
    with proxied.client() as client, pytest.raises(grpc.RpcError) as raised:
        client.unary(KV + "Txn", request)
    with bare.client() as client:
        client.put(b"/own", b"alpha's own value")
        passed = client.txn(request)

    code, details = status_of(raised.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(PROXY_MESSAGE)
    assert "reads a range" in details
    assert passed.succeeded  # the bare proxy let the core run the ranged read inside the transaction
    assert b"alpha's own value" in [kv.value for kv in passed.kvs()]


# --- 2. Lease IDs chosen ahead of etcd's counter ----------------------------------------------------------------
CHOSEN_LEASES: Final = 1500
VICTIM_GRANTS: Final = 25


def _chosen_lease_ids(granted: int) -> list[int]:
    """The IDs etcd will hand out next, after `granted`, once the attack's own grants have moved its counter on.

    etcd (3.5 and 3.6 alike) takes a lease ID from the generator of its raft request IDs: a grant without an ID takes
    one for the lease and the next for its raft entry (so IDs go up by 2), a grant with a chosen ID takes one for its
    raft entry, any other write or linearizable read one more. 1,500 chosen grants move the counter 1,500 on: the
    chosen IDs start there, and the next 750 grants of anyone collide.
    """
    return [granted + CHOSEN_LEASES + 1 + n for n in range(CHOSEN_LEASES)]


def _grant(client: etcdrpc.Client) -> int | str:
    """A lease of etcd's choice (its ID), or why not."""
    try:
        return client.lease_grant(60).lease_id
    except grpc.RpcError as error:
        code, details = status_of(error)
        return f"{code.name}: {details}"


def test_leases_with_chosen_ids_are_refused_so_the_core_and_other_tenants_still_get_leases(
    alpha: stack.Tenant, beta: stack.Tenant, core: stack.Core, tidy: None
) -> None:
    refusals = alpha.proxy.metric("etcdstorage_proxy_refusals_total", reason="chosen-lease-id")
    with alpha.client() as attacker, core.client() as admin, beta.client() as other:
        granted = attacker.lease_grant(60).lease_id  # where etcd's counter is
        chosen = _chosen_lease_ids(granted)
        answers = attacker.unary_many(LEASE + "LeaseGrant", [wire.lease_grant_request(60, lease) for lease in chosen])
        core_grants = [_grant(admin) for _ in range(VICTIM_GRANTS)]
        beta_grants = [_grant(other) for _ in range(VICTIM_GRANTS)]
        existing = set(chosen) & set(admin.lease_leases())  # `tidy` revokes every lease the test made

    refused = [
        status_of(answer)
        for answer in answers
        if isinstance(answer, grpc.RpcError) and status_of(answer)[0] is grpc.StatusCode.INVALID_ARGUMENT
    ]
    assert len(refused) == CHOSEN_LEASES, [answer for answer in answers if not isinstance(answer, grpc.RpcError)][:3]
    assert all(details.startswith(PROXY_MESSAGE) and "chosen ID" in details for _, details in refused)
    assert alpha.proxy.metric("etcdstorage_proxy_refusals_total", reason="chosen-lease-id") == refusals + CHOSEN_LEASES
    assert existing == set()
    assert [grant for grant in core_grants if isinstance(grant, str)] == []
    assert [grant for grant in beta_grants if isinstance(grant, str)] == []


def test_a_bare_grpc_proxy_lets_chosen_lease_ids_block_the_cores_own_lease_grants(
    isolated: Isolated, isolated_bare: GrpcProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        etcdrpc.Client(isolated_bare.address, isolated.tenant.identity) as attacker,
        isolated.core.client() as admin,
    ):
        granted = attacker.lease_grant(60).lease_id
        chosen = _chosen_lease_ids(granted)
        answers = attacker.unary_many(LEASE + "LeaseGrant", [wire.lease_grant_request(60, lease) for lease in chosen])
        core_grants = [_grant(admin) for _ in range(VICTIM_GRANTS)]
        leases = admin.lease_leases()
        admin.unary_many(LEASE + "LeaseRevoke", [wire.lease_id_request(lease) for lease in leases])
    accepted = [wire.LeaseGrantResponse.parse(answer).lease_id for answer in answers if isinstance(answer, bytes)]
    failed = [grant for grant in core_grants if isinstance(grant, str)]
    with capsys.disabled():
        print(
            f"\nbare grpc-proxy: {len(accepted)} of {CHOSEN_LEASES} leases with chosen IDs granted; then "
            f"{len(failed)} of {VICTIM_GRANTS} LeaseGrants of the core's own client failed"
            + (f" ({collections.Counter(failed).most_common(1)[0][0]})" if failed else "")
        )

    assert accepted == chosen  # the bare proxy passed every chosen ID, and etcd granted each as asked


# --- 3. The two-byte Txn that made grpc-proxy panic -------------------------------------------------------------
EMPTY_OP_TXN: Final = b"\x12\x00"  # TxnRequest{success: [RequestOp{}]}: an operation of no kind at all


def test_the_two_byte_transaction_that_killed_grpc_proxy_is_refused_and_the_proxy_serves_on(
    alpha: stack.Tenant, proxied: Target
) -> None:
    refusals = alpha.proxy.metric("etcdstorage_proxy_refusals_total", reason="empty-op")
    with proxied.client() as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.unary(KV + "Txn", EMPTY_OP_TXN)
        after = client.range(b"/own")

    code, details = status_of(raised.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(PROXY_MESSAGE)
    assert alpha.proxy.process.running
    assert after.revision > 0
    assert alpha.proxy.metric("etcdstorage_proxy_refusals_total", reason="empty-op") == refusals + 1


def test_the_two_byte_transaction_kills_a_bare_grpc_proxy(
    alpha: stack.Tenant, doomed_bare: GrpcProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    with etcdrpc.Client(doomed_bare.address, alpha.identity) as client:
        client.range(b"/own")  # it serves, until...
        try:
            client.unary(KV + "Txn", EMPTY_OP_TXN, timeout=5)
            answer = "answered"
        except grpc.RpcError as error:
            code, details = status_of(error)
            answer = f"{code.name}: {details}"
        deadline = time.monotonic() + 5
        while doomed_bare.process.running and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            client.range(b"/own", limit=1)
            next_call = "answered"
        except grpc.RpcError as error:
            next_call = status_of(error)[0].name
    panic = next((line for line in doomed_bare.process.log().splitlines() if line.startswith("panic:")), "no panic")
    with capsys.disabled():
        print(
            f"\nbare grpc-proxy, the 2-byte Txn: {answer}; process exit code {doomed_bare.process.popen.poll()}; "
            f"the next Range: {next_call}; its log: {panic[:120]}"
        )

    assert not doomed_bare.process.running or next_call != "answered"


# --- 4. Client metadata: nothing of the tenant's headers travels to the core ------------------------------------
class Wiretap(grpc.GenericRpcHandler):
    """A TLS endpoint that stands in for the core etcd: it relays every unary call to the real core and records the
    gRPC metadata each call arrived with, which is what the core etcd would read its `token` from.

    Why a relay: etcd 3.5 and 3.6 look at a `token` (or `authorization`) header only while auth is enabled, and log
    only a fingerprint of an invalid one, so neither the core's log nor a status shows a forwarded header here. With
    auth enabled, a forwarded token is a credential: any user's token (the core's own clients', or a guessed simple
    token) would let a tenant act as that user of the core etcd.
    """

    def __init__(self, core: stack.Core) -> None:
        self.received: list[tuple[str, tuple[tuple[str, str | bytes], ...]]] = []
        self._lock = threading.Lock()
        self._upstream = etcdrpc.Client(core.etcd.address, core.pki.proxy_client)
        tls = core.pki.server  # the core's own serving certificate, and its CA for client certificates
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.ca.read_bytes(),
            require_client_auth=True,
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[self])
        port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()
        self.core = stack.Core(etcd=dataclasses.replace(core.etcd, port=port), pki=core.pki)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        with self._lock:
            self.received.append(
                (method, tuple((key, value) for key, value in handler_call_details.invocation_metadata))
            )

        def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return self._upstream.unary(method, request)
            except grpc.RpcError as error:
                context.abort(*status_of(error))

        return grpc.unary_unary_rpc_method_handler(relay)

    def since(self, mark: int) -> list[tuple[str, tuple[tuple[str, str | bytes], ...]]]:
        with self._lock:
            return self.received[mark:]

    def close(self) -> None:
        self._server.stop(grace=None).wait(5)
        self._upstream.close()


@dataclasses.dataclass(frozen=True)
class Tapped:
    tap: Wiretap
    tenant: stack.Tenant
    bare: GrpcProxy


@pytest.fixture
def tapped(tmp_path: Path, core: stack.Core) -> Iterator[Tapped]:
    """A tenant whose tenant proxy, and whose bare grpc-proxy, reach the session core through a wiretap."""
    tap = Wiretap(core)
    try:
        with stack.tenant(tmp_path / "delta", tap.core, "delta") as tenant:
            bare = start_grpc_proxy(
                tmp_path / "delta-bare",
                tap.core.etcd,
                namespace=tenant.prefix,
                name="delta-bare-grpc-proxy",
                listen_tls=tenant.pki.proxy,
            )
            try:
                yield Tapped(tap=tap, tenant=tenant, bare=bare)
            finally:
                bare.process.stop()
    finally:
        tap.close()


def test_a_tenants_token_reaches_the_core_through_a_bare_grpc_proxy_but_never_through_the_tenant_proxy(
    tapped: Tapped, core: stack.Core, capsys: pytest.CaptureFixture[str]
) -> None:
    token, authorization = f"marker-{secrets.token_hex(12)}", f"marker-{secrets.token_hex(12)}"
    metadata = (("token", token), ("authorization", f"Bearer {authorization}"))
    received: dict[str, list[tuple[str, tuple[tuple[str, str | bytes], ...]]]] = {}
    answers: dict[str, list[bytes]] = {}
    for name, address in (("tenant proxy", tapped.tenant.address), ("bare grpc-proxy", tapped.bare.address)):
        with etcdrpc.Client(address, tapped.tenant.identity) as client:
            client.put(b"/greeting", b"hello")
            mark = len(tapped.tap.since(0))
            answer = client.unary_with_metadata(KV + "Range", wire.range_request(b"/greeting"), metadata)
            received[name] = tapped.tap.since(mark)
            answers[name] = [kv.value for kv in wire.RangeResponse.parse(answer).kvs]

    def headers(name: str) -> dict[str, list[str | bytes]]:
        found: dict[str, list[str | bytes]] = collections.defaultdict(list)
        for _, call_metadata in received[name]:
            for key, value in call_metadata:
                found[key].append(value)
        return dict(found)

    def carries_a_marker(name: str) -> list[str]:
        return [key for key, values in headers(name).items() if any("marker-" in str(v) for v in values)]

    with capsys.disabled():
        print(
            f"\nheaders the core received, through the tenant proxy: {sorted(headers('tenant proxy'))}; "
            f"through the bare grpc-proxy: {sorted(headers('bare grpc-proxy'))}, the tenant's marker in "
            f"{carries_a_marker('bare grpc-proxy')}"
        )

    assert answers["tenant proxy"] == [b"hello"]  # the call with headers succeeds normally
    assert KV + "Range" in [method for method, _ in received["tenant proxy"]]  # the tap saw that very call
    assert carries_a_marker("tenant proxy") == []
    assert token not in core.etcd.process.log()
    assert authorization not in core.etcd.process.log()
    assert token in headers("bare grpc-proxy").get("token", [])  # the bare proxy forwards the tenant's token


# --- 5. A time-bounded fuzz of every allowlisted RPC -------------------------------------------------------------
FUZZ_SEED: Final = int(os.environ.get("ETCDSTORAGE_FUZZ_SEED", "20261201"))
FUZZ_SECONDS: Final = 15.0
FUZZ_CALLS: Final = 20_000  # a bound as well, for machines quicker than 4 ms a call
CALL_TIMEOUT: Final = 5.0  # an answer later than this is a hang
# grpc-go's own answer to bytes that do not decode as the request message, before any code of the proxy runs (etcd
# answers the same): INTERNAL by grpc-go's convention, not a bug of the proxy. Newer grpc-go (the tenant proxy's),
# then older (grpc-proxy 3.5.1's).
UNDECODABLE: Final = ("grpc: failed to unmarshal the received message", "grpc: error unmarshalling request")
WITNESS_KEY: Final = b"/fuzz-witness"

# The messages the fuzz builds, field number -> kind (etcd's rpc.proto): "bytes", "int" (int64), "bool", "enumN" (N
# valid values), or the name of a message.
SCHEMAS: Final[dict[str, dict[int, str]]] = {
    "RangeRequest": {
        1: "bytes",
        2: "bytes",
        3: "int",
        4: "int",
        5: "enum3",
        6: "enum5",
        7: "bool",
        8: "bool",
        9: "bool",
        10: "int",
        11: "int",
        12: "int",
        13: "int",
    },
    "PutRequest": {1: "bytes", 2: "bytes", 3: "int", 4: "bool", 5: "bool", 6: "bool"},
    "DeleteRangeRequest": {1: "bytes", 2: "bytes", 3: "bool"},
    "Compare": {1: "enum4", 2: "enum5", 3: "bytes", 4: "int", 5: "int", 6: "int", 7: "bytes", 8: "int", 64: "bytes"},
    "RequestOp": {1: "RangeRequest", 2: "PutRequest", 3: "DeleteRangeRequest", 4: "TxnRequest"},
    "TxnRequest": {1: "Compare", 2: "RequestOp", 3: "RequestOp"},
    "LeaseGrantRequest": {1: "int", 2: "int"},
    "StatusRequest": {},
    "WatchRequest": {1: "WatchCreateRequest", 2: "WatchCancelRequest", 3: "WatchProgressRequest"},
    "WatchCreateRequest": {
        1: "bytes",
        2: "bytes",
        3: "int",
        4: "bool",
        5: "enum2",
        6: "bool",
        7: "int",
        8: "bool",
    },
    "WatchCancelRequest": {1: "int"},
    "WatchProgressRequest": {},
}
ONEOFS: Final = frozenset({"RequestOp", "WatchRequest"})
REPEATED: Final = frozenset({("TxnRequest", 1), ("TxnRequest", 2), ("TxnRequest", 3), ("WatchCreateRequest", 5)})
UNARY: Final = {
    KV + "Range": "RangeRequest",
    KV + "Put": "PutRequest",
    KV + "DeleteRange": "DeleteRangeRequest",
    KV + "Txn": "TxnRequest",
    LEASE + "LeaseGrant": "LeaseGrantRequest",
    MAINTENANCE + "Status": "StatusRequest",
}
FUZZED: Final = (*UNARY, WATCH)
KEYS: Final = (
    b"",
    b"\0",
    b"/",
    b"/own",
    b"/fuzz/a",
    b"/fuzz/b",
    b"/fuzz0",
    b"..",
    b"../beta/secret",
    b"/../../registry/secrets/kube-system/x",
    b"/registry/secrets/kube-system/x",
    b"\xff",
    b"\xff" * 8,
)
INTS: Final = (0, 1, -1, 2, 7, 128, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1)


class Fuzzer:
    """Requests drawn from one seeded generator: valid ones built field by field, then mutated (bytes flipped,
    cut short, fields duplicated, random varints and other wire types added, garbage nested, lengths that lie), or
    purely random bytes. Nothing drawn depends on an answer, so a seed always sends the same requests."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible on purpose, nothing secret

    def request(self, name: str) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return rng.randbytes(rng.randint(0, 64))
        if name == "TxnRequest" and roll < 0.13:
            return self._deep_txn()
        data = self.message(name)
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            data = self._mutate(data)
        return data

    def message(self, name: str, depth: int = 0) -> bytes:
        rng, schema = self.rng, SCHEMAS[name]
        numbers = list(schema)
        if name in ONEOFS:  # one member, mostly; sometimes none or two
            chosen = rng.sample(numbers, rng.choice((1, 1, 1, 1, 0, 2)))
        else:
            chosen = [number for number in numbers if rng.random() < 0.5]
        if depth >= 3:  # no deeper: a nested Txn only up to here
            chosen = [number for number in chosen if schema[number] != "TxnRequest"]
        fields = []
        for number in chosen:
            for _ in range(rng.randint(1, 5) if (name, number) in REPEATED else 1):
                fields.append(self._field(number, schema[number], depth))
        if fields and rng.random() < 0.1:
            fields.append(rng.choice(fields))  # a field twice
        rng.shuffle(fields)
        return b"".join(fields)

    def _field(self, number: int, kind: str, depth: int) -> bytes:
        rng = self.rng
        if kind == "bytes":
            raw = rng.choice(KEYS) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 24))
            return wire.bytes_field(number, raw, always=True)
        if kind in SCHEMAS:
            return wire.message_field(number, self.message(kind, depth + 1))
        if kind.startswith("enum"):
            size = int(kind.removeprefix("enum"))
            value = rng.randrange(size) if rng.random() < 0.8 else rng.choice((-1, size, 2**31 - 1, 2**32 + 1))
        elif kind == "bool":
            value = rng.randint(0, 1) if rng.random() < 0.9 else rng.getrandbits(64)
        else:
            roll = rng.random()
            value = rng.choice(INTS) if roll < 0.5 else rng.randint(0, 1000) if roll < 0.8 else rng.getrandbits(64)
        return wire.tag(number, 0) + wire.varint(value)

    def _deep_txn(self) -> bytes:
        op = wire.op_range(wire.range_request(b"/own"))
        for _ in range(self.rng.randint(2, 12)):
            op = wire.op_txn(wire.txn_request(success=[op]))
        return wire.txn_request(success=[op])

    def _mutate(self, data: bytes) -> bytes:
        rng = self.rng
        # Kinds 3, 4 and 6 mostly keep the message decodable (so the checks and etcd see it), the others mostly not.
        kind = rng.choices(range(8), weights=(1, 1, 1, 2, 2, 1, 3, 1))[0]
        if kind == 0 and data:  # flip bits of one byte
            at = rng.randrange(len(data))
            return data[:at] + bytes([data[at] ^ rng.randint(1, 255)]) + data[at + 1 :]
        if kind == 1:  # cut short
            return data[: rng.randint(0, len(data))]
        if kind == 2:  # a slice of itself inserted anywhere
            start, end = sorted(rng.randint(0, len(data)) for _ in range(2))
            at = rng.randint(0, len(data))
            return data[:at] + data[start:end] + data[at:]
        if kind == 3:  # every field twice: repeated fields doubled, scalars overridden, sub-messages merged
            return data + data
        if kind == 4:  # a varint field of any number
            extra = wire.tag(rng.choice((0, 1, 2, 3, 4, 5, 9, 64, rng.randint(1, 2**29 - 1))), 0)
            extra += wire.varint(rng.getrandbits(64))
        elif kind == 5:  # another wire type, where a varint or a message belongs
            extra = wire.tag(rng.randint(1, 8), rng.choice((1, 3, 4, 5, 6, 7))) + rng.randbytes(rng.randint(0, 9))
        elif kind == 6:  # nested garbage: random bytes, another message or itself, as any field
            content = rng.choice(
                (rng.randbytes(rng.randint(0, 32)), self.message(rng.choice(list(SCHEMAS)), depth=2), data)
            )
            extra = wire.message_field(rng.choice((1, 2, 3, 4, 5, 6, 7, 8, 64)), content)
        else:  # a length that claims more than there is
            extra = wire.tag(rng.randint(1, 8), 2) + wire.varint(rng.randint(1, 2**32)) + rng.randbytes(4)
        return extra + data if rng.random() < 0.5 else data + extra


@dataclasses.dataclass
class FuzzRun:
    seed: int
    calls: int = 0
    seconds: float = 0.0
    answers: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    def report(self, target: str) -> str:
        codes: collections.Counter[str] = collections.Counter()
        for (_, code), count in self.answers.items():
            codes[code] += count
        by_method = collections.defaultdict(list)
        for (method, code), count in sorted(self.answers.items()):
            by_method[method].append(f"{code} {count}")
        lines = [
            f"fuzz of the {target}, seed {self.seed}: {self.calls} calls in {self.seconds:.1f} s, "
            f"{len(self.failures)} failure(s)",
            "  status codes: " + ", ".join(f"{code} {count}" for code, count in codes.most_common()),
            *(f"  {method}: {', '.join(found)}" for method, found in by_method.items()),
            *(f"  FAILURE {failure}" for failure in self.failures[:4]),
            *(f"  ... the last: {failure}" for failure in self.failures[4:][-1:]),
        ]
        return "\n".join(lines)


def _shown(message: bytes) -> str:
    return message.hex() if len(message) <= 96 else f"{message[:96].hex()}... ({len(message)} bytes)"


def _judged(code: str, details: str) -> tuple[str, str | None]:
    """How an answer is counted, and the problem it shows (None when it is an acceptable answer)."""
    if code == "INTERNAL" and details.startswith(UNDECODABLE):
        return "INTERNAL (undecodable, grpc-go's answer)", None
    if code in {"INTERNAL", "UNKNOWN"}:
        return code, f"{code}: {details}"
    if code in {"DEADLINE_EXCEEDED", "hang"}:
        return "hang", f"no answer within {CALL_TIMEOUT:.0f} s ({details})"
    return code, None


def _unary(client: etcdrpc.Client, path: str, request: bytes) -> tuple[str, str]:
    try:
        client.unary(path, request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        code, details = status_of(error)
        return code.name, details
    return "OK", ""


def _watch(client: etcdrpc.Client, messages: list[bytes], witness: bytes) -> tuple[str, str]:
    """Send the messages on one Watch stream, then a witness: a write of the tenant's own key and a watch of it from
    that write's revision. The stream must deliver that event, or end with a status, within the timeout."""
    with client.watch(timeout=CALL_TIMEOUT + 5) as stream:
        for message in messages:
            stream.send(message)
        try:
            written = client.put(WITNESS_KEY, witness).revision
        except grpc.RpcError as error:
            code, details = status_of(error)
            return code.name, f"the witness write failed: {details}"
        stream.send(wire.watch_create(WITNESS_KEY, start_revision=written))
        deadline = time.monotonic() + CALL_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                response = stream.receive(timeout=remaining)
            except queue.Empty:
                break
            except grpc.RpcError as error:
                code, details = status_of(error)
                return code.name, details
            if any(event.kv.key == WITNESS_KEY and event.kv.value == witness for event in response.events):
                return "OK", ""
    return "hang", "the witness event never came"


def _fuzz(address: str, identity: TLSFiles, process: processes.Process, *, seconds: float, calls: int) -> FuzzRun:
    """Random and mutated requests to every allowlisted RPC, one after the other, until `seconds` pass, `calls` were
    made, or the proxy process is gone."""
    fuzzer, run = Fuzzer(FUZZ_SEED), FuzzRun(seed=FUZZ_SEED)
    started = time.monotonic()
    with etcdrpc.Client(address, identity) as client:
        while run.calls < calls and time.monotonic() - started < seconds and process.running:
            method = fuzzer.rng.choice(FUZZED)
            if method == WATCH:
                messages = [fuzzer.request("WatchRequest") for _ in range(fuzzer.rng.randint(1, 4))]
                code, details = _watch(client, messages, f"witness of call {run.calls + 1}".encode())
            else:
                messages = [fuzzer.request(UNARY[method])]
                code, details = _unary(client, method, messages[0])
            run.calls += 1
            label, problem = _judged(code, details)
            if not process.running:
                problem = f"the proxy process exited (code {process.popen.poll()}), answering {code}: {details[:80]}"
            run.answers[method.rsplit("/", 1)[1], label] += 1
            if problem is not None:
                sent = " then ".join(_shown(message) for message in messages)
                run.failures.append(f"call {run.calls} ({method}, bytes {sent}): {problem}")
    run.seconds = time.monotonic() - started
    return run


def _outside(admin: etcdrpc.Client, prefix: str) -> dict[bytes, int]:
    """Every key of the core etcd outside `prefix`, with its mod revision."""
    every = wire.RangeResponse.parse(admin.unary(KV + "Range", wire.range_request(b"\0", b"\0", keys_only=True)))
    return {kv.key: kv.mod_revision for kv in every.kvs if not kv.key.startswith(prefix.encode())}


def test_random_and_mutated_requests_never_crash_hang_or_reach_outside_the_tenant_proxy(
    alpha: stack.Tenant, core: stack.Core, victims: Victims, tidy: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with core.client() as admin:
        before = _outside(admin, alpha.prefix)
    run = _fuzz(alpha.address, alpha.identity, alpha.proxy.process, seconds=FUZZ_SECONDS, calls=FUZZ_CALLS)
    with core.client() as admin:
        after = _outside(admin, alpha.prefix)
    with alpha.client() as client:
        answered = client.range(b"/own")
    panics = alpha.proxy.metric("etcdstorage_proxy_panics_total")
    with capsys.disabled():
        print("\n" + run.report("tenant proxy"))

    assert run.failures == [], f"replay with ETCDSTORAGE_FUZZ_SEED={run.seed}"
    assert alpha.proxy.process.running
    assert panics == 0
    assert answered.revision > 0  # still answers a normal Range
    assert victims.damage() == []
    changed = {key: (before.get(key), after.get(key)) for key in before.keys() | after.keys()}
    assert {key: revisions for key, revisions in changed.items() if revisions[0] != revisions[1]} == {}
    codes = {code for _, code in run.answers}
    assert run.calls >= 200
    assert {"OK", "INVALID_ARGUMENT"} <= codes  # both valid requests and refusals were drawn


def test_the_same_fuzz_kills_a_bare_grpc_proxy(
    alpha: stack.Tenant, doomed_bare: GrpcProxy, tidy: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The comparison that shows the fuzz can fail: against a bare grpc-proxy it ends in a crash (bounded to a few
    seconds, and to the first death)."""
    run = _fuzz(doomed_bare.address, alpha.identity, doomed_bare.process, seconds=10, calls=1000)
    with capsys.disabled():
        print("\n" + run.report("bare grpc-proxy"))

    assert not doomed_bare.process.running
    assert any("the proxy process exited" in failure for failure in run.failures)
