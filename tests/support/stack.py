"""Whole data paths for integration tests: a core etcd, and per tenant the pod's two containers (grpc-proxy with
`--namespace`, the nginx guard in front of it) with the tenant's own CAs and certificates.

Test support only. Both are context managers: whatever was started is stopped on the way out, failure or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from hooks import names
from tests.support import certs, etcdrpc
from tests.support.certs import CorePKI, TenantPKI, TLSFiles
from tests.support.etcd import EtcdServer, GrpcProxy, start_etcd, start_grpc_proxy
from tests.support.guard import Guard, start_guard


@dataclasses.dataclass(frozen=True)
class Core:
    etcd: EtcdServer
    pki: CorePKI

    def client(self) -> etcdrpc.Client:
        """The core API server's view: every key, no prefix."""
        return etcdrpc.Client(self.etcd.address, self.pki.admin)


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str
    prefix: str
    pki: TenantPKI
    proxy: GrpcProxy
    guard: Guard
    workdir: Path

    @property
    def identity(self) -> TLSFiles:
        """What the tenant's API server holds: its client certificate and the serving CA bundle."""
        return self.pki.apiserver

    def client(self, identity: TLSFiles | None = None) -> etcdrpc.Client:
        """A client of this tenant's guard, as its API server (or as `identity`)."""
        return etcdrpc.Client(self.guard.address, identity or self.identity)


@contextlib.contextmanager
def core_etcd(workdir: Path) -> Iterator[Core]:
    pki = certs.issue_core(workdir / "pki")
    server = start_etcd(workdir / "etcd", pki)
    try:
        yield Core(etcd=server, pki=pki)
    finally:
        server.process.stop()


@contextlib.contextmanager
def tenant(workdir: Path, core: Core, name: str, *, root: str = names.DEFAULT_PREFIX_ROOT) -> Iterator[Tenant]:
    """A tenant's proxy pod: grpc-proxy on plaintext loopback, the guard in front with the tenant's certificates."""
    pki = certs.issue_tenant(workdir / "pki", name)
    prefix = names.key_prefix(name, root)
    with contextlib.ExitStack() as stack:
        proxy = start_grpc_proxy(workdir / "proxy", core.etcd, namespace=prefix, name=f"{name}-grpc-proxy")
        stack.callback(proxy.process.stop)
        guard = start_guard(workdir / "guard", pki.guard, proxy, name=f"{name}-guard")
        stack.callback(guard.stop)
        yield Tenant(name=name, prefix=prefix, pki=pki, proxy=proxy, guard=guard, workdir=workdir)
