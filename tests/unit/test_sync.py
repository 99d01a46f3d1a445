"""The sync hook as a pure function: desired children and status from what Metacontroller observed."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.spec import InvalidSpec
from hooks import applied, sync
from hooks.wire import CustomizeRequest, SyncRequest
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage, sync_request
from tests.support.reports import related, report_for

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = Settings()
NS = SETTINGS.namespace


def run(request: dict[str, Any], now: datetime = NOW, settings: Settings = SETTINGS) -> dict[str, Any]:
    return sync.sync(SyncRequest.model_validate(request), settings, now).model_dump(exclude_none=True)


def kinds(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in answer["children"]}


def condition(answer: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in answer["status"]["conditions"] if c["type"] == kind)


def observed_deployment(answer: dict[str, Any], available: int) -> dict[str, Any]:
    deployment = copy.deepcopy(kinds(answer)["Deployment"])
    deployment["metadata"].update(uid="d-1", resourceVersion="7", generation=1)
    deployment["status"] = {"replicas": 3, "availableReplicas": available, "readyReplicas": available}
    return deployment


def with_children(
    request: dict[str, Any], answer: dict[str, Any], available: int = 3, without: str = ""
) -> dict[str, Any]:
    """`request` with the children of `answer` observed (but `without`), as Metacontroller sends them: each with the
    record of what it applied."""
    key = f"{NS}/{names.proxy_name(request['parent']['metadata']['name'])}"
    request = copy.deepcopy(request)
    observed = {
        "Deployment.apps/v1": observed_deployment(answer, available),
        "Service.v1": copy.deepcopy(kinds(answer)["Service"]),
        "PodDisruptionBudget.policy/v1": copy.deepcopy(kinds(answer)["PodDisruptionBudget"]),
    }
    for kind, child in observed.items():
        record = {field: value for field, value in child.items() if field != "status"}
        record["metadata"] = {
            field: value for field, value in child["metadata"].items() if field not in ("uid", "resourceVersion")
        }
        child["metadata"]["annotations"] = {applied.LAST_APPLIED_ANNOTATION: json.dumps(record)}
        request["children"][kind] = {} if kind == without else {key: child}
    return request


def owned_by(obj: dict[str, Any], uid: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    reference = {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": "sample-apiserver", "uid": uid}
    obj["metadata"]["ownerReferences"] = [reference]
    return obj


def ready_request() -> dict[str, Any]:
    """A tenant with its report and every child observed: Ready."""
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    return with_children(request, run(request))


def test_a_new_object_gets_its_deployment_service_and_disruption_budget_in_the_controller_namespace() -> None:
    answer = run(sync_request(ORIGINAL_EXAMPLE))
    assert [
        (c["apiVersion"], c["kind"], c["metadata"]["namespace"], c["metadata"]["name"]) for c in answer["children"]
    ] == [
        ("apps/v1", "Deployment", NS, "etcd-sample-apiserver"),
        ("v1", "Service", NS, "etcd-sample-apiserver"),
        ("policy/v1", "PodDisruptionBudget", NS, "etcd-sample-apiserver"),
    ]


def test_a_new_object_waits_for_certificates_and_asks_to_be_called_again_soon() -> None:
    answer = run(sync_request(ORIGINAL_EXAMPLE))
    ready = condition(answer, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForCertificates")
    assert "sample-apiserver-ca-cert" in ready["message"]
    assert answer["resyncAfterSeconds"] == SETTINGS.waiting_resync_seconds
    assert answer["status"]["endpoint"] == "https://etcd-sample-apiserver.kube-apiserver-storage.svc:2379"
    assert answer["status"]["keyPrefix"] == "/etcdstorage/sample-apiserver/"


def test_the_pod_is_one_tenant_proxy_confined_to_the_tenants_prefix() -> None:
    pod = kinds(run(sync_request(ORIGINAL_EXAMPLE)))["Deployment"]["spec"]["template"]["spec"]
    [proxy] = pod["containers"]
    assert proxy["image"] == SETTINGS.proxy_image
    assert "command" not in proxy  # the image's entrypoint is the proxy
    assert "--prefix=/etcdstorage/sample-apiserver/" in proxy["args"]
    assert "--endpoints=https://etcd-svc-1.etcd.svc:2379" in proxy["args"]
    assert f"--listen=:{names.ETCD_PORT}" in proxy["args"]  # every address, IPv4 and IPv6
    assert {p["containerPort"] for p in proxy["ports"]} == {names.ETCD_PORT, names.PROXY_HEALTH_PORT}


def test_the_proxy_mounts_this_tenants_certificates_and_the_core_client_certificate() -> None:
    pod = kinds(run(sync_request(ORIGINAL_EXAMPLE)))["Deployment"]["spec"]["template"]["spec"]
    [proxy] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[names.SERVER_CERT_DIR]]["secret"]["secretName"] == "sample-apiserver-server-cert"
    assert volumes[mounts[names.CLIENT_CA_DIR]]["configMap"]["name"] == "sample-apiserver-ca-cert"
    assert volumes[mounts[names.CORE_CA_DIR]]["configMap"]["name"] == SETTINGS.core_ca_configmap
    assert volumes[mounts[names.CORE_CLIENT_DIR]]["secret"]["secretName"] == SETTINGS.core_cert_secret
    assert all(m["readOnly"] for m in proxy["volumeMounts"])
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in proxy["args"])
    assert flags["cert-file"] == f"{names.SERVER_CERT_DIR}/{names.TLS_CRT}"
    assert flags["client-ca-file"] == f"{names.CLIENT_CA_DIR}/{names.CLIENT_CA_KEY}"
    assert flags["core-ca-file"] == f"{names.CORE_CA_DIR}/{names.CORE_CA_KEY}"
    assert flags["core-key-file"] == f"{names.CORE_CLIENT_DIR}/{names.TLS_KEY}"


def test_probes_catch_a_hung_proxy_and_the_grace_period_covers_a_graceful_stop() -> None:
    pod = kinds(run(sync_request(ORIGINAL_EXAMPLE)))["Deployment"]["spec"]["template"]["spec"]
    [proxy] = pod["containers"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in proxy["args"])
    stop = int(flags["shutdown-delay"].removesuffix("s")) + int(flags["shutdown-timeout"].removesuffix("s"))
    assert proxy["livenessProbe"]["httpGet"] == {
        "path": "/livez",
        "port": names.PROXY_HEALTH_PORT_NAME,
        "scheme": "HTTP",
    }
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["timeoutSeconds"] > 1  # the 1 s default timed out under load
    assert pod["terminationGracePeriodSeconds"] > stop


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities_or_api_token() -> None:
    pod = kinds(run(sync_request(ORIGINAL_EXAMPLE)))["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["resources"]["requests"]


def test_children_carry_only_fields_the_hook_owns() -> None:
    for child in run(sync_request(ORIGINAL_EXAMPLE))["children"]:
        assert "status" not in child
        assert "ownerReferences" not in child["metadata"]
        assert "clusterIP" not in child.get("spec", {})


def test_replicas_default_to_three_and_follow_the_spec() -> None:
    assert kinds(run(sync_request(ORIGINAL_EXAMPLE)))["Deployment"]["spec"]["replicas"] == 3
    assert kinds(run(sync_request(etcdstorage(replicas=5))))["Deployment"]["spec"]["replicas"] == 5


def test_certificates_reported_by_the_job_are_shown_in_status_and_roll_no_pod() -> None:
    without = run(sync_request(ORIGINAL_EXAMPLE))
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    answer = run(request)
    template = kinds(answer)["Deployment"]["spec"]["template"]
    assert template == kinds(without)["Deployment"]["spec"]["template"]  # the proxy reloads its certificates
    assert answer["status"]["certificates"]["servingCertificate"]["notAfter"] == "2026-12-21T22:00:00Z"
    assert condition(answer, "CertificatesReady")["status"] == "True"


def test_a_ready_tenant_reports_ready_and_available_replicas() -> None:
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    answer = run(with_children(request, run(request), available=2))
    assert condition(answer, "Ready")["status"] == "True"
    assert condition(answer, "ProxyAvailable")["message"] == "2 of 3 proxies available"
    assert condition(answer, "Deployed")["status"] == "True"
    assert answer["status"]["availableReplicas"] == 2
    assert answer["resyncAfterSeconds"] == sync.MAX_RESYNC_SECONDS


def test_no_available_proxy_is_not_ready() -> None:
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    answer = run(with_children(request, run(request), available=0))
    assert (condition(answer, "Ready")["status"], condition(answer, "Ready")["reason"]) == ("False", "NoProxyAvailable")


def test_an_unreadable_report_is_a_condition_not_an_error() -> None:
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    with_pods = with_children(request, run(request))
    with_pods["related"] = related("sample-apiserver", {names.ANNOTATION_CERTIFICATES: "{"})
    answer = run(with_pods)
    assert condition(answer, "CertificatesReady")["reason"] == "CertificateReportUnreadable"
    assert len(answer["children"]) == 3


def test_an_unusable_core_client_certificate_is_a_clear_condition() -> None:
    problem = "the certificate in Secret kube-apiserver-storage/etcd-coreserving-cert: expired at 2026-11-01T00:00:00Z"
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW, problem=problem)))
    )
    certificates = condition(run(request), "CertificatesReady")
    assert certificates["reason"] == "CoreClientCertificateInvalid"
    assert "etcd-coreserving-cert" in certificates["message"]
    assert problem in certificates["message"]


def test_expired_certificates_are_shown_even_when_the_job_is_gone() -> None:
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    later = NOW + timedelta(hours=731)
    certificates = condition(run(request, now=later), "CertificatesReady")
    assert certificates["reason"] == "CertificateExpired"
    assert "servingCertificate" in certificates["message"]


def test_transition_times_carry_over_while_a_condition_holds_and_change_when_it_flips() -> None:
    request = sync_request(ORIGINAL_EXAMPLE)
    first = run(request)
    request["parent"] = {**request["parent"], "status": first["status"]}
    later = NOW + timedelta(minutes=5)
    second = run(request, now=later)
    assert second["status"] == first["status"], "an unchanged observation must give the same status (no hot loop)"
    request["related"] = related("sample-apiserver", report.to_annotations(report_for(NOW)))
    third = run(request, now=later)
    assert condition(third, "CertificatesReady")["lastTransitionTime"] == "2026-11-21T12:05:00Z"
    assert condition(third, "Deployed")["lastTransitionTime"] == "2026-11-21T12:00:00Z"


def test_a_garbled_previous_status_is_replaced_not_trusted() -> None:
    garbled = {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "yesterday"}, "junk", {}]}
    request = sync_request({**ORIGINAL_EXAMPLE, "status": garbled})
    assert condition(run(request), "Ready")["lastTransitionTime"] == "2026-11-21T12:00:00Z"


def test_finalizing_keeps_every_child_and_says_finalized() -> None:
    answer = run(sync_request(ORIGINAL_EXAMPLE, finalizing=True))
    assert answer["finalized"] is True
    assert len(answer["children"]) == 3


@pytest.mark.parametrize(
    ("missing", "kind"),
    [
        pytest.param("Service.v1", "Service", id="a missing Service"),
        pytest.param("PodDisruptionBudget.policy/v1", "PodDisruptionBudget", id="a missing PodDisruptionBudget"),
        pytest.param("Deployment.apps/v1", "Deployment", id="a missing Deployment"),
    ],
)
def test_ready_requires_every_child(missing: str, kind: str) -> None:
    request = sync_request(
        ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(report_for(NOW)))
    )
    answer = run(with_children(request, run(request), without=missing))
    ready, deployed = condition(answer, "Ready"), condition(answer, "Deployed")
    assert ready["status"] == deployed["status"] == "False"
    assert kind in deployed["message"]
    if kind != "Deployment":  # a missing Deployment is first told by ProxyAvailable
        assert (ready["reason"], ready["message"]) == ("Creating", deployed["message"])
    assert len(answer["children"]) == 3


def test_every_child_observed_is_deployed_and_ready() -> None:
    answer = run(ready_request())
    assert condition(answer, "Deployed")["message"] == "etcdproxy Deployment, Service and PodDisruptionBudget exist"
    assert condition(answer, "Ready")["status"] == "True"


def test_a_child_of_an_earlier_object_of_the_same_name_is_named_as_stale_not_missing() -> None:
    """Recreated while the old object's children still exist: Metacontroller hands over none of them (they are the
    old uid's), but the customize hook asked for them by name, so they arrive as related objects."""
    request = ready_request()
    key = f"{NS}/etcd-sample-apiserver"
    old = request["children"].pop("Deployment.apps/v1")[key]
    request["children"]["Deployment.apps/v1"] = {}
    request["related"]["Deployment.apps/v1"] = {key: owned_by(old, "old-uid")}
    answer = run(request)
    proxy, deployed, ready = (
        condition(answer, "ProxyAvailable"),
        condition(answer, "Deployed"),
        condition(answer, "Ready"),
    )
    assert proxy["reason"] == deployed["reason"] == ready["reason"] == "StaleChild"
    assert (
        f"Deployment {key} belongs to EtcdStorage uid old-uid, not to this EtcdStorage "
        f"(uid {ORIGINAL_EXAMPLE['metadata']['uid']})" in deployed["message"]
    )
    assert "delete it" in deployed["message"]
    assert answer["status"]["availableReplicas"] == 0  # the old object's proxies are not counted as this one's


def test_a_related_child_that_is_also_handed_over_is_this_objects() -> None:
    request = ready_request()
    request["related"]["Service.v1"] = copy.deepcopy(request["children"]["Service.v1"])
    assert condition(run(request), "Ready")["status"] == "True"


def test_the_report_of_an_earlier_object_of_the_same_name_is_not_taken_for_this_ones() -> None:
    request = ready_request()
    [(key, configmap)] = request["related"]["ConfigMap.v1"].items()
    request["related"]["ConfigMap.v1"][key] = owned_by(configmap, "old-uid")
    answer = run(request)
    certificates = condition(answer, "CertificatesReady")
    assert (certificates["status"], certificates["reason"]) == ("False", "StaleCertificateReport")
    assert condition(answer, "Ready")["reason"] == "StaleCertificateReport"
    assert f"ConfigMap {key} belongs to EtcdStorage uid old-uid" in certificates["message"]
    assert "certificates" not in answer["status"]
    # Once the job has adopted it for this object too, its report is this object's.
    adopted = owned_by(configmap, ORIGINAL_EXAMPLE["metadata"]["uid"])
    adopted["metadata"]["ownerReferences"].insert(0, {**adopted["metadata"]["ownerReferences"][0], "uid": "old-uid"})
    request["related"]["ConfigMap.v1"][key] = adopted
    assert condition(run(request), "Ready")["status"] == "True"


def test_an_invalid_spec_keeps_every_child_as_applied_and_says_why_in_ready() -> None:
    request = ready_request()
    previous = run(request)["status"]
    request["parent"] = {**etcdstorage("sample-apiserver", replicas=0), "status": previous}
    answer = run(request, now=NOW + timedelta(minutes=5))
    assert answer["children"] == [
        json.loads(child["metadata"]["annotations"][applied.LAST_APPLIED_ANNOTATION])
        for kind in sorted(request["children"])
        for child in request["children"][kind].values()
    ]
    [ready] = answer["status"]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.replicas" in ready["message"]
    assert ready["lastTransitionTime"] == "2026-11-21T12:05:00Z"  # it was True
    assert answer["resyncAfterSeconds"] == 0  # only a new spec changes the answer
    again = run({**request, "parent": {**request["parent"], "status": answer["status"]}}, now=NOW + timedelta(hours=1))
    assert again == answer, "an unchanged observation gives the same answer (no hot loop)"


def test_an_invalid_spec_whose_child_carries_no_record_raises_rather_than_change_it() -> None:
    request = ready_request()
    request["parent"] = etcdstorage("registry")
    del request["children"]["Service.v1"][f"{NS}/etcd-sample-apiserver"]["metadata"]["annotations"]
    with pytest.raises(InvalidSpec, match="reserved"):
        run(request)


def test_operator_settings_reach_the_children() -> None:
    settings = Settings(
        namespace="storage", core_etcd_urls=("https://a:2379", "https://b:2379"), key_prefix_root="/", replicas=2
    )
    answer = run(sync_request(ORIGINAL_EXAMPLE), settings=settings)
    deployment = kinds(answer)["Deployment"]
    proxy = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy")
    assert "--endpoints=https://a:2379,https://b:2379" in proxy["args"]
    assert "--prefix=/sample-apiserver/" in proxy["args"]
    assert deployment["metadata"]["namespace"] == "storage"
    assert deployment["spec"]["replicas"] == 2


def test_customize_asks_for_the_tenants_ca_configmap_and_the_objects_of_its_childrens_names() -> None:
    answer = sync.customize(CustomizeRequest.model_validate({"parent": ORIGINAL_EXAMPLE}), SETTINGS)
    proxy = ["etcd-sample-apiserver"]
    assert answer.model_dump() == {
        "relatedResources": [
            {"apiVersion": "v1", "resource": "configmaps", "namespace": NS, "names": ["sample-apiserver-ca-cert"]},
            {"apiVersion": "apps/v1", "resource": "deployments", "namespace": NS, "names": proxy},
            {"apiVersion": "v1", "resource": "services", "namespace": NS, "names": proxy},
            {"apiVersion": "policy/v1", "resource": "poddisruptionbudgets", "namespace": NS, "names": proxy},
            {
                "apiVersion": "v1",
                "resource": "configmaps",
                "namespace": NS,
                "names": ["etcdstorage-cert-rotation-status"],
            },
        ]
    }


valid_names = st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda n: n not in names.RESERVED_NAMES
)


@given(valid_names, st.integers(min_value=1, max_value=50), st.sampled_from(["ECDSAP256", "RSA2048"]))
def test_selectors_match_the_pod_labels_and_output_is_deterministic(name: str, replicas: int, algorithm: str) -> None:
    request = sync_request(etcdstorage(name, replicas=replicas, keyAlgorithm=algorithm))
    answer = run(request)
    assert answer == run(copy.deepcopy(request))
    pod_labels = kinds(answer)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for child in answer["children"]:
        selector = child["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items()
        assert len(child["metadata"]["name"]) <= 63


def test_an_invalid_parent_being_finalized_is_let_go_instead_of_refused_forever() -> None:
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "X", "message": "m"}]}
    answer = run(sync_request({**etcdstorage("registry"), "status": status}, finalizing=True))
    assert answer["finalized"] is True
    assert answer["children"] == []
    assert answer["status"] == status


# --- What the job delivered ------------------------------------------------------------------------------------------

UID = ORIGINAL_EXAMPLE["metadata"]["uid"]
SECRET = {"kind": "Secret", "namespace": "k8s-sample-apiserver", "name": "etcd-client-cert", "destination": True}


def delivered(holds: report.Holds, **where: Any) -> report.Delivery:
    return report.Delivery(holds=holds, state=report.State.DELIVERED, **where)


def with_deliveries(*deliveries: report.Delivery, **changes: Any) -> dict[str, Any]:
    """A tenant with every child observed, and a report of the job's saying `deliveries`."""
    found = report_for(NOW).model_copy(update={"report_for": UID, "deliveries": deliveries, **changes})
    request = sync_request(ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(found)))
    return with_children(request, run(request))


def refused(state: report.State, **where: Any) -> report.Delivery:
    return report.Delivery(
        holds=report.Holds.CLIENT_CERTIFICATE, state=state, message="update forbidden", fix="bind a Role", **where
    )


OWNED = {"kind": "Secret", "namespace": NS, "name": "sample-apiserver-server-cert"}


@pytest.mark.parametrize(
    ("delivery", "reason"),
    [
        pytest.param(refused(report.State.MISSING, **SECRET), "DestinationMissing", id="a missing destination"),
        pytest.param(refused(report.State.FORBIDDEN, **SECRET), "DestinationForbidden", id="a forbidden destination"),
        pytest.param(refused(report.State.INVALID, **SECRET), "DestinationInvalid", id="a refused destination"),
        pytest.param(refused(report.State.CONFLICT, **SECRET), "DestinationConflict", id="another's destination"),
        pytest.param(refused(report.State.FAILED, **SECRET), "DestinationFailed", id="no answer"),
        pytest.param(refused(report.State.FORBIDDEN, **OWNED), "DeliveryForbidden", id="an owned object forbidden"),
    ],
)
def test_an_object_the_job_did_not_deliver_makes_certificates_and_ready_false_naming_it_and_the_fix(
    delivery: report.Delivery, reason: str
) -> None:
    answer = run(with_deliveries(delivered(report.Holds.SIGNER, **{**OWNED, "name": "sample-apiserver-signer"}),
                                 delivery))  # fmt: skip
    certificates, ready = condition(answer, "CertificatesReady"), condition(answer, "Ready")
    assert (certificates["status"], certificates["reason"]) == ("False", reason)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert (
        f"{delivery.kind} {delivery.namespace}/{delivery.name} update forbidden (fix: bind a Role)"
        in (certificates["message"])
    )
    assert answer["resyncAfterSeconds"] == SETTINGS.waiting_resync_seconds


def test_status_shows_what_each_destination_holds() -> None:
    times = report_for(NOW).certificates["clientCertificate"]
    configmap = {
        "kind": "ConfigMap",
        "namespace": "k8s-sample-apiserver",
        "name": "etcd-serving-ca",
        "destination": True,
    }
    answer = run(
        with_deliveries(
            delivered(report.Holds.SERVING_CA_BUNDLE, **configmap),
            refused(report.State.FORBIDDEN, certificate=times, **SECRET),
        )
    )
    assert answer["status"]["destinations"] == [
        {"kind": "ConfigMap", "namespace": "k8s-sample-apiserver", "name": "etcd-serving-ca",
         "holds": "servingCABundle", "state": "Delivered"},
        {"kind": "Secret", "namespace": "k8s-sample-apiserver", "name": "etcd-client-cert",
         "holds": "clientCertificate", "state": "Forbidden", "message": "update forbidden", "fix": "bind a Role",
         "certificate": report.times(times)},
    ]  # fmt: skip


def test_every_object_delivered_is_ready() -> None:
    answer = run(with_deliveries(delivered(report.Holds.CLIENT_CERTIFICATE, **SECRET)))
    assert condition(answer, "Ready")["status"] == "True"
    assert answer["status"]["destinations"][0]["state"] == "Delivered"


def test_a_signer_being_recovered_is_signer_lost_until_the_recovery_completes() -> None:
    answer = run(with_deliveries(signer_lost="the serving CA is lost; a new one is staged"))
    certificates = condition(answer, "CertificatesReady")
    assert (certificates["status"], certificates["reason"]) == ("False", "SignerLost")
    assert "sample-apiserver-signer lost its CA: the serving CA is lost" in certificates["message"]
    assert condition(answer, "Ready")["reason"] == "SignerLost"


def test_a_report_written_for_another_uid_is_stale() -> None:
    answer = run(with_deliveries(report_for="00000000-0000-0000-0000-00000000dead"))
    certificates = condition(answer, "CertificatesReady")
    assert (certificates["status"], certificates["reason"]) == ("False", "StaleCertificateReport")
    assert "written for EtcdStorage uid 00000000-0000-0000-0000-00000000dead" in certificates["message"]
    assert UID in certificates["message"]


# --- Manual rotation ---------------------------------------------------------------------------------------------

ACTED = report.ManualRotation(
    renew=report.Acted(value="2026-11-21T11:00:00Z", time=NOW - timedelta(minutes=5)),
    rotateCA=report.Acted(value="first", time=NOW - timedelta(minutes=3)),
)


def test_status_shows_the_manual_rotation_values_the_job_acted_on_and_when() -> None:
    answer = run(with_deliveries(manual_rotation=ACTED))
    assert answer["status"]["manualRotation"] == {
        "renew": {"value": "2026-11-21T11:00:00Z", "time": "2026-11-21T11:55:00Z"},
        "rotateCA": {"value": "first", "time": "2026-11-21T11:57:00Z"},
    }
    assert condition(answer, "Ready")["status"] == "True"  # a request acted on is no reason for anything else


def test_without_a_request_acted_on_status_has_no_manual_rotation() -> None:
    assert "manualRotation" not in run(with_deliveries())["status"]


def test_the_manual_rotation_of_a_report_for_another_uid_is_not_shown() -> None:
    answer = run(with_deliveries(manual_rotation=ACTED, report_for="00000000-0000-0000-0000-00000000dead"))
    assert "manualRotation" not in answer["status"]


def test_an_annotation_that_is_no_request_is_a_problem_in_status_and_the_object_is_still_served() -> None:
    parent = copy.deepcopy(ORIGINAL_EXAMPLE)
    parent["metadata"]["annotations"] = {names.ANNOTATION_ROTATE_CA: "a\tb"}
    found = report_for(NOW).model_copy(update={"report_for": UID})
    request = sync_request(parent, related=related("sample-apiserver", report.to_annotations(found)))
    answer = run(with_children(request, run(request)))
    [problem] = answer["status"]["manualRotation"]["problems"]
    assert problem.startswith(f"metadata.annotations[{names.ANNOTATION_ROTATE_CA}]: must be at most 128 printable")
    assert sorted(kinds(answer)) == ["Deployment", "PodDisruptionBudget", "Service"]
    assert condition(answer, "Ready")["status"] == "True"


def test_every_condition_carries_the_generation_it_was_computed_from() -> None:
    parent = etcdstorage()
    parent["metadata"]["generation"] = 7
    answer = run(sync_request(parent))
    assert {condition["observedGeneration"] for condition in answer["status"]["conditions"]} == {7}
    refused = etcdstorage(replicas=0)
    refused["metadata"]["generation"] = 8
    [ready] = run(sync_request(refused))["status"]["conditions"]
    assert (ready["reason"], ready["observedGeneration"]) == ("InvalidSpec", 8)
