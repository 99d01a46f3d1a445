"""What a tenant holding its own client certificate might try, to reach keys or state that are not its own.

Each attack runs against a `Target` (a tenant's proxy, or a bare grpc-proxy serving TLS itself, as the original
project deployed it) and says what happened as an `Outcome` judged from what a victim would notice: foreign bytes
in the answer, a core or tenant key changed or gone, a user or member added to the core etcd. The victims are the
core etcd (keys under /registry) and a second tenant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import http.client
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Final

import grpc

from certrotation import pki
from testbed import certs, etcdrpc
from testbed import etcdwire as wire
from testbed.certs import TLSFiles
from testbed.stack import Core, Tenant

KV, LEASE, CLUSTER, MAINTENANCE, AUTH = (
    f"/etcdserverpb.{service}/" for service in ("KV", "Lease", "Cluster", "Maintenance", "Auth")
)
ELECTION: Final = "/v3electionpb.Election/"
LOCK: Final = "/v3lockpb.Lock/"
# Every RPC the core etcd serves to clients (etcd 3.5: rpc.proto, v3election.proto, v3lock.proto).
ETCD_V3_RPCS: Final = tuple(
    [KV + m for m in ("Range", "Put", "DeleteRange", "Txn", "Compact")]
    + ["/etcdserverpb.Watch/Watch"]
    + [LEASE + m for m in ("LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases")]
    + [CLUSTER + m for m in ("MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote")]
    + [
        MAINTENANCE + m
        for m in ("Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade")
    ]
    + [
        AUTH + m
        for m in (
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        )
    ]
    + [ELECTION + m for m in ("Campaign", "Proclaim", "Leader", "Observe", "Resign")]
    + [LOCK + m for m in ("Lock", "Unlock")]
)

CORE_SECRET_KEY: Final = b"/registry/secrets/kube-system/x"
CORE_SECRET_PARENT: Final = CORE_SECRET_KEY.rsplit(b"/", 1)[0]  # an election "name" whose oldest key is the secret
TENANT_SECRET_KEY: Final = b"/secret"
WITNESS_KEY: Final = b"/watch-witness"
ALL_KEYS: Final = (b"\0", b"\0")  # etcd's "every key from the first one": what `etcdctl get --from-key ''` sends
PROXY_MESSAGE: Final = "etcdstorage tenant proxy: "  # how every refusal of the tenant proxy starts
DENIED_MESSAGE: Final = "is not allowed for tenants"  # ... and how it says an RPC is off the allowlist
PERMISSION_DENIED: Final = 7  # the gRPC status code, as a grpc-status header carries it
QUIET: Final = 1.0  # seconds a watch must stay silent about foreign writes after its own event arrived


class Kind(enum.Enum):
    KEYS = "keys"  # allowlisted RPCs: the grpc-proxy's --namespace must confine them to the prefix
    RPC = "rpc"  # RPCs off the allowlist: the tenant proxy must refuse them
    IDENTITY = "identity"  # clients other than the tenant's API server: the tenant proxy must refuse the connection


class Verdict(enum.Enum):
    REFUSED = "refused"  # stopped before etcd: the tenant proxy's gRPC error, a failed handshake, an unknown method
    ISOLATED = "isolated"  # answered, but only from and into the tenant's own prefix
    REACHED = "reached etcd"  # a non-tenant RPC was answered or executed by the core etcd
    LEAKED = "LEAKED"  # foreign data came back, or foreign data or cluster state changed


@dataclasses.dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    detail: str
    code: grpc.StatusCode | None = None  # the gRPC status the attacker got; None when the call succeeded

    def __str__(self) -> str:
        return f"{self.verdict.value}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    address: str
    attacker: Tenant

    def client(self, identity: TLSFiles | None = None, *, client_identity: bool = True) -> etcdrpc.Client:
        return etcdrpc.Client(self.address, identity or self.attacker.identity, client_identity=client_identity)


@dataclasses.dataclass(frozen=True)
class Victims:
    core: Core
    tenant: Tenant
    core_secret: bytes  # value of CORE_SECRET_KEY in the core etcd
    tenant_secret: bytes  # value of TENANT_SECRET_KEY in the victim tenant's view
    seeded_revision: int  # the core's revision once both secrets were written

    @contextlib.contextmanager
    def clients(self) -> Iterator[tuple[etcdrpc.Client, etcdrpc.Client]]:
        with self.core.client() as core, self.tenant.client() as tenant:
            yield core, tenant

    def foreign(self, data: bytes) -> bool:
        return self.core_secret in data or self.tenant_secret in data

    def damage(self) -> list[str]:
        """What a victim would find changed: the secrets are re-checked through the victims' own clients."""
        with self.clients() as (core, tenant):
            found = []
            if core.get(CORE_SECRET_KEY) != self.core_secret:
                found.append("core secret overwritten or deleted")
            if tenant.get(TENANT_SECRET_KEY) != self.tenant_secret:
                found.append("other tenant's secret overwritten or deleted")
            return found

    def touch(self) -> None:
        """Write both secrets again (same values, new revisions): events a watch must not see."""
        with self.clients() as (core, tenant):
            core.put(CORE_SECRET_KEY, self.core_secret)
            tenant.put(TENANT_SECRET_KEY, self.tenant_secret)


@dataclasses.dataclass(frozen=True)
class Attack:
    id: str  # reads as a sentence: what the tenant cannot do
    kind: Kind
    run: Callable[[Target, Victims], Outcome]
    paths: tuple[str, ...] = ()  # the RPCs off the allowlist that it calls


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status of a failed call (grpcio's errors are also `grpc.Call`s)."""
    assert isinstance(error, grpc.Call), error
    return error.code(), error.details() or ""


def error_outcome(error: grpc.RpcError, *, allowed: bool) -> Outcome:
    """Classify a failed call: refused before etcd, or answered with an error by etcd (isolated or reached)."""
    code, details = status_of(error)
    gatekeeper = code in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED}
    if details.startswith(PROXY_MESSAGE) or gatekeeper:
        return Outcome(Verdict.REFUSED, f"{code.name}: {details[:70]}", code)
    if details == "not implemented":  # grpc-proxy's own answer for what it does not forward (MemberPromote)
        return Outcome(Verdict.REFUSED, "not implemented by grpc-proxy", code)
    return Outcome(Verdict.ISOLATED if allowed else Verdict.REACHED, f"{code.name} from etcd: {details[:60]}", code)


# --- Keys: allowlisted RPCs aimed outside the prefix ------------------------------------------------------------
def _reads(*requests: tuple[bytes, bytes], at_seeding: bool = False) -> Callable[[Target, Victims], Outcome]:
    """Range requests; `at_seeding` reads at the revision when every secret was written, not the newest."""

    def run(target: Target, victims: Victims) -> Outcome:
        keys = 0
        revision = victims.seeded_revision if at_seeding else 0
        with target.client() as client:
            for key, range_end in requests:
                try:
                    response = client.unary(KV + "Range", wire.range_request(key, range_end, revision=revision))
                except grpc.RpcError as error:
                    return error_outcome(error, allowed=True)
                if victims.foreign(response):
                    return Outcome(Verdict.LEAKED, f"read a foreign secret with key {key!r}")
                keys += len(wire.RangeResponse.parse(response).kvs)
        return Outcome(Verdict.ISOLATED, f"{keys} key(s), all its own")

    return run


def _count(target: Target, victims: Victims) -> Outcome:
    with target.client() as client:
        counted = client.range(*ALL_KEYS, count_only=True).count
    with victims.core.client() as core:
        prefix = target.attacker.prefix.encode()
        own = core.range(prefix, prefix[:-1] + b"0", count_only=True).count  # "/x/" ends before "/x0"
    if counted != own:
        return Outcome(Verdict.LEAKED, f"counted {counted} keys, it owns {own}")
    return Outcome(Verdict.ISOLATED, f"counted {counted} key(s), all its own")


def _writes(*operations: Callable[[etcdrpc.Client], object]) -> Callable[[Target, Victims], Outcome]:
    def run(target: Target, victims: Victims) -> Outcome:
        with target.client() as client:
            for operation in operations:
                try:
                    operation(client)
                except grpc.RpcError as error:
                    return error_outcome(error, allowed=True)
        damage = victims.damage()
        return (
            Outcome(Verdict.LEAKED, "; ".join(damage))
            if damage
            else Outcome(Verdict.ISOLATED, "wrote only its own keys")
        )

    return run


def _txn(request: bytes, *, must_fail_compare: bool = False) -> Callable[[Target, Victims], Outcome]:
    def run(target: Target, victims: Victims) -> Outcome:
        with target.client() as client:
            if must_fail_compare:  # an earlier attack may have made the tenant's own key of that name: remove it,
                client.delete_range(*ALL_KEYS)  # so that only a foreign key can make the compare succeed
            try:
                answer = client.unary(KV + "Txn", request)
            except grpc.RpcError as error:
                return error_outcome(error, allowed=True)
        if victims.foreign(answer):
            return Outcome(Verdict.LEAKED, "read a foreign secret inside the transaction")
        if must_fail_compare and wire.TxnResponse.parse(answer).succeeded:
            return Outcome(Verdict.LEAKED, "the compare confirmed a foreign key")
        damage = victims.damage()
        return (
            Outcome(Verdict.LEAKED, "; ".join(damage))
            if damage
            else Outcome(Verdict.ISOLATED, "transaction stayed in its prefix")
        )

    return run


def _watch(key: bytes, range_end: bytes = b"", *, start_revision: int = 0) -> Callable[[Target, Victims], Outcome]:
    def run(target: Target, victims: Victims) -> Outcome:
        with target.client() as client, client.watch(timeout=60) as stream:
            try:
                stream.create(key, range_end, start_revision=start_revision)
            except grpc.RpcError as error:
                return error_outcome(error, allowed=True)
            stream.create(WITNESS_KEY)  # its own key: proves the stream delivers while foreign keys stay silent
            victims.touch()
            client.put(WITNESS_KEY, b"witness")
            events, witnessed, deadline = [], False, time.monotonic() + 10
            while time.monotonic() < deadline:
                batch = list(stream.events(timeout=QUIET))
                events += batch
                witnessed = witnessed or any(e.kv.key == WITNESS_KEY for e in batch)
                if witnessed and not batch:
                    break
        assert witnessed, f"the watch through {target.name} never delivered the tenant's own event"
        foreign = [e.kv.key for e in events if victims.foreign(e.kv.value)]
        if foreign:
            return Outcome(Verdict.LEAKED, f"watched foreign keys {foreign[:2]}")
        return Outcome(Verdict.ISOLATED, f"{len(events)} event(s), all its own")

    return run


# --- RPCs off the allowlist -------------------------------------------------------------------------------------
Effect = Callable[[Target, Victims, bytes], Outcome | None]


def _rpc(
    path: str, request: bytes = b"", *, stream: str = "", effect: Effect | None = None
) -> Callable[[Target, Victims], Outcome]:
    """Call `path`; `stream` is "server" (read it all), "first" (its first message) or "bidi" (send one, read one).
    `effect` judges the answer and what it did; without a verdict from it, any answer means REACHED."""

    def run(target: Target, victims: Victims) -> Outcome:
        with target.client() as client:
            try:
                if stream == "server":
                    answer = b"".join(client.server_stream(path, request, timeout=30))
                elif stream == "first":
                    answer = client.server_stream_first(path, request)
                elif stream == "bidi":
                    answer = client.bidi_first(path, request)
                else:
                    answer = client.unary(path, request)
            except grpc.RpcError as error:
                return error_outcome(error, allowed=False)
        judged = effect(target, victims, answer) if effect else None
        if judged is None and victims.foreign(answer):
            judged = Outcome(Verdict.LEAKED, "foreign secrets in the answer")
        return judged or Outcome(Verdict.REACHED, f"OK, {len(answer)} bytes from the core etcd")

    return run


def _denied(
    sentence: str, path: str, request: bytes = b"", *, stream: str = "", effect: Effect | None = None
) -> Attack:
    return Attack(sentence, Kind.RPC, _rpc(path, request, stream=stream, effect=effect), (path,))


def _snapshot_effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
    if victims.core_secret in answer:
        return Outcome(Verdict.LEAKED, f"{len(answer) // 1024} KiB snapshot of the core etcd, secrets included")
    return None


def _member_list_effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
    urls = [url for member in wire.members(answer) for url in member.client_urls]
    return Outcome(Verdict.LEAKED, f"core etcd members: {', '.join(urls)}") if urls else None


@contextlib.contextmanager
def _victim_lease(victims: Victims) -> Iterator[int]:
    """A lease of the victim tenant with a key on it; gone afterwards whatever happened."""
    with victims.tenant.client() as tenant:
        lease = tenant.lease_grant(3600).lease_id
        tenant.put(b"/leased", b"held by the victim's lease", lease=lease)
        try:
            yield lease
        finally:
            with contextlib.suppress(grpc.RpcError), victims.core.client() as core:
                core.unary(LEASE + "LeaseRevoke", wire.lease_id_request(lease))


def _lease_rpc(method: str, *, stream: str = "") -> Callable[[Target, Victims], Outcome]:
    """Call a Lease RPC on a lease of the victim tenant and see whether the victim's key survived."""

    def run(target: Target, victims: Victims) -> Outcome:
        with _victim_lease(victims) as lease:
            request = (
                wire.lease_time_to_live_request(lease) if method == "LeaseTimeToLive" else wire.lease_id_request(lease)
            )

            def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
                with victims.tenant.client() as tenant:
                    if tenant.get(b"/leased") is None:
                        return Outcome(Verdict.LEAKED, "revoked the other tenant's lease: its key is gone")
                if method == "LeaseLeases" and lease in wire.lease_leases_ids(answer):
                    return Outcome(Verdict.LEAKED, "listed every lease of the core etcd, the other tenant's included")
                if method == "LeaseKeepAlive":
                    return Outcome(Verdict.REACHED, "renewed the other tenant's lease")
                if method == "LeaseTimeToLive":
                    return Outcome(
                        Verdict.REACHED,
                        f"read the other tenant's lease: TTL {wire.LeaseTimeToLiveResponse.parse(answer).ttl} s",
                    )
                return None

            request = b"" if method == "LeaseLeases" else request
            return _rpc(LEASE + method, request, stream=stream, effect=effect)(target, victims)

    return run


def _member_add(target: Target, victims: Victims) -> Outcome:
    """Add a learner (never started, so quorum is safe) and remove it again through the core."""
    learner_url = "http://127.0.0.1:9"  # discard port: nothing will ever answer there

    def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
        with victims.core.client() as core:
            added = [m for m in wire.members(core.unary(CLUSTER + "MemberList")) if learner_url in m.peer_urls]
            for member in added:
                core.unary(CLUSTER + "MemberRemove", wire.member_id_request(member.member_id))
        return Outcome(Verdict.LEAKED, "added a member to the core etcd cluster") if added else None

    return _rpc(CLUSTER + "MemberAdd", wire.member_add_request([learner_url], learner=True), effect=effect)(
        target, victims
    )


def _auth_create(method: str, name: str, listing: str) -> Callable[[Target, Victims], Outcome]:
    """UserAdd / RoleAdd: did the name appear in the core etcd's user or role list? (removed again if so)"""

    def run(target: Target, victims: Victims) -> Outcome:
        def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
            with victims.core.client() as core:
                if name not in wire.strings(core.unary(AUTH + listing)):
                    return None
                core.unary(AUTH + method.replace("Add", "Delete"), wire.name_request(name))
            return Outcome(Verdict.LEAKED, f"created {method.removesuffix('Add').lower()} {name!r} in the core etcd")

        return _rpc(AUTH + method, wire.name_request(name, "hunter2"), effect=effect)(target, victims)

    return run


def _plant(path: str) -> Callable[[Target, Victims], Outcome]:
    """Campaign and Lock create `<name>/<lease>`: here a ClusterRoleBinding-shaped key in the core's keyspace."""
    name = b"/registry/clusterrolebindings/mallory"

    def run(target: Target, victims: Victims) -> Outcome:
        with target.client() as client:
            lease = client.lease_grant(60).lease_id  # allowlisted; lease IDs are global, so the core honours it

        def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
            with victims.core.client() as core:
                planted = core.range(name + b"/", name + b"0").keys
                core.unary(LEASE + "LeaseRevoke", wire.lease_id_request(lease))  # takes the planted key with it
            return Outcome(Verdict.LEAKED, f"planted {planted[0].decode()} in the core keyspace") if planted else None

        request = (
            wire.bytes_field(1, name) + wire.varint_field(2, lease) + wire.bytes_field(3, b"cluster-admin for mallory")
        )
        return _rpc(path, request, effect=effect)(target, victims)

    return run


def _election_write(method: str) -> Callable[[Target, Victims], Outcome]:
    """Proclaim overwrites and Resign deletes any key whose create revision it names (which Leader tells)."""
    victim = b"/registry/configmaps/kube-system/" + method.lower().encode()

    def run(target: Target, victims: Victims) -> Outcome:
        with victims.core.client() as core:
            created = core.put(victim, b"untouched").revision
        leader = wire.leader_key(CORE_SECRET_PARENT, victim, created)
        request = wire.proclaim_request(leader, b"pwned") if method == "Proclaim" else wire.resign_request(leader)

        def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
            with victims.core.client() as core:
                now = core.get(victim)
            return (
                Outcome(Verdict.LEAKED, f"{'overwrote' if now else 'deleted'} core key {victim.decode()}")
                if now != b"untouched"
                else None
            )

        return _rpc(ELECTION + method, request, effect=effect)(target, victims)

    return run


def _lock_unlock(target: Target, victims: Victims) -> Outcome:
    """v3lock's Unlock deletes the key it is given, without the proxy's namespace."""
    victim = b"/registry/pods/default/victim"
    with victims.core.client() as core:
        core.put(victim, b"a pod")

    def effect(target: Target, victims: Victims, answer: bytes) -> Outcome | None:
        with victims.core.client() as core:
            gone = core.get(victim) is None
            core.delete_range(victim)
        return Outcome(Verdict.LEAKED, f"deleted core key {victim.decode()}") if gone else None

    return _rpc(LOCK + "Unlock", wire.bytes_field(1, victim), effect=effect)(target, victims)


def _https_metrics(target: Target, victims: Victims) -> Outcome:
    """GET /metrics over HTTPS/1.1 on the tenant's endpoint: the grpc-proxy serves the core etcd's metrics there."""
    identity = target.attacker.identity
    context = ssl.create_default_context(cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    host, port = target.address.rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
        grpc_status = response.getheader("grpc-status")
    except (http.client.HTTPException, OSError) as error:  # a gRPC-only server closes an HTTP/1.1 connection
        return Outcome(Verdict.REFUSED, f"no HTTP answer: {type(error).__name__}")
    finally:
        connection.close()
    if grpc_status == str(PERMISSION_DENIED):
        return Outcome(
            Verdict.REFUSED, f"HTTP {response.status}, grpc-status {grpc_status}", grpc.StatusCode.PERMISSION_DENIED
        )
    if b"etcd_server_has_leader" in body:
        return Outcome(Verdict.LEAKED, f"HTTP {response.status}: {len(body) // 1024} KiB of the core etcd's metrics")
    return Outcome(Verdict.REFUSED, f"HTTP {response.status}")


# --- Identities other than the tenant's API server --------------------------------------------------------------
def _identity(make: Callable[[Target, Victims, Path], TLSFiles | None]) -> Callable[[Target, Victims], Outcome]:
    def run(target: Target, victims: Victims) -> Outcome:
        directory = target.attacker.workdir / "identities" / target.name.replace(" ", "-")
        identity = make(target, victims, directory)
        with target.client(identity, client_identity=identity is not None) as client:
            try:
                answer = client.unary(KV + "Range", wire.range_request(b"\0", b"\0"), timeout=5)
            except grpc.RpcError as error:
                return error_outcome(error, allowed=False)
        return Outcome(Verdict.LEAKED, f"connected and read {len(wire.RangeResponse.parse(answer).kvs)} keys")

    return run


def _no_certificate(target: Target, victims: Victims, directory: Path) -> TLSFiles | None:
    return None


def _expired_certificate(target: Target, victims: Victims, directory: Path) -> TLSFiles | None:
    issued = certs.now() - timedelta(days=10)
    pair = pki.new_client_cert(
        target.attacker.pki.client_ca,
        "expired-apiserver",
        now=issued,
        validity=timedelta(days=1),
        algorithm=certs.ALGORITHM,
    )
    return certs.client_files(directory / "expired", target.attacker.identity.ca, pair)


def _other_tenant_certificate(target: Target, victims: Victims, directory: Path) -> TLSFiles:
    other = victims.tenant.identity
    return TLSFiles(ca=target.attacker.identity.ca, cert=other.cert, key=other.key)


def _core_client_certificate(target: Target, victims: Victims, directory: Path) -> TLSFiles:
    core = victims.core.pki.admin
    return TLSFiles(ca=target.attacker.identity.ca, cert=core.cert, key=core.key)


def _serving_ca_certificate(target: Target, victims: Victims, directory: Path) -> TLSFiles:
    """Signed by the tenant's serving CA, which the API server trusts but the proxy must not accept clients from."""
    pair = pki.new_client_cert(
        target.attacker.pki.serving_ca,
        "forged-apiserver",
        now=certs.now(),
        validity=timedelta(days=1),
        algorithm=certs.ALGORITHM,
    )
    return certs.client_files(directory / "serving-ca-signed", target.attacker.identity.ca, pair)


# --- The catalogue ----------------------------------------------------------------------------------------------

ATTACKS: Final[tuple[Attack, ...]] = (
    # Reads
    Attack("tenant cannot read a core key by its full name", Kind.KEYS, _reads((CORE_SECRET_KEY, b""))),
    Attack(
        "tenant cannot read another tenant's key by its full prefixed name",
        Kind.KEYS,
        _reads((b"/etcdstorage/beta/secret", b"")),
    ),
    Attack(
        "tenant cannot climb out of its prefix with '..' in keys",
        Kind.KEYS,
        _reads(
            (b"../beta/secret", b""),
            (b"/../../registry/secrets/kube-system/x", b""),
            (b"../", b"\0"),
            (b"..", b"../..0"),
        ),
    ),
    Attack("tenant cannot read every key with the \\0 key and a \\0 range end", Kind.KEYS, _reads(ALL_KEYS)),
    Attack("tenant cannot read every key with an empty key and a \\0 range end", Kind.KEYS, _reads((b"", b"\0"))),
    Attack(
        "tenant cannot read past its prefix end with a range end of \\xff bytes",
        Kind.KEYS,
        _reads((b"\0", b"\xff" * 16)),
    ),
    Attack(
        "tenant cannot read the core's keys with a range ending after /registry",
        Kind.KEYS,
        _reads((b"/", b"/registry0")),
    ),
    Attack(
        "tenant cannot read keys that start with a \\0 byte",
        Kind.KEYS,
        _reads((b"\0" + CORE_SECRET_KEY, b""), (b"\0\0", b"\0")),
    ),
    Attack("tenant cannot read foreign keys at an old revision", Kind.KEYS, _reads(ALL_KEYS, at_seeding=True)),
    Attack("tenant cannot count foreign keys", Kind.KEYS, _count),
    # Writes and deletes
    Attack(
        "tenant cannot overwrite a core key or another tenant's key",
        Kind.KEYS,
        _writes(
            lambda c: c.put(CORE_SECRET_KEY, b"pwned"),
            lambda c: c.put(b"/etcdstorage/beta/secret", b"pwned"),
            lambda c: c.put(b"../beta/secret", b"pwned"),
            lambda c: c.put(b"\0/registry/secrets/kube-system/x", b"pwned"),
        ),
    ),
    Attack(
        "tenant cannot delete every key with a \\0 range from the \\0 key",
        Kind.KEYS,
        _writes(lambda c: c.delete_range(*ALL_KEYS)),
    ),
    Attack(
        "tenant cannot delete another tenant's or the core's keys by their full names",
        Kind.KEYS,
        _writes(
            lambda c: c.delete_range(b"/etcdstorage/beta/", b"/etcdstorage/beta0"),
            lambda c: c.delete_range(b"/registry/", b"/registry0"),
            lambda c: c.delete_range(b"../", b"\xff"),
        ),
    ),
    # Transactions
    Attack(
        "tenant cannot read foreign keys inside a transaction",
        Kind.KEYS,
        _txn(
            wire.txn_request(
                success=[
                    wire.op_range(wire.range_request(CORE_SECRET_KEY)),
                    wire.op_range(wire.range_request(*ALL_KEYS)),
                ]
            )
        ),
    ),
    Attack(
        "tenant cannot write or delete foreign keys inside a transaction",
        Kind.KEYS,
        _txn(
            wire.txn_request(
                success=[
                    wire.op_put(wire.put_request(CORE_SECRET_KEY, b"pwned")),
                    wire.op_delete(wire.delete_range_request(b"/etcdstorage/beta/", b"/etcdstorage/beta0")),
                ]
            )
        ),
    ),
    Attack(
        "tenant cannot reach foreign keys through a nested transaction",
        Kind.KEYS,
        _txn(
            wire.txn_request(
                success=[
                    wire.op_txn(
                        wire.txn_request(
                            success=[
                                wire.op_range(wire.range_request(*ALL_KEYS)),
                                wire.op_txn(
                                    wire.txn_request(success=[wire.op_range(wire.range_request(CORE_SECRET_KEY))])
                                ),
                                wire.op_delete(wire.delete_range_request(b"/registry/", b"/registry0")),
                            ]
                        )
                    )
                ]
            )
        ),
    ),
    Attack(
        "tenant cannot probe a core key with a transaction compare",
        Kind.KEYS,
        _txn(
            wire.txn_request(
                compares=[wire.compare(CORE_SECRET_KEY, wire.CompareResult.GREATER, wire.CompareTarget.VERSION, 0)]
            ),
            must_fail_compare=True,
        ),
    ),
    Attack(
        "tenant cannot compare over the whole keyspace to find foreign keys",
        Kind.KEYS,
        _txn(
            wire.txn_request(
                compares=[
                    wire.compare(
                        b"/registry/",
                        wire.CompareResult.GREATER,
                        wire.CompareTarget.VERSION,
                        0,
                        range_end=b"/registry0",
                    )
                ]
            ),
            must_fail_compare=True,
        ),
    ),
    # Watches
    Attack("tenant cannot watch a core key by its full name", Kind.KEYS, _watch(CORE_SECRET_KEY)),
    Attack(
        "tenant cannot watch another tenant's prefix by its full name",
        Kind.KEYS,
        _watch(b"/etcdstorage/beta/", b"/etcdstorage/beta0"),
    ),
    Attack("tenant cannot watch every key with the \\0 key and a \\0 range end", Kind.KEYS, _watch(*ALL_KEYS)),
    Attack(
        "tenant cannot replay foreign history with a watch from an old revision",
        Kind.KEYS,
        _watch(*ALL_KEYS, start_revision=1),
    ),
    # Off the allowlist: the core etcd itself
    _denied(
        "tenant cannot download a snapshot of the core etcd",
        MAINTENANCE + "Snapshot",
        stream="server",
        effect=_snapshot_effect,
    ),
    _denied("tenant cannot defragment the core etcd", MAINTENANCE + "Defragment"),
    _denied("tenant cannot hash the core etcd's backend", MAINTENANCE + "Hash"),
    _denied("tenant cannot hash the core etcd's keys", MAINTENANCE + "HashKV", wire.hash_kv_request()),
    _denied("tenant cannot move the core etcd's leader", MAINTENANCE + "MoveLeader", wire.move_leader_request(1)),
    _denied(
        "tenant cannot list or raise the core etcd's alarms",
        MAINTENANCE + "Alarm",
        wire.alarm_request(wire.AlarmAction.GET),
    ),
    _denied(
        "tenant cannot start a downgrade of the core etcd", MAINTENANCE + "Downgrade", wire.downgrade_request(0, "x")
    ),
    _denied("tenant cannot compact the core etcd's history", KV + "Compact", wire.compaction_request(1)),
    _denied("tenant cannot list the core etcd's members", CLUSTER + "MemberList", effect=_member_list_effect),
    Attack("tenant cannot add a member to the core etcd", Kind.RPC, _member_add, (CLUSTER + "MemberAdd",)),
    _denied("tenant cannot remove a member of the core etcd", CLUSTER + "MemberRemove", wire.member_id_request(1)),
    _denied(
        "tenant cannot update a member of the core etcd",
        CLUSTER + "MemberUpdate",
        wire.member_update_request(1, ["http://127.0.0.1:9"]),
    ),
    _denied("tenant cannot promote a member of the core etcd", CLUSTER + "MemberPromote", wire.member_id_request(1)),
    # Leases are global: another tenant's are within reach
    Attack(
        "tenant cannot revoke another tenant's lease", Kind.RPC, _lease_rpc("LeaseRevoke"), (LEASE + "LeaseRevoke",)
    ),
    Attack(
        "tenant cannot keep another tenant's lease alive",
        Kind.RPC,
        _lease_rpc("LeaseKeepAlive", stream="bidi"),
        (LEASE + "LeaseKeepAlive",),
    ),
    Attack(
        "tenant cannot read another tenant's lease",
        Kind.RPC,
        _lease_rpc("LeaseTimeToLive"),
        (LEASE + "LeaseTimeToLive",),
    ),
    Attack(
        "tenant cannot list every lease of the core etcd", Kind.RPC, _lease_rpc("LeaseLeases"), (LEASE + "LeaseLeases",)
    ),
    # Auth
    _denied("tenant cannot read the core etcd's auth status", AUTH + "AuthStatus"),
    _denied("tenant cannot enable auth on the core etcd", AUTH + "AuthEnable"),
    _denied("tenant cannot disable auth on the core etcd", AUTH + "AuthDisable"),
    _denied("tenant cannot authenticate to the core etcd", AUTH + "Authenticate", wire.name_request("root", "x")),
    Attack(
        "tenant cannot add a user to the core etcd",
        Kind.RPC,
        _auth_create("UserAdd", "mallory", "UserList"),
        (AUTH + "UserAdd",),
    ),
    _denied("tenant cannot read a user of the core etcd", AUTH + "UserGet", wire.name_request("root")),
    _denied("tenant cannot list the core etcd's users", AUTH + "UserList"),
    _denied("tenant cannot delete a user of the core etcd", AUTH + "UserDelete", wire.name_request("root")),
    _denied(
        "tenant cannot change a password in the core etcd",
        AUTH + "UserChangePassword",
        wire.name_request("root", "hunter2"),
    ),
    _denied("tenant cannot grant a role in the core etcd", AUTH + "UserGrantRole", wire.name_request("root", "root")),
    _denied("tenant cannot revoke a role in the core etcd", AUTH + "UserRevokeRole", wire.name_request("root", "root")),
    Attack(
        "tenant cannot add a role to the core etcd",
        Kind.RPC,
        _auth_create("RoleAdd", "mallory", "RoleList"),
        (AUTH + "RoleAdd",),
    ),
    _denied("tenant cannot read a role of the core etcd", AUTH + "RoleGet", wire.name_request("root")),
    _denied("tenant cannot list the core etcd's roles", AUTH + "RoleList"),
    _denied("tenant cannot delete a role of the core etcd", AUTH + "RoleDelete", wire.name_request("root")),
    _denied(
        "tenant cannot grant a permission in the core etcd",
        AUTH + "RoleGrantPermission",
        wire.role_grant_permission_request("root", b"\0", b"\0"),
    ),
    _denied(
        "tenant cannot revoke a permission in the core etcd",
        AUTH + "RoleRevokePermission",
        wire.role_revoke_permission_request("root", b"\0", b"\0"),
    ),
    # Election and lock services: the grpc-proxy forwards them to the core over its connection, without its namespace
    _denied(
        "tenant cannot read a core key through the election service",
        ELECTION + "Leader",
        wire.bytes_field(1, CORE_SECRET_PARENT),
    ),
    _denied(
        "tenant cannot observe core keys through the election service",
        ELECTION + "Observe",
        wire.bytes_field(1, CORE_SECRET_PARENT),
        stream="first",
    ),
    Attack(
        "tenant cannot plant a key in the core keyspace through the election service",
        Kind.RPC,
        _plant(ELECTION + "Campaign"),
        (ELECTION + "Campaign",),
    ),
    Attack(
        "tenant cannot overwrite a core key through the election service",
        Kind.RPC,
        _election_write("Proclaim"),
        (ELECTION + "Proclaim",),
    ),
    Attack(
        "tenant cannot delete a core key through the election service",
        Kind.RPC,
        _election_write("Resign"),
        (ELECTION + "Resign",),
    ),
    Attack(
        "tenant cannot plant a key in the core keyspace through the lock service",
        Kind.RPC,
        _plant(LOCK + "Lock"),
        (LOCK + "Lock",),
    ),
    Attack("tenant cannot delete a core key through the lock service", Kind.RPC, _lock_unlock, (LOCK + "Unlock",)),
    # Not gRPC at all
    Attack("tenant cannot read the core etcd's metrics over HTTPS", Kind.RPC, _https_metrics),
    # Other identities
    Attack("a client without a certificate is refused", Kind.IDENTITY, _identity(_no_certificate)),
    Attack(
        "a client with an expired certificate from the tenant's client CA is refused",
        Kind.IDENTITY,
        _identity(_expired_certificate),
    ),
    Attack(
        "a client with another tenant's certificate is refused", Kind.IDENTITY, _identity(_other_tenant_certificate)
    ),
    Attack(
        "a client with the core etcd's client certificate is refused",
        Kind.IDENTITY,
        _identity(_core_client_certificate),
    ),
    Attack(
        "a client certificate signed by the tenant's serving CA is refused",
        Kind.IDENTITY,
        _identity(_serving_ca_certificate),
    ),
)
