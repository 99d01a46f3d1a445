"""What the cert-rotation job writes, judged by real processes: a real core etcd (3.5 and 3.6; TLS, client-certificate
auth), the tenant proxy serving the job's server certificate and trusting the job's client-CA bundle from files
swapped as kubelet swaps a mounted Secret, and real clients holding what the API server's operator mounts: the
destination Secret's pair and ConfigMap's `serving-ca.crt`. Kubernetes is the in-memory fake (tests/job/fake.py).

The first test sets the job's clock in the past (the timeline ends now, where virtual and real time agree); the
second runs a full rotation in real time, with short validities, under a client that never stops.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc
import pytest

from certrotation import job, kube, pki
from etcdstorage import names
from etcdstorage.settings import Settings
from testbed import certs, etcd, etcdrpc, processes, stack
from testbed.certs import TLSFiles
from testbed.proxy import TenantProxy, start_tenant_proxy
from tests.job.fake import FakeApi
from tests.job.world import APISERVER_NAMESPACE, TENANT, ApiServer, C, Proxy, World

pytestmark = pytest.mark.real

MINUTE: Final = timedelta(minutes=1)
# CAs live 20 minutes (renewal after 13m20s), leaves 10 (renewal after 6m40s); a staged CA signs 2 minutes after it is
# published (a tenth of 20 minutes, more than the 1-minute minimum).
SPEC: Final[dict[str, Any]] = {
    "signingCertificateValidity": "20m",
    "servingCertificateValidity": "10m",
    "clientCertificateValidity": "10m",
}
HOST: Final = names.service_hosts(TENANT, C, "cluster.local")[2]  # etcd-<N>.<C>.svc, the endpoint in status


@dataclasses.dataclass
class Files:
    """Material written to disk as a pod mounts it."""

    directory: Path

    def proxy(self, name: str, material: Proxy) -> TLSFiles:
        return self._write(name, material.client_ca, material.server_cert, material.server_key)

    def apiserver(self, name: str, material: ApiServer) -> TLSFiles:
        return self._write(name, material.serving_ca, material.client_cert, material.client_key)

    def _write(self, name: str, ca: bytes, cert: bytes, key: bytes) -> TLSFiles:
        directory = self.directory / name
        directory.mkdir(parents=True)
        files = TLSFiles(directory / "ca.crt", directory / names.TLS_CRT, directory / names.TLS_KEY)
        files.ca.write_bytes(ca)
        files.cert.write_bytes(cert)
        files.key.touch(mode=0o600)
        files.key.write_bytes(key)
        return files


def etcdctl(port: int, tls: TLSFiles, *args: str) -> subprocess.CompletedProcess[str]:
    """The real etcdctl connecting to https://etcd-<N>.<C>.svc:<port>, the name resolved to 127.0.0.1 for it alone."""
    argv = [
        etcd.binary("etcdctl"), f"--endpoints=https://{HOST}:{port}", "--dial-timeout=3s", "--command-timeout=4s",
        f"--cacert={tls.ca}", f"--cert={tls.cert}", f"--key={tls.key}", *args,
    ]  # fmt: skip
    return subprocess.run(
        processes.with_hosts({HOST: "127.0.0.1"}, tls.ca.parent, argv),
        capture_output=True, text=True, timeout=30, check=False, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def works(port: int, tls: TLSFiles, key: str) -> bool:
    put = etcdctl(port, tls, "put", key, "value")
    if put.returncode != 0:
        return False
    got = etcdctl(port, tls, "get", key, "--print-value-only")
    return got.returncode == 0 and got.stdout.strip() == "value"


@contextlib.contextmanager
def tenant_proxy(workdir: Path, core: etcd.EtcdServer, mounted: TLSFiles) -> Iterator[TenantProxy]:
    proxy = start_tenant_proxy(
        workdir, core, prefix=names.key_prefix(TENANT), serving=mounted, upstream=core.pki.proxy_client
    )
    try:
        yield proxy
    finally:
        proxy.stop()


def kubelet_sync(proxy: TenantProxy, material: Proxy) -> None:
    """What kubelet does when the job changed <N>-server-cert and <N>-ca-cert: swap the mounted files."""
    proxy.server.swap({names.TLS_CRT: material.server_cert, names.TLS_KEY: material.server_key})
    proxy.client_ca.swap({names.CLIENT_CA_KEY: material.client_ca})


def reloads(proxy: TenantProxy) -> float:
    """How many certificate sets the proxy has put in use: its expiry gauge moves with each one."""
    return proxy.metric("etcdstorage_proxy_certificate_not_after_timestamp_seconds", certificate="serving")


@pytest.fixture(scope="module", params=stack.ETCD_VERSIONS, ids=lambda version: f"etcd-{version}")
def core(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd.EtcdServer]:
    directory = tmp_path_factory.mktemp("core")
    pki_ = certs.issue_core(directory / "pki", at=datetime.now(UTC) - timedelta(hours=1))
    server = etcd.start_etcd(directory / "etcd", pki_, version=request.param)
    try:
        yield server
    finally:
        server.process.stop()


def world_for(core: etcd.EtcdServer) -> World:
    api = FakeApi()
    core_pki = core.pki
    api.put(
        kube.Kind.CONFIGMAP,
        C,
        names.CORE_CA_CONFIGMAP,
        {"data": {names.CORE_CA_KEY: core_pki.proxy_client.ca.read_text()}},
    )
    api.put(kube.Kind.SECRET, C, names.CORE_CERT_SECRET, {
        "type": "kubernetes.io/tls",
        "data": {
            names.TLS_CRT: _b64(core_pki.proxy_client.cert.read_bytes()),
            names.TLS_KEY: _b64(core_pki.proxy_client.key.read_bytes()),
        },
    })  # fmt: skip
    world = World(api, Settings(ca_propagation_delay=MINUTE), core_pki.ca)
    world.add_tenant(TENANT, APISERVER_NAMESPACE, **SPEC)
    return world


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_etcd_accepts_what_the_job_issued_through_a_leaf_renewal_and_a_full_ca_rotation(
    core: etcd.EtcdServer, tmp_path: Path
) -> None:
    world = world_for(core)
    files = Files(tmp_path / "mounts")
    real_now = datetime.now(UTC).replace(microsecond=0)
    t0 = real_now - timedelta(minutes=16)

    # t0: first issuance. Leaves valid until t0+10m = now-6m: expired by the time real processes see them.
    assert world.run(t0) == job.EXIT_OK
    first = world.apiserver()
    # t0+7m: the leaves are due (6m40s), re-issued by the same CAs.
    assert world.run(t0 + 7 * MINUTE) == job.EXIT_OK
    renewed = world.apiserver()
    assert renewed.client_cert != first.client_cert
    # t0+13m30s: the CAs are due (13m20s): new ones are staged, published in the bundles, not yet signing.
    assert world.run(t0 + timedelta(minutes=13, seconds=30)) == job.EXIT_OK
    staged_proxy, staged_apiserver = world.proxy(), world.apiserver()
    assert staged_apiserver.client_cert == renewed.client_cert
    assert len(pki.parse_certs(staged_proxy.client_ca)) == 2

    # Now, in real time: one tenant proxy, started with the files as they were after the staging, serves the renewed
    # leaves' holder and refuses an expired certificate.
    with tenant_proxy(tmp_path / "proxy", core, files.proxy("staged", staged_proxy)) as proxy:
        pid = proxy.process.popen.pid
        renewed_files = files.apiserver("renewed", staged_apiserver)
        assert works(proxy.port, renewed_files, "renewed"), "the renewed client certificate is refused"
        expired = files.apiserver("expired", dataclasses.replace(first, serving_ca=staged_apiserver.serving_ca))
        refused = etcdctl(proxy.port, expired, "get", "x")
        assert refused.returncode != 0, "an expired client certificate was accepted"
        assert "bad certificate" in refused.stderr or "certificate" in refused.stderr, refused.stderr

        # The staged CAs have been published for longer than the delay: they sign from now on.
        assert world.run(datetime.now(UTC)) == job.EXIT_OK
        promoted_proxy, promoted_apiserver = world.proxy(), world.apiserver()
        assert promoted_apiserver.client_cert != staged_apiserver.client_cert
        new_issuer = pki.parse_certs(promoted_apiserver.client_cert)[0].issuer
        assert new_issuer != pki.parse_certs(staged_apiserver.client_cert)[0].issuer

        # Kubelet swaps the files; the same process serves the new certificate, no restart.
        before = reloads(proxy)
        kubelet_sync(proxy, promoted_proxy)
        processes.wait_for(lambda: reloads(proxy) != before, what="the new serving certificate in use", timeout=10)
        assert proxy.process.popen.pid == pid
        assert proxy.process.running
        assert works(proxy.port, files.apiserver("promoted", promoted_apiserver), "promoted"), "new material refused"
        assert works(proxy.port, renewed_files, "previous"), "an API server not yet restarted lost its connection"
        # One that loaded its serving bundle before the new CA was published cannot verify the new serving cert:
        # this is why bundles go out first and leaves follow only after the propagation delay.
        too_old = files.apiserver("too-old", renewed_before_staging(world, renewed))
        refused = etcdctl(proxy.port, too_old, "get", "x")
        assert refused.returncode != 0
        assert "certificate signed by unknown authority" in refused.stderr

    # Through the proxy, the keys land under the tenant's prefix in the core etcd.
    listing = etcd.etcdctl(core.address, core.pki.admin, "get", "--prefix", "--keys-only", names.key_prefix(TENANT))
    assert listing.returncode == 0, listing.stderr
    assert sorted(line for line in listing.stdout.split() if line) == [
        f"{names.key_prefix(TENANT)}{key}" for key in ("previous", "promoted", "renewed")
    ]


def renewed_before_staging(world: World, renewed: ApiServer) -> ApiServer:
    """The renewed client pair with a serving bundle holding only the first serving CA (as before the staging)."""
    signer = world.api.secret_data(C, names.signer_secret(TENANT))
    retired = pki.parse_certs(signer["serving-signer-retired.crt"])
    return dataclasses.replace(renewed, serving_ca=pki.encode_certs(retired))


# A full rotation in real time: leaves renewed 30 s after issue, CAs due after 30 s and promoted a minute after
# publication (a tenth of their 10 minutes), the job run every few seconds as its CronJob would run every minute.
LIVE_SPEC: Final[dict[str, Any]] = {
    "signingCertificateValidity": "10m",
    "servingCertificateValidity": "10m",
    "clientCertificateValidity": "10m",
    "renewBefore": "9m30s",
}
LIVE_DEADLINE: Final = timedelta(minutes=4)
JOB_EVERY: Final = 3.0  # seconds
WRITE_EVERY: Final = 0.05  # seconds between two writes of the steady client


@dataclasses.dataclass
class Traffic:
    """A client that never stops: writes on one long-lived connection, with a watch on it that must see each
    write, plus a fresh connection with the current material every few seconds, as restarted API servers make."""

    address: str
    identity: TLSFiles
    requests: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    written: list[bytes] = dataclasses.field(default_factory=list)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def run(self) -> None:
        with etcdrpc.Client(self.address, self.identity, server_name=HOST) as client:
            while not self.stop.is_set():
                key = f"/live/{len(self.written)}".encode()
                self.requests += 1
                try:
                    client.put(key, b"v")
                    self.written.append(key)
                except grpc.RpcError as error:
                    self.failures.append(f"put {key!r}: {error.code()} {error.details()}")
                time.sleep(WRITE_EVERY)

    def fresh_connection(self, identity: TLSFiles) -> None:
        self.requests += 1
        try:
            with etcdrpc.Client(self.address, identity, server_name=HOST) as client:
                client.get(b"/live/0")
        except grpc.RpcError as error:
            self.failures.append(f"new connection: {error.code()} {error.details()}")


def watched_for(stream: etcdrpc.WatchStream, seconds: float) -> list[bytes]:
    """The keys of the events that arrive within `seconds`."""
    keys: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            keys += [event.kv.key for event in stream.receive(timeout=left).events]
        except queue.Empty:
            break
    return keys


def test_a_full_rotation_under_traffic_fails_no_request_and_restarts_no_proxy(
    core: etcd.EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(world_for(core).api, Settings(ca_propagation_delay=MINUTE), core.pki.ca)
    world.add_tenant(TENANT, APISERVER_NAMESPACE, **LIVE_SPEC)
    files = Files(tmp_path / "mounts")
    assert world.run(datetime.now(UTC)) == job.EXIT_OK
    first_proxy, first_apiserver = world.proxy(), world.apiserver()
    serving_issuers, client_issuers = set(), set()

    with tenant_proxy(tmp_path / "proxy", core, files.proxy("first", first_proxy)) as proxy:
        pid = proxy.process.popen.pid
        traffic = Traffic(proxy.address, files.apiserver("first-apiserver", first_apiserver))
        writer = threading.Thread(target=traffic.run, daemon=True)
        with etcdrpc.Client(proxy.address, traffic.identity, server_name=HOST) as watcher, watcher.watch() as stream:
            stream.create(b"/live/", b"/live0")
            writer.start()
            seen: list[bytes] = []
            mounted, version = first_proxy, 0
            deadline = time.monotonic() + LIVE_DEADLINE.total_seconds()
            while time.monotonic() < deadline:
                seen += watched_for(stream, JOB_EVERY)
                assert world.run(datetime.now(UTC)) in (job.EXIT_OK,)
                current = world.proxy()
                if current != mounted:
                    kubelet_sync(proxy, current)
                    mounted = current
                apiserver = world.apiserver()
                version += 1
                traffic.fresh_connection(files.apiserver(f"apiserver-{version}", apiserver))
                serving_issuers.add(pki.parse_certs(current.server_cert)[0].issuer)
                client_issuers.add(pki.parse_certs(apiserver.client_cert)[0].issuer)
                # Done once both CAs were replaced and the leaves issued by the new ones have been served a while.
                if len(serving_issuers) > 1 and len(client_issuers) > 1 and version > 10:
                    break
            traffic.stop.set()
            writer.join(timeout=10)
            seen += watched_for(stream, 2.0)
        served = proxy.metric("etcdstorage_proxy_certificate_not_after_timestamp_seconds", certificate="serving")

        with capsys.disabled():
            print(
                f"\nrotation under traffic (etcd {core.version}): {traffic.requests} requests, "
                f"{len(traffic.failures)} failed, {len(traffic.written)} writes, {len(seen)} watched, "
                f"{version} job runs, serving CAs {len(serving_issuers)}, client CAs {len(client_issuers)}"
            )
        assert traffic.failures == []
        assert len(serving_issuers) > 1, "no serving CA rotation within the deadline"
        assert len(client_issuers) > 1, "no client CA rotation within the deadline"
        assert seen == traffic.written  # the watch opened before the rotation saw every write: never cut
        assert proxy.process.popen.pid == pid  # no restart
        assert proxy.process.running
        assert served == pki.parse_certs(mounted.server_cert)[0].not_valid_after_utc.timestamp()
