"""Fixtures of the e2e tests: one real control plane (etcd + kube-apiserver on loopback) for the whole session.

The kube-apiserver binary is built from testbed/binaries/kube-apiserver/go.mod by
testbed/binaries/build-kube-apiserver.sh. When it is missing, a developer's run builds it (slow, once); a CI run (`CI`
set) fails instead of spending that time silently.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from testbed import harness
from tests.e2e import install

CRD_MANIFEST = harness.REPO / "manifests" / "crd.yaml"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def kube_apiserver_binary(request: pytest.FixtureRequest) -> Path:
    binary = harness.kube_apiserver_path()
    if binary.is_file():
        return binary
    if _in_ci():
        pytest.fail(
            f"no kube-apiserver at {binary}. CI must build it before the tests "
            "(testbed/binaries/build-kube-apiserver.sh, "
            "cache its directory between runs); the e2e tests never skip for want of it.",
            pytrace=False,
        )
    # Let the build's progress reach the terminal: a silent pause of many minutes looks like a hang.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return harness.build_kube_apiserver()


@pytest.fixture(scope="session")
def control_plane(
    kube_apiserver_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.ControlPlane]:
    with harness.running(tmp_path_factory.mktemp("control-plane"), kube_apiserver_binary) as plane:
        yield plane


@pytest.fixture(scope="session")
def api_client(control_plane: harness.ControlPlane) -> Iterator[ApiClient]:
    """The `kubernetes` Python client as cluster admin."""
    with control_plane.api_client() as client:
        yield client


@pytest.fixture
def namespace(control_plane: harness.ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test. Deleting it only marks it Terminating: no namespace controller runs here."""
    name = f"e2e-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def etcdstorage_crd(control_plane: harness.ControlPlane) -> str:
    """manifests/crd.yaml applied and Established; left installed for every later test of the session."""
    applied = control_plane.kubectl(
        "apply", "--server-side", "--field-manager=etcdstorage-e2e", f"--filename={CRD_MANIFEST}", "--output=name"
    )
    crd = applied.stdout.strip()
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", crd)
    return crd.removeprefix("customresourcedefinition.apiextensions.k8s.io/")


@pytest.fixture(scope="session")
def installed(control_plane: harness.ControlPlane, etcdstorage_crd: str) -> harness.ControlPlane:
    """The CRD, the controller namespace (Pod Security `restricted`), the job's RBAC, the proxies' ServiceAccount,
    and the core etcd's CA and empty-CN client certificate in it (`install.install`)."""
    install.install(control_plane)
    return control_plane
