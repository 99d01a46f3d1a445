"""The cert-rotation job against a real kube-apiserver: `hooks.kube` speaks the API as the fake in tests/job assumes,
and `python -m hooks.job`, authenticated as its ServiceAccount with exactly the RBAC of manifests/, does its work.

Each test uses its own tenant and namespace; other tests' EtcdStorages may exist in the cluster, so assertions are
about this test's tenant."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from hooks import job, kube, names, pki, report
from tests.e2e import harness

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
C = names.DEFAULT_CONTROLLER_NAMESPACE


def apply(plane: harness.ControlPlane, documents: list[dict[str, Any]]) -> None:
    plane.kubectl("apply", "--filename=-", input=yaml.safe_dump_all(documents))


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.fixture(scope="module")
def installed(control_plane: harness.ControlPlane, etcdstorage_crd: str) -> harness.ControlPlane:
    """The controller namespace, the job's RBAC, and the core etcd's CA and client certificate in it."""
    apply(control_plane, load(MANIFESTS / "namespace.yaml") + load(MANIFESTS / "cert-rotation-rbac.yaml"))
    upstream = control_plane.core.pki.proxy_client
    apply(
        control_plane,
        [
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": names.CORE_CA_CONFIGMAP, "namespace": C},
                "data": {names.CORE_CA_KEY: upstream.ca.read_text()},
            },
            {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": names.CORE_CERT_SECRET, "namespace": C},
                "data": {
                    names.TLS_CRT: base64.b64encode(upstream.cert.read_bytes()).decode(),
                    names.TLS_KEY: base64.b64encode(upstream.key.read_bytes()).decode(),
                },
            },
        ],
    )  # fmt: skip
    return control_plane


def tenant_from_example(plane: harness.ControlPlane) -> tuple[str, str]:
    """The operator's example (examples/apiserver-rbac.yaml and etcdstorage.yaml) under fresh names."""
    suffix = secrets.token_hex(3)
    tenant, namespace = f"job-e2e-{suffix}", f"apiserver-{suffix}"
    plane.kubectl("create", "namespace", namespace)
    documents = load(MANIFESTS / "examples" / "apiserver-rbac.yaml")
    for document in documents:
        if document["metadata"].get("namespace") == "k8s-sample-apiserver":
            document["metadata"]["namespace"] = namespace
    [storage] = load(MANIFESTS / "examples" / "etcdstorage.yaml")
    storage["metadata"]["name"] = tenant
    for destination in storage["spec"]["caCertConfigMap"] + storage["spec"]["clientCertSecret"]:
        destination["namespace"] = namespace
    apply(plane, [*documents, storage])
    return tenant, namespace


def run_job(plane: harness.ControlPlane, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m hooks.job` as the CronJob runs it, with the job ServiceAccount's token instead of a mounted one."""
    token = plane.token(C, job.SERVICE_ACCOUNT)
    kubeconfig = plane.kubeconfig_for_token(token, tmp_path / "job.kubeconfig")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KUBECONFIG": str(kubeconfig),
        "ETCDSTORAGE_NAMESPACE": C,
        "NO_PROXY": "*",
    }
    return subprocess.run(
        [sys.executable, "-m", "hooks.job"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


def failures_of(output: str, tenant: str) -> list[str]:
    return [line for line in output.splitlines() if "level=error" in line and f"tenant={tenant}" in line]


def get(plane: harness.ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any]:
    result = plane.kubectl("get", kind, name, f"--namespace={namespace}", "--output=json")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_the_job_does_its_work_with_exactly_the_rbac_of_the_manifests(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    first = run_job(installed, tmp_path)
    assert failures_of(first.stderr, tenant) == [], first.stderr
    assert 'msg="run finished"' in first.stderr

    ca_cert = get(installed, "configmap", C, names.client_ca_configmap(tenant))
    found = report.from_annotations(ca_cert["metadata"]["annotations"])
    assert found is not None
    assert sorted(found.certificates) == sorted(report.CERTIFICATES)
    assert found.core_certificate_problem == ""
    assert ca_cert["metadata"]["ownerReferences"][0]["name"] == tenant
    assert "controller" not in ca_cert["metadata"]["ownerReferences"][0]
    client = get(installed, "secret", namespace, "etcd-client-cert")
    serving = get(installed, "configmap", namespace, "etcd-serving-ca")
    leaf = pki.parse_certs(base64.b64decode(client["data"][names.TLS_CRT]))[0]
    assert any(pki.is_signed_by(leaf, ca) for ca in pki.parse_certs(found_bundle(installed, tenant)))
    assert pki.parse_certs(serving["data"][names.SERVING_CA_KEY])

    versions = {
        (kind, space, name): get(installed, kind, space, name)["metadata"]["resourceVersion"]
        for kind, space, name in [
            ("secret", C, names.signer_secret(tenant)),
            ("secret", C, names.server_cert_secret(tenant)),
            ("configmap", C, names.client_ca_configmap(tenant)),
            ("secret", namespace, "etcd-client-cert"),
            ("configmap", namespace, "etcd-serving-ca"),
        ]
    }
    second = run_job(installed, tmp_path)
    assert failures_of(second.stderr, tenant) == [], second.stderr
    assert f"tenant={tenant}" not in second.stderr  # nothing due: nothing written, nothing to say
    for (kind, space, name), version in versions.items():
        assert get(installed, kind, space, name)["metadata"]["resourceVersion"] == version, name


def found_bundle(plane: harness.ControlPlane, tenant: str) -> bytes:
    return str(get(plane, "configmap", C, names.client_ca_configmap(tenant))["data"][names.CLIENT_CA_KEY]).encode()


def test_without_the_operators_grant_the_job_names_the_role_to_create(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    installed.kubectl("delete", "rolebinding", job.SERVICE_ACCOUNT, f"--namespace={namespace}")
    result = run_job(installed, tmp_path)
    assert result.returncode == job.EXIT_FAILURES
    failures = failures_of(result.stderr, tenant)
    assert len(failures) == 2, result.stderr  # the ConfigMap and the Secret, one line each
    assert all("forbidden" in line and "bind a Role granting get and update" in line for line in failures)


def test_kube_speaks_the_api_as_the_fake_assumes(installed: harness.ControlPlane, api_client: ApiClient) -> None:
    api = kube.Kubernetes(api_client)
    namespace = f"kube-{secrets.token_hex(3)}"
    installed.kubectl("create", "namespace", namespace)
    assert api.get(kube.Kind.SECRET, namespace, "absent") is None
    body = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "s", "namespace": namespace}, "data": {"k": base64.b64encode(b"v").decode()},
    }  # fmt: skip
    created = api.create(kube.Kind.SECRET, namespace, body)
    assert isinstance(created["metadata"]["resourceVersion"], str)
    assert created["data"] == {"k": base64.b64encode(b"v").decode()}  # plain dicts, base64 as served
    with pytest.raises(kube.ConflictError) as exists:
        api.create(kube.Kind.SECRET, namespace, body)
    assert exists.value.reason == "AlreadyExists"
    updated = api.replace(kube.Kind.SECRET, namespace, {**created, "data": {"k": base64.b64encode(b"w").decode()}})
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(kube.ConflictError) as stale:
        api.replace(kube.Kind.SECRET, namespace, created)  # read before the update: refused, never overwritten
    assert stale.value.reason == "Conflict"
    missing = {**created, "metadata": {**created["metadata"], "name": "gone"}}
    with pytest.raises(kube.NotFoundError):
        api.replace(kube.Kind.SECRET, namespace, missing)
    with pytest.raises(ValueError, match="blindly"):
        api.replace(kube.Kind.SECRET, namespace, body)
    storage = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": namespace}, "spec": {}}
    apply(installed, [storage])
    assert namespace in [item["metadata"]["name"] for item in api.list_etcdstorages()]


def test_kube_maps_a_refusal_by_rbac_to_forbidden(
    installed: harness.ControlPlane, api_client: ApiClient, tmp_path: Path
) -> None:
    namespace = f"kube-{secrets.token_hex(3)}"
    installed.kubectl("create", "namespace", namespace)
    installed.kubectl("create", "serviceaccount", "nobody", f"--namespace={namespace}")
    kubeconfig = installed.kubeconfig_for_token(installed.token(namespace, "nobody"), tmp_path / "nobody.kubeconfig")
    with installed.api_client(kubeconfig) as client, pytest.raises(kube.ForbiddenError) as refused:
        kube.Kubernetes(client).get(kube.Kind.SECRET, namespace, "anything")
    assert refused.value.status == 403
