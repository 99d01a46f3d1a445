"""The cert-rotation job against a real kube-apiserver: `certrotation.kube` speaks the API as the fake in tests/job
assumes, and `python -m certrotation`, authenticated as its ServiceAccount with exactly the RBAC of manifests/, does
its work.

Each test uses its own tenant and namespace; other tests' EtcdStorages may exist in the cluster, so assertions are
about this test's tenant."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from certrotation import job, kube, pki
from etcdstorage import names, report
from testbed import harness
from tests.e2e import install
from tests.e2e.install import apply, failures_of, get, run_job, tenant_from_example

pytestmark = pytest.mark.e2e

C = install.C


def test_the_job_does_its_work_with_exactly_the_rbac_of_the_manifests(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    first = run_job(installed, tmp_path)
    assert failures_of(first.stderr, tenant) == [], first.stderr
    assert 'msg="run finished"' in first.stderr
    assert "cannot list the controller namespace" not in first.stderr  # the Role lets it list there

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


def test_kube_speaks_the_api_as_the_fake_assumes(
    installed: harness.ControlPlane, api_client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    more = [api.create(kube.Kind.SECRET, namespace, {**body, "metadata": {"name": name}}) for name in ("t", "u")]
    first, token = api.list_page(kube.Kind.SECRET, namespace, limit=2)
    assert token  # more to come
    rest, last = api.list_page(kube.Kind.SECRET, namespace, limit=2, token=token)
    assert last == ""
    monkeypatch.setattr(kube, "LIST_PAGE", 2)
    assert kube.list_all(api, kube.Kind.SECRET, namespace) == [*first, *rest]
    assert [item["metadata"]["name"] for item in [*first, *rest]] == ["s", "t", "u"]
    for item, written in zip([*first, *rest], [updated, *more], strict=True):
        assert item == api.get(kube.Kind.SECRET, namespace, item["metadata"]["name"])  # as a GET gives it
        assert item["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
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


def test_the_jobs_service_account_reads_no_secret_it_was_not_granted(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    _, namespace = tenant_from_example(installed)
    core_secret = f"core-admin-{secrets.token_hex(3)}"
    installed.kubectl("create", "secret", "generic", "unrelated", "--from-literal=k=v", f"--namespace={namespace}")
    installed.kubectl("create", "secret", "generic", core_secret, "--from-literal=k=v", "--namespace=kube-system")
    kubeconfig = installed.kubeconfig_for_token(installed.token(C, job.SERVICE_ACCOUNT), tmp_path / "job.kubeconfig")

    def refused(*args: str) -> bool:
        result = installed.kubectl(*args, kubeconfig=kubeconfig, check=False)
        return result.returncode != 0 and "forbidden" in result.stderr.lower()

    assert refused("get", "secret", "unrelated", f"--namespace={namespace}")
    assert refused("get", "secrets", f"--namespace={namespace}")  # a list would bypass resourceNames
    assert refused("get", "secret", core_secret, "--namespace=kube-system")
    assert refused("get", "secrets", "--all-namespaces")
    granted = installed.kubectl("get", "secret", "etcd-client-cert", f"--namespace={namespace}", kubeconfig=kubeconfig)
    assert granted.returncode == 0
    # In its own namespace it may get every Secret already; the list it needs there reads nothing more.
    assert installed.kubectl("get", "secrets", f"--namespace={C}", kubeconfig=kubeconfig).returncode == 0


def test_kube_redacts_what_the_api_server_echoes_of_a_refused_value(
    installed: harness.ControlPlane, api_client: ApiClient
) -> None:
    api = kube.Kubernetes(api_client)
    namespace = f"kube-{secrets.token_hex(3)}"
    installed.kubectl("create", "namespace", namespace)
    echoed = base64.b64encode(secrets.token_bytes(45)).decode().replace("/", "_").replace("+", "-").rstrip("=") + "$"
    body = {"metadata": {"name": "s"}, "data": {echoed: base64.b64encode(b"v").decode()}}  # `$`: not a valid key
    with pytest.raises(kube.ApiError) as refused:
        api.create(kube.Kind.SECRET, namespace, body)
    assert (refused.value.status, refused.value.reason) == (422, "Invalid")
    assert 'Secret "s" is invalid' in refused.value.message  # what the operator needs stays
    assert echoed[:40] not in str(refused.value)  # the value the API server quoted does not
