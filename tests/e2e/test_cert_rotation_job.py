"""The cert-rotation job against a real kube-apiserver: `certrotation.kube` speaks the API as the fake in tests/job
assumes, and `python -m certrotation`, authenticated as its ServiceAccount with exactly the RBAC of manifests/, does
its work.

Each test uses its own tenant and namespace; other tests' EtcdStorages may exist in the cluster, so assertions are
about this test's tenant."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from certrotation import events, job, kube, pki
from etcdstorage import names, report
from etcdstorage.settings import Settings
from hooks import sync
from hooks.wire import SyncRequest
from testbed import harness
from tests.e2e import install
from tests.e2e.install import apply, failures_of, get, load, run_job, tenant_from_example
from tests.support.objects import sync_request

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
    assert "run not recorded" not in first.stderr  # its record of the run, which the hook exports
    record = get(installed, "configmap", C, names.JOB_STATUS_CONFIGMAP)["data"]
    assert record[names.JOB_LAST_EXIT_KEY] in ("0", "1")  # other tests' tenants may fail in the same run
    assert record[names.JOB_LAST_RUN_KEY].endswith("Z")

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


def hook_sees(plane: harness.ControlPlane, tenant: str) -> dict[str, Any]:
    """The hook's answer for the live EtcdStorage, with the live `<N>-ca-cert` as Metacontroller relates it."""
    ca_cert = get(plane, "configmap", C, names.client_ca_configmap(tenant))
    related = {"ConfigMap.v1": {f"{C}/{ca_cert['metadata']['name']}": ca_cert}}
    request = sync_request(get(plane, "etcdstorage", "", tenant), related=related)
    answer = sync.sync(SyncRequest.model_validate(request), Settings(), datetime.now(UTC))
    return answer.model_dump(exclude_none=True)


def events_of(plane: harness.ControlPlane, tenant: str) -> list[dict[str, Any]]:
    uid = get(plane, "etcdstorage", "", tenant)["metadata"]["uid"]
    listed = plane.kubectl(
        "get", "events", "--all-namespaces", f"--field-selector=involvedObject.uid={uid}", "--output=json"
    )
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def test_a_missing_client_secret_reaches_the_hook_from_the_jobs_real_report_and_is_told_as_events(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    installed.kubectl("delete", "secret", "etcd-client-cert", f"--namespace={namespace}")

    first = run_job(installed, tmp_path)

    assert first.returncode == job.EXIT_FAILURES
    assert "event not recorded" not in first.stderr  # the ClusterRole of manifests/ lets it create Events
    conditions = {c["type"]: c for c in hook_sees(installed, tenant)["status"]["conditions"]}
    certificates = conditions["CertificatesReady"]
    assert (certificates["status"], certificates["reason"]) == ("False", "DestinationMissing")
    assert f"Secret {namespace}/etcd-client-cert does not exist" in certificates["message"]
    assert "manifests/examples/apiserver-rbac.yaml" in certificates["message"]
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "DestinationMissing")
    destinations = hook_sees(installed, tenant)["status"]["destinations"]
    assert [(d["kind"], d["name"], d["state"]) for d in destinations] == [
        ("ConfigMap", "etcd-serving-ca", "Delivered"),
        ("Secret", "etcd-client-cert", "Missing"),
    ]
    described = installed.kubectl("describe", "etcdstorage", tenant).stdout
    for reason in (events.CA_ISSUED, events.CERTIFICATE_ISSUED, events.DELIVERY_FAILED):
        assert reason in described, described

    run_job(installed, tmp_path)  # told again: the same Event, counted
    [failed] = [event for event in events_of(installed, tenant) if event["reason"] == events.DELIVERY_FAILED]
    assert failed["count"] == 2
    assert failed["type"] == "Warning"

    installed.kubectl("create", "secret", "generic", "etcd-client-cert", f"--namespace={namespace}")
    fixed = run_job(installed, tmp_path)
    assert failures_of(fixed.stderr, tenant) == [], fixed.stderr
    conditions = {c["type"]: c for c in hook_sees(installed, tenant)["status"]["conditions"]}
    assert conditions["CertificatesReady"]["status"] == "True"


def test_a_destination_named_by_two_etcdstorages_is_written_for_the_older_only(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    older, namespace = tenant_from_example(installed)
    [storage] = load(install.EXAMPLES / "etcdstorage.yaml")
    newer = f"newer-{older}"  # not a prefix of the other name: the log lines are told apart
    storage["metadata"]["name"] = newer
    for destination in storage["spec"]["caCertConfigMap"] + storage["spec"]["clientCertSecret"]:
        destination["namespace"] = namespace
    run_job(installed, tmp_path)
    time.sleep(1.1)  # a creationTimestamp of a later second
    apply(installed, [storage])
    before = get(installed, "secret", namespace, "etcd-client-cert")["metadata"]["resourceVersion"]

    result = run_job(installed, tmp_path)

    assert result.returncode == job.EXIT_FAILURES
    assert failures_of(result.stderr, older) == []
    assert len(failures_of(result.stderr, newer)) == 2, result.stderr
    assert get(installed, "secret", namespace, "etcd-client-cert")["metadata"]["resourceVersion"] == before
    conditions = {c["type"]: c for c in hook_sees(installed, newer)["status"]["conditions"]}
    assert conditions["CertificatesReady"]["reason"] == "DestinationConflict"
    assert f"also named by EtcdStorage {older}, created earlier" in conditions["CertificatesReady"]["message"]
    assert events.DESTINATION_CONFLICT in installed.kubectl("describe", "etcdstorage", newer).stdout
    installed.kubectl("delete", "etcdstorage", newer)
