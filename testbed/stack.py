"""Whole data paths for integration tests: a core etcd, and per tenant its proxy pod (the tenant proxy of this
repository) with the tenant's own CAs and certificates.

Test support only. Both are context managers: whatever was started is stopped on the way out, failure or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from etcdstorage import names
from testbed import certs, etcdrpc
from testbed.certs import CorePKI, TenantPKI, TLSFiles
from testbed.etcd import EtcdServer, start_etcd
from testbed.proxy import TenantProxy, start_tenant_proxy

# The core etcd versions users run: every real-etcd suite runs on each.
ETCD_VERSIONS: Final = ("3.5", "3.6")


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
    proxy: TenantProxy
    workdir: Path

    @property
    def identity(self) -> TLSFiles:
        """What the tenant's API server holds: its client certificate and the serving CA bundle."""
        return self.pki.apiserver

    @property
    def address(self) -> str:
        return self.proxy.address

    def client(self, identity: TLSFiles | None = None) -> etcdrpc.Client:
        """A client of this tenant's proxy, as its API server (or as `identity`)."""
        return etcdrpc.Client(self.proxy.address, identity or self.identity)


@contextlib.contextmanager
def core_etcd(workdir: Path, *, version: str = ETCD_VERSIONS[-1]) -> Iterator[Core]:
    pki = certs.issue_core(workdir / "pki")
    server = start_etcd(workdir / "etcd", pki, version=version)
    try:
        yield Core(etcd=server, pki=pki)
    finally:
        server.process.stop()


@contextlib.contextmanager
def tenant(
    workdir: Path, core: Core, name: str, *, root: str = names.DEFAULT_PREFIX_ROOT, args: Sequence[str] = ()
) -> Iterator[Tenant]:
    """A tenant's proxy pod: the tenant proxy with the tenant's certificates, the core's empty-CN client one."""
    pki = certs.issue_tenant(workdir / "pki", name)
    prefix = names.key_prefix(name, root)
    proxy = start_tenant_proxy(
        workdir / "proxy",
        core.etcd,
        prefix=prefix,
        serving=pki.proxy,
        upstream=core.pki.proxy_client,
        name=f"{name}-proxy",
        args=args,
    )
    try:
        yield Tenant(name=name, prefix=prefix, pki=pki, proxy=proxy, workdir=workdir)
    finally:
        proxy.stop()
