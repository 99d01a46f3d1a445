"""What the cert-rotation job writes, judged by etcd itself: a real core etcd (TLS, client-certificate auth), a real
`etcd grpc-proxy` serving the job's server certificate and trusting the job's client-CA bundle, and the real etcdctl
holding what the API server's operator mounts: the destination Secret's pair and ConfigMap's `serving-ca.crt`.
The guard (nginx) is judged too, with the same files. Kubernetes is the in-memory fake (tests/job/fake.py).

Real TLS uses the real clock, so the job's clock is set in the past: the timeline below ends now, and every check
against a real process happens at its end, where virtual and real time agree.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest

from hooks import job, kube, names, pki
from hooks.settings import Settings
from tests.job.fake import FakeApi
from tests.job.world import APISERVER_NAMESPACE, TENANT, ApiServer, C, Proxy, World
from tests.support import certs, etcd, processes
from tests.support.certs import TLSFiles
from tests.support.guard import start_guard

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
def grpc_proxy(workdir: Path, core: etcd.EtcdServer, listener: TLSFiles) -> Iterator[etcd.GrpcProxy]:
    proxy = etcd.start_grpc_proxy(
        workdir, core, namespace=names.key_prefix(TENANT), name="grpc-proxy", listen_tls=listener
    )
    try:
        yield proxy
    finally:
        proxy.process.stop()


@contextlib.contextmanager
def guarded(workdir: Path, core: etcd.EtcdServer, mounted: TLSFiles) -> Iterator[int]:
    """The proxy pod's two containers: grpc-proxy on plaintext loopback, the guard serving the job's files."""
    proxy = etcd.start_grpc_proxy(workdir / "proxy", core, namespace=names.key_prefix(TENANT), name="pod-grpc-proxy")
    try:
        started = start_guard(workdir / "guard", mounted, proxy)
        try:
            yield started.port
        finally:
            started.stop()
    finally:
        proxy.process.stop()


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd.EtcdServer]:
    directory = tmp_path_factory.mktemp("core")
    pki_ = certs.issue_core(directory / "pki", at=datetime.now(UTC) - timedelta(hours=1))
    server = etcd.start_etcd(directory / "etcd", pki_)
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

    # Now, in real time: the proxy as rolled after the staging serves the renewed leaves' holder.
    with grpc_proxy(tmp_path / "proxy-1", core, files.proxy("proxy-1", staged_proxy)) as proxy:
        renewed_files = files.apiserver("renewed", staged_apiserver)
        assert works(proxy.port, renewed_files, "renewed"), "the renewed client certificate is refused"
        expired = files.apiserver("expired", dataclasses.replace(first, serving_ca=staged_apiserver.serving_ca))
        refused = etcdctl(proxy.port, expired, "get", "x")
        assert refused.returncode != 0, "an expired client certificate was accepted"
        assert "bad certificate" in refused.stderr

    # The staged CAs have been published for longer than the delay: they sign from now on.
    assert world.run(datetime.now(UTC)) == job.EXIT_OK
    promoted_proxy, promoted_apiserver = world.proxy(), world.apiserver()
    assert promoted_apiserver.client_cert != staged_apiserver.client_cert
    new_issuer = pki.parse_certs(promoted_apiserver.client_cert)[0].issuer
    assert new_issuer != pki.parse_certs(staged_apiserver.client_cert)[0].issuer

    # The proxy rolls (its files changed); every API server holding material from after the staging works.
    with grpc_proxy(tmp_path / "proxy-2", core, files.proxy("proxy-2", promoted_proxy)) as proxy:
        assert works(proxy.port, files.apiserver("promoted", promoted_apiserver), "promoted"), "new material refused"
        assert works(proxy.port, renewed_files, "previous"), "an API server not yet restarted lost its connection"
        # One that loaded its serving bundle before the new CA was published cannot verify the new serving cert:
        # this is why bundles go out first and leaves follow only after the propagation delay.
        too_old = files.apiserver("too-old", renewed_before_staging(world, renewed))
        refused = etcdctl(proxy.port, too_old, "get", "x")
        assert refused.returncode != 0
        assert "certificate signed by unknown authority" in refused.stderr

    # The guard (nginx) in front of a loopback grpc-proxy, as in the pod, accepts the same material.
    with guarded(tmp_path / "pod", core, files.proxy("guard", promoted_proxy)) as port:
        assert works(port, files.apiserver("via-guard", promoted_apiserver), "guarded")
        assert works(port, renewed_files, "guarded-previous")

    # Through grpc-proxy, the keys land under the tenant's prefix in the core etcd.
    listing = etcd.etcdctl(core.address, core.pki.admin, "get", "--prefix", "--keys-only", names.key_prefix(TENANT))
    assert listing.returncode == 0, listing.stderr
    assert sorted(line for line in listing.stdout.split() if line) == [
        f"{names.key_prefix(TENANT)}{key}" for key in ("guarded", "guarded-previous", "previous", "promoted", "renewed")
    ]


def renewed_before_staging(world: World, renewed: ApiServer) -> ApiServer:
    """The renewed client pair with a serving bundle holding only the first serving CA (as before the staging)."""
    signer = world.api.secret_data(C, names.signer_secret(TENANT))
    retired = pki.parse_certs(signer["serving-signer-retired.crt"])
    return dataclasses.replace(renewed, serving_ca=pki.encode_certs(retired))
