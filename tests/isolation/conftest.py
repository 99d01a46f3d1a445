"""Session fixtures for the isolation suite: one core etcd of each version users run (the whole suite runs once per
version), two tenants (alpha attacks, beta is a victim) each behind its own tenant proxy, and alpha's prefix also
served by a bare TLS grpc-proxy as the original project deployed it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from testbed import stack
from testbed.etcd import GrpcProxy, start_grpc_proxy
from tests.isolation.attacks import CORE_SECRET_KEY, TENANT_SECRET_KEY, Target, Victims


@pytest.fixture(scope="session", params=stack.ETCD_VERSIONS, ids=lambda version: f"etcd-{version}")
def core(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Core]:
    with stack.core_etcd(tmp_path_factory.mktemp("core"), version=request.param) as started:
        yield started


@pytest.fixture(scope="session")
def alpha(tmp_path_factory: pytest.TempPathFactory, core: stack.Core) -> Iterator[stack.Tenant]:
    with stack.tenant(tmp_path_factory.mktemp("alpha"), core, "alpha") as started:
        yield started


@pytest.fixture(scope="session")
def beta(tmp_path_factory: pytest.TempPathFactory, core: stack.Core) -> Iterator[stack.Tenant]:
    with stack.tenant(tmp_path_factory.mktemp("beta"), core, "beta") as started:
        yield started


@pytest.fixture(scope="session")
def victims(core: stack.Core, alpha: stack.Tenant, beta: stack.Tenant) -> Victims:
    """Secrets with random values in the core (as the core API server stores them) and in beta's view."""
    core_secret = b"core-secret-" + secrets.token_hex(8).encode()
    tenant_secret = b"beta-secret-" + secrets.token_hex(8).encode()
    with core.client() as admin, beta.client() as tenant, alpha.client() as attacker:
        admin.put(CORE_SECRET_KEY, core_secret)
        admin.put(b"/registry/pods/default/web", b"a pod of the core cluster")
        tenant.put(TENANT_SECRET_KEY, tenant_secret)
        attacker.put(b"/own", b"alpha's own value")
        revision = admin.range(CORE_SECRET_KEY).revision
    return Victims(
        core=core, tenant=beta, core_secret=core_secret, tenant_secret=tenant_secret, seeded_revision=revision
    )


@pytest.fixture(scope="session")
def bare_proxy(tmp_path_factory: pytest.TempPathFactory, core: stack.Core, alpha: stack.Tenant) -> Iterator[GrpcProxy]:
    """alpha's prefix behind a grpc-proxy that serves TLS and checks alpha's client CA itself: no tenant proxy."""
    proxy = start_grpc_proxy(
        tmp_path_factory.mktemp("alpha-bare"),
        core.etcd,
        namespace=alpha.prefix,
        name="alpha-bare-grpc-proxy",
        listen_tls=alpha.pki.proxy,
    )
    try:
        yield proxy
    finally:
        proxy.process.stop()


@pytest.fixture
def proxied(alpha: stack.Tenant) -> Target:
    return Target(name="tenant proxy", address=alpha.address, attacker=alpha)


@pytest.fixture
def bare(alpha: stack.Tenant, bare_proxy: GrpcProxy) -> Target:
    return Target(name="bare grpc-proxy", address=bare_proxy.address, attacker=alpha)
