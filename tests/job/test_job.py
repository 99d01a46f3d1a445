"""The cert-rotation job end to end against the in-memory FAKE Kubernetes API (tests/job/fake.py says what that fake
does not cover), with an injected clock. Real etcd and grpc-proxy judge the same output in tests/job/test_etcd.py."""

from __future__ import annotations

import base64
import collections
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from certrotation import job, kube, pki, rotation
from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.spec import KeyAlgorithm
from etcdstorage.times import rfc3339
from tests.job.fake import Crash
from tests.job.world import (
    APISERVER_NAMESPACE,
    CLIENT_CERT,
    SERVING_CA,
    T0,
    TENANT,
    C,
    World,
    b64,
    captured_logs,
    connects,
    lines,
    new_world,
    put_core,
)

MINUTE = timedelta(minutes=1)
SHORT: dict[str, Any] = {
    "signingCertificateValidity": "30m",
    "servingCertificateValidity": "10m",
    "clientCertificateValidity": "10m",
}


@pytest.fixture
def world() -> World:
    return new_world()


def ca_cert_annotations(world: World) -> dict[str, str]:
    return dict(world.api.object(kube.Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT))["metadata"]["annotations"])


# --- A first run ---------------------------------------------------------------------------------------------------


def test_a_first_run_issues_everything_and_the_api_server_reaches_the_proxy(world: World) -> None:
    assert world.run(T0) == job.EXIT_OK
    assert connects(world.proxy(), world.apiserver(), T0 + MINUTE) is None

    signer = world.api.object(kube.Kind.SECRET, C, names.signer_secret(TENANT))
    assert signer["type"] == "Opaque"
    expected = [(keys.cert, keys.key) for keys in map(rotation.signer_keys, rotation.Role)]
    assert sorted(signer["data"]) == sorted(key for pair in expected for key in pair)
    server = world.api.object(kube.Kind.SECRET, C, names.server_cert_secret(TENANT))
    assert server["type"] == "kubernetes.io/tls"
    assert sorted(server["data"]) == [names.TLS_CRT, names.TLS_KEY]
    leaf = pki.parse_certs(world.proxy().server_cert)[0]
    assert pki.dns_names(leaf) == names.service_hosts(TENANT, C, "cluster.local")
    assert server["metadata"]["annotations"] == {
        names.ANNOTATION_EXPIRY_DATE: rfc3339(leaf.not_valid_after_utc),
        names.ANNOTATION_SIGNED_BY: pki.common_name(leaf.issuer),
    }


def test_objects_in_the_controller_namespace_are_owned_but_not_controlled(world: World) -> None:
    world.run(T0)
    uid = world.api.etcdstorages[TENANT]["metadata"]["uid"]
    for name in (names.signer_secret(TENANT), names.server_cert_secret(TENANT), names.client_ca_configmap(TENANT)):
        kind = kube.Kind.CONFIGMAP if name.endswith("-ca-cert") else kube.Kind.SECRET
        metadata = world.api.object(kind, C, name)["metadata"]
        # Metacontroller deletes objects it would take for children of its own: no controller flag, no controller-uid.
        assert metadata["ownerReferences"] == [
            {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": TENANT, "uid": uid}
        ]
        assert metadata["labels"] == names.certificate_labels(TENANT)
        assert not any("controller-uid" in label for label in metadata["labels"])


def test_destination_objects_keep_everything_but_the_keys_the_job_writes(world: World) -> None:
    world.api.put(
        kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, SERVING_CA,
        {"metadata": {"labels": {"team": "wardle"}}, "data": {"other.conf": "x=1"}},
    )  # fmt: skip
    world.api.put(
        kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT, {"type": "Opaque", "data": {"extra": b64(b"keep")}}
    )
    world.run(T0)
    configmap = world.api.object(kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, SERVING_CA)
    assert configmap["metadata"]["labels"] == {"team": "wardle"}
    assert "ownerReferences" not in configmap["metadata"]
    assert sorted(configmap["data"]) == ["other.conf", names.SERVING_CA_KEY]
    secret = world.api.object(kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT)
    assert secret["type"] == "Opaque"  # never changed
    assert sorted(secret["data"]) == ["extra", names.TLS_CRT, names.TLS_KEY]
    assert sorted(secret["metadata"]["annotations"]) == [names.ANNOTATION_EXPIRY_DATE, names.ANNOTATION_SIGNED_BY]


def test_the_report_tells_the_hook_the_times_of_every_certificate(world: World) -> None:
    world.run(T0)
    found = report.from_annotations(ca_cert_annotations(world))
    assert found is not None
    assert sorted(found.certificates) == sorted(report.CERTIFICATES)
    assert found.core_certificate_problem == ""
    client = pki.parse_certs(world.apiserver().client_cert)[0]
    assert found.certificates["clientCertificate"].notAfter == client.not_valid_after_utc
    for times in found.certificates.values():
        assert times.notBefore <= times.renewalTime <= times.notAfter


def test_each_client_certificate_destination_gets_its_own_key() -> None:
    world = new_world(
        clientCertSecret=[
            {"name": CLIENT_CERT, "namespace": APISERVER_NAMESPACE},
            {"name": "etcd-client-cert-2", "namespace": APISERVER_NAMESPACE},
        ]
    )
    world.api.put(kube.Kind.SECRET, APISERVER_NAMESPACE, "etcd-client-cert-2", {})
    assert world.run(T0) == job.EXIT_OK
    first, second = world.apiserver(), world.apiserver(secret="etcd-client-cert-2")
    assert first.client_key != second.client_key
    assert connects(world.proxy(), first, T0) is None
    assert connects(world.proxy(), second, T0) is None


def test_the_signer_never_leaves_the_controller_namespace(world: World) -> None:
    world.run(T0)
    signer = world.api.secret_data(C, names.signer_secret(TENANT))
    ca_keys = [value for key, value in signer.items() if key.endswith(".key")]
    for (_, namespace, _), obj in world.api.objects.items():
        if namespace == C:
            continue
        text = json.dumps(obj) + "".join(
            base64.b64decode(v).decode() for v in (obj.get("data") or {}).values() if obj["kind"] == "Secret"
        )
        assert not any(key.decode() in text for key in ca_keys)


# --- Idempotence and renewal ---------------------------------------------------------------------------------------


def test_a_second_run_with_nothing_due_writes_nothing(world: World) -> None:
    world.run(T0)
    before = world.tenant_objects()
    writes = len(world.tenant_writes())
    with captured_logs() as logs:
        assert world.run(T0 + timedelta(days=1)) == job.EXIT_OK
    assert len(world.tenant_writes()) == writes
    assert world.tenant_objects() == before
    assert lines(logs, "run finished")[0].endswith(
        "tenants=1 failed=0 certificates_issued=0 objects_written=0 core_certificate_ok=true"
    )


def test_a_changed_cluster_domain_reissues_only_the_serving_certificate(world: World) -> None:
    world.run(T0)
    before = world.api.snapshot()
    world.settings = dataclasses.replace(world.settings, cluster_domain="corp.example")
    assert world.run(T0 + MINUTE) == job.EXIT_OK
    changed = sorted(key for key in before if before[key] != world.api.objects[key])
    assert changed == [
        (kube.Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT)),  # the report: a new digest rolls the proxies
        (kube.Kind.SECRET, C, names.server_cert_secret(TENANT)),
    ]
    assert "etcd-sample-apiserver.kube-apiserver-storage.svc.corp.example" in pki.dns_names(
        pki.parse_certs(world.proxy().server_cert)[0]
    )


def test_a_changed_key_algorithm_rotates_the_cas_with_overlap(world: World) -> None:
    world.run(T0)
    world.api.etcdstorages[TENANT]["spec"]["keyAlgorithm"] = "RSA2048"
    old_proxy, old = world.proxy(), world.apiserver()
    assert world.run(T0 + MINUTE) == job.EXIT_OK
    # The RSA CAs are staged: in the bundles, not yet signing. The leaves get RSA keys at once, from the current CAs,
    # so consumers that have not reloaded yet still accept them.
    assert len(pki.parse_certs(world.apiserver().serving_ca)) == 2
    assert pki.key_algorithm(pki.parse_certs(world.apiserver().client_cert)[0].public_key()) is KeyAlgorithm.RSA_2048
    assert connects(old_proxy, world.apiserver(), T0 + MINUTE) is None
    assert connects(world.proxy(), old, T0 + MINUTE) is None
    assert world.run(T0 + timedelta(days=40)) == job.EXIT_OK  # well past the delay (a tenth of 8760h)
    leaf = pki.parse_certs(world.apiserver().client_cert)[0]
    assert pki.key_algorithm(leaf.public_key()) is KeyAlgorithm.RSA_2048
    assert connects(world.proxy(), old, T0 + timedelta(days=40)) is not None  # the proxy holds the new CA's leaf
    assert connects(world.proxy(), world.apiserver(), T0 + timedelta(days=40)) is None


def test_objects_the_original_controller_left_are_adopted_and_reissued(world: World) -> None:
    stranger = pki.new_ca(
        "etcd-sample-apiserver.kube-apiserver-storage.svc-server-signer-1",
        now=T0,
        validity=timedelta(days=30),
        algorithm=KeyAlgorithm.RSA_2048,
    )
    old = pki.new_server_cert(
        stranger,
        ["etcd-sample-apiserver.kube-apiserver-storage.svc"],
        now=T0,
        validity=timedelta(days=30),
        algorithm=KeyAlgorithm.RSA_2048,
    )
    world.api.put(
        kube.Kind.SECRET, C, names.server_cert_secret(TENANT),
        {"type": "kubernetes.io/tls", "data": {names.TLS_CRT: b64(old.cert_pem), names.TLS_KEY: b64(old.key_pem)}},
    )  # fmt: skip
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_OK
    metadata = world.api.object(kube.Kind.SECRET, C, names.server_cert_secret(TENANT))["metadata"]
    assert metadata["ownerReferences"][0]["name"] == TENANT
    assert "reasons=not-signed-by-current-ca" in "".join(lines(logs, "certificate issued"))


# --- Failures ------------------------------------------------------------------------------------------------------


def test_a_missing_destination_is_one_clear_line_and_the_other_tenants_still_get_certificates(world: World) -> None:
    world.add_tenant("other", "other-ns")
    del world.api.objects[(kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT)]
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    [line] = lines(logs, "tenant object failed")
    assert f"tenant={TENANT} kind=Secret object={APISERVER_NAMESPACE}/{CLIENT_CERT}" in line
    assert 'problem="does not exist"' in line
    assert "manifests/examples/apiserver-rbac.yaml" in line
    assert (kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT) not in world.api.objects  # never created
    assert connects(world.proxy("other"), world.apiserver("other-ns"), T0, tenant="other") is None
    assert lines(logs, "run finished")[0].endswith(
        "tenants=2 failed=1 certificates_issued=7 objects_written=11 core_certificate_ok=true"
    )
    # The rest of the failing tenant is in place: the hook gets its report, the serving bundle its CA.
    assert report.from_annotations(ca_cert_annotations(world)) is not None


def test_a_forbidden_destination_names_the_role_to_grant(world: World) -> None:
    world.add_tenant("other", "other-ns")
    world.api.forbid("update", kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, SERVING_CA)
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    [line] = lines(logs, "tenant object failed")
    assert f"object={APISERVER_NAMESPACE}/{SERVING_CA}" in line
    assert 'problem="update forbidden"' in line
    assert (
        f"bind a Role granting get and update on ConfigMap {SERVING_CA} to ServiceAccount {C}/etcdstorage-cert-rotation"
        in line
    )
    assert connects(world.proxy("other"), world.apiserver("other-ns"), T0, tenant="other") is None


def test_without_rights_in_the_controller_namespace_the_tenant_stops_before_issuing_anything(world: World) -> None:
    world.api.forbid("create", kube.Kind.SECRET, C)
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    [line] = lines(logs, "tenant object failed")
    assert f"object={C}/{names.signer_secret(TENANT)}" in line
    assert "apply manifests/cert-rotation-rbac.yaml" in line
    assert [write for write in world.tenant_writes() if write.kind is not kube.Kind.EVENT] == []  # no leaf, no bundle


def test_without_the_right_to_list_etcdstorages_nothing_runs(world: World) -> None:
    world.api.list_forbidden = True
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_CANNOT_RUN
    assert "ClusterRole" in lines(logs, "cannot list EtcdStorages")[0]


def test_an_invalid_etcdstorage_is_skipped_and_the_others_processed(world: World) -> None:
    world.add_tenant("other", "other-ns", signingCertificateValidity="1m")
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    assert "spec.signingCertificateValidity" in lines(logs, "tenant skipped: invalid spec")[0]
    assert connects(world.proxy(), world.apiserver(), T0) is None


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            lambda w: put_core(
                w.api,
                w.core_ca,
                pki.new_client_cert(
                    w.core_ca,
                    None,
                    now=T0 - timedelta(days=9),
                    validity=timedelta(days=1),
                    algorithm=KeyAlgorithm.ECDSA_P256,
                ),
            ),
            "expired at 2029-12-24T00:00:00Z",
            id="expired",
        ),
        pytest.param(
            lambda w: put_core(
                w.api,
                w.core_ca,
                pki.new_client_cert(
                    pki.new_ca("other", now=T0, validity=timedelta(days=9), algorithm=KeyAlgorithm.ECDSA_P256),
                    None,
                    now=T0,
                    validity=timedelta(days=9),
                    algorithm=KeyAlgorithm.ECDSA_P256,
                ),
            ),
            "not signed by a valid CA of the trusted bundle",
            id="another CA's",
        ),
        pytest.param(
            lambda w: w.api.objects.pop((kube.Kind.SECRET, C, names.CORE_CERT_SECRET)),
            f"Secret {C}/{names.CORE_CERT_SECRET} does not exist",
            id="missing",
        ),
    ],
)
def test_a_bad_core_client_certificate_is_reported_and_the_tenants_still_get_theirs(
    world: World, setup: object, expected: str
) -> None:
    setup(world)  # type: ignore[operator]
    with captured_logs() as logs:
        assert world.run(T0 + timedelta(minutes=5)) == job.EXIT_FAILURES
    found = report.from_annotations(ca_cert_annotations(world))
    assert found is not None
    assert expected in found.core_certificate_problem
    assert expected in lines(logs, "core etcd client certificate unusable")[0]
    assert connects(world.proxy(), world.apiserver(), T0 + timedelta(minutes=5)) is None


def test_a_core_client_certificate_with_a_common_name_is_fine(world: World) -> None:
    """etcd's grpc-proxy refused an upstream certificate with a Common Name; the tenant proxy does not."""
    named = pki.new_client_cert(
        world.core_ca, "proxy", now=T0, validity=timedelta(days=9), algorithm=KeyAlgorithm.ECDSA_P256
    )
    put_core(world.api, world.core_ca, named)
    assert world.run(T0 + timedelta(minutes=5)) == job.EXIT_OK
    found = report.from_annotations(ca_cert_annotations(world))
    assert found is not None
    assert found.core_certificate_problem == ""


def test_a_concurrent_write_is_retried_from_fresh_reads(world: World) -> None:
    world.api.interfere[(kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, SERVING_CA)] = 1
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_OK
    assert len(lines(logs, "write conflict: reading the tenant again")) == 1
    assert connects(world.proxy(), world.apiserver(), T0) is None


def test_writes_that_keep_conflicting_give_up_after_a_bounded_number_of_passes(world: World) -> None:
    world.api.interfere[(kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, SERVING_CA)] = job.ATTEMPTS
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    assert len(lines(logs, "write conflict: reading the tenant again")) == job.ATTEMPTS
    assert "attempts=3" in lines(logs, "tenant failed: writes kept conflicting")[0]


# --- Reading the controller namespace by LIST ----------------------------------------------------------------------


def three_tenants() -> World:
    world = new_world()
    world.add_tenant("second", "second-ns")
    world.add_tenant("third", "third-ns")
    assert world.run(T0) == job.EXIT_OK
    world.api.reads.clear()
    return world


def test_a_fresh_pass_lists_the_controller_namespace_twice_and_gets_only_the_destinations() -> None:
    world = three_tenants()
    writes = len(world.tenant_writes())
    assert world.run(T0 + timedelta(days=1)) == job.EXIT_OK
    assert len(world.tenant_writes()) == writes
    assert sorted((read.verb, read.kind, read.namespace, read.name) for read in world.api.reads) == sorted(
        [("list", kube.Kind.CONFIGMAP, C, ""), ("list", kube.Kind.SECRET, C, "")]
        + [
            (verb, kind, namespace, name)
            for namespace in (APISERVER_NAMESPACE, "second-ns", "third-ns")
            for verb, kind, name in (("get", kube.Kind.CONFIGMAP, SERVING_CA), ("get", kube.Kind.SECRET, CLIENT_CERT))
        ]
    )


def test_the_controller_namespace_is_listed_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    world = three_tenants()
    before = world.tenant_objects()
    monkeypatch.setattr(kube, "LIST_PAGE", 2)
    assert world.run(T0 + timedelta(days=1)) == job.EXIT_OK
    assert world.tenant_objects() == before  # every object was found: nothing created or reissued
    lists = collections.Counter(read.kind for read in world.api.reads if read.verb == "list")
    # 3 CA ConfigMaps, the core CA and the run record; 3 signers, 3 server certificates and the core certificate.
    assert lists == {kube.Kind.CONFIGMAP: 3, kube.Kind.SECRET: 4}
    assert all(read.namespace != C for read in world.api.reads if read.verb == "get")


def test_a_write_over_an_object_changed_after_the_list_is_refused_and_redone_from_a_get(world: World) -> None:
    world.run(T0)
    server_cert = names.server_cert_secret(TENANT)
    list_page = world.api.list_page

    def then_another_writer(kind: kube.Kind, namespace: str, *, limit: int, token: str = "") -> Any:
        page = list_page(kind, namespace, limit=limit, token=token)
        if kind is kube.Kind.SECRET:  # after the list, someone labels the server certificate's Secret
            changed = world.api.object(kube.Kind.SECRET, C, server_cert)
            changed["metadata"]["labels"] = {**changed["metadata"]["labels"], "audited": "yes"}
            world.api.put(kube.Kind.SECRET, C, server_cert, changed)
        return page

    world.api.list_page = then_another_writer  # type: ignore[method-assign]
    world.settings = dataclasses.replace(world.settings, cluster_domain="corp.example")  # the serving leaf is due
    world.api.reads.clear()
    with captured_logs() as logs:
        assert world.run(T0 + MINUTE) == job.EXIT_OK
    assert len(lines(logs, "write conflict: reading the tenant again")) == 1
    assert job_reads(world, "get", C) == sorted(
        [
            (kube.Kind.CONFIGMAP, names.client_ca_configmap(TENANT)),
            (kube.Kind.SECRET, names.signer_secret(TENANT)),
            (kube.Kind.SECRET, server_cert),
        ]
    )
    secret = world.api.object(kube.Kind.SECRET, C, server_cert)
    assert secret["metadata"]["labels"]["audited"] == "yes"  # the other writer's change is kept: no blind overwrite
    assert "etcd-sample-apiserver.kube-apiserver-storage.svc.corp.example" in pki.dns_names(
        pki.parse_certs(world.proxy().server_cert)[0]
    )
    assert connects(world.proxy(), world.apiserver(), T0 + MINUTE) is None


def test_an_object_created_after_the_list_is_read_by_get_and_updated(world: World) -> None:
    world.run(T0)
    key = (kube.Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT))
    created_by_another = world.api.objects.pop(key)
    created_by_another["metadata"]["labels"] = {"restored-by": "backup"}
    list_page = world.api.list_page

    def then_another_writer(kind: kube.Kind, namespace: str, *, limit: int, token: str = "") -> Any:
        page = list_page(kind, namespace, limit=limit, token=token)
        if kind is kube.Kind.CONFIGMAP and key not in world.api.objects:
            world.api.put(*key, created_by_another)
        return page

    world.api.list_page = then_another_writer  # type: ignore[method-assign]
    writes = len(world.api.writes)
    with captured_logs() as logs:
        assert world.run(T0 + MINUTE) == job.EXIT_OK
    assert len(lines(logs, "write conflict: reading the tenant again")) == 1  # its create met AlreadyExists
    assert [(write.verb, write.name) for write in world.api.writes[writes:]] == [("update", key[2])]  # adopted
    configmap = world.api.object(*key)
    assert configmap["metadata"]["labels"] == {"restored-by": "backup", **names.certificate_labels(TENANT)}
    assert report.from_annotations(configmap["metadata"]["annotations"]) is not None
    assert connects(world.proxy(), world.apiserver(), T0 + MINUTE) is None


def test_without_the_right_to_list_the_pass_reads_each_object_by_get_and_says_which_grant_is_missing(
    world: World,
) -> None:
    world.run(T0)
    world.api.reads.clear()
    world.api.forbid("list", kube.Kind.SECRET, C)
    writes = len(world.api.writes)
    with captured_logs() as logs:
        assert world.run(T0 + MINUTE) == job.EXIT_OK
    [line] = lines(logs, "cannot list the controller namespace: reading objects one by one")
    assert "level=warning" in line
    assert "apply manifests/cert-rotation-rbac.yaml" in line
    assert len(world.api.writes) == writes  # a minute after the last: not even the run record
    assert len(job_reads(world, "get", C)) == 6  # the core CA and certificate, the tenant's three, the run record


def job_reads(world: World, verb: str, namespace: str) -> list[tuple[kube.Kind, str]]:
    return sorted(
        (read.kind, read.name) for read in world.api.reads if read.verb == verb and read.namespace == namespace
    )


# --- Killed half-way -----------------------------------------------------------------------------------------------


def copy_of(world: World) -> World:
    return dataclasses.replace(world, api=copy.deepcopy(world.api))


def writes_of_a_run(world: World, now: datetime) -> int:
    probe = copy_of(world)
    probe.run(now)
    return len(probe.api.writes) - len(world.api.writes)


# Runs of the job with the SHORT spec (CA 30m, renewal after 20m; leaves 10m, renewal after 6m40s; delay 1m) up to
# the run in which each phase happens.
PHASES = {
    "first issuance": [],
    "leaf renewal": [0],
    "CA staging": [0, 7, 14],
    "CA promotion": [0, 7, 14, 21],
}
PHASE_MINUTE = {"first issuance": 0, "leaf renewal": 7, "CA staging": 21, "CA promotion": 25}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_run_killed_after_any_write_is_completed_by_the_next_and_nobody_loses_a_valid_certificate(phase: str) -> None:
    world = new_world(settings=Settings(ca_propagation_delay=MINUTE), **SHORT)
    for minute in PHASES[phase]:
        assert world.run(T0 + minute * MINUTE) == job.EXIT_OK
    now = T0 + PHASE_MINUTE[phase] * MINUTE
    later = now + timedelta(seconds=30)
    total = writes_of_a_run(world, now)
    assert total >= 2
    for crash_after in range(total):
        trial = copy_of(world)
        held = None if phase == "first issuance" else (trial.proxy(), trial.apiserver())
        trial.api.crash_after = crash_after
        with pytest.raises(Crash):
            trial.run(now)
        if held is not None:  # consumers that have not restarted still work, whatever the crash left...
            assert connects(*held, now) is None, f"crash after write {crash_after}"
            assert connects(trial.proxy(), held[1], now) is None, f"crash after write {crash_after}, proxy rolled"
        trial.api.crash_after = None
        assert trial.run(later) == job.EXIT_OK
        assert connects(trial.proxy(), trial.apiserver(), later) is None, f"crash after write {crash_after}"
        if held is not None:  # ...and after the next run finished the work
            assert connects(trial.proxy(), held[1], later) is None, f"crash after write {crash_after}"
        assert writes_of_a_run(trial, later) == 0, f"crash after write {crash_after}: not settled"


# --- A whole rotation, minute by minute ---------------------------------------------------------------------------


def test_minute_by_minute_every_consumer_that_reloads_in_time_keeps_working_and_expired_material_is_refused() -> None:
    """The CronJob's cadence over three CA lifetimes: the proxies load new files one run late (the Deployment roll),
    the API server reloads every few minutes (well within the propagation delay)."""
    world = new_world(**SHORT)
    world.settings = Settings(ca_propagation_delay=timedelta(minutes=4))
    world.run(T0)
    proxy, apiserver = world.proxy(), world.apiserver()
    frozen = apiserver  # an API server that never restarts
    rotations = set()
    for minute in range(1, 95):
        now = T0 + minute * MINUTE
        assert world.run(now) == job.EXIT_OK
        rotations.add(pki.parse_certs(world.apiserver().client_cert)[0].issuer.rfc4514_string())
        assert connects(proxy, apiserver, now + timedelta(seconds=30)) is None, f"minute {minute}"
        proxy = world.proxy()  # rolled: loads what this run wrote, used from the next minute on
        if minute % 3 == 0:
            apiserver = world.apiserver()
        assert connects(proxy, apiserver, now + timedelta(seconds=30)) is None, f"minute {minute}, after the roll"
    # Client CAs that signed: made at minutes 0, 20, 40, 60 and 80 (renewal after two thirds of 30m), each signing
    # from 4 minutes after it was made (the propagation delay).
    assert len(rotations) == 5
    assert connects(world.proxy(), frozen, T0 + 95 * MINUTE) is not None  # expired and no longer trusted


# --- A staged CA waits for every bundle ----------------------------------------------------------------------------


def withhold_second_serving_bundle(world: World) -> None:
    world.api.forbid("update", kube.Kind.CONFIGMAP, APISERVER_NAMESPACE, "etcd-serving-ca-2")


def withhold_client_bundle(world: World) -> None:
    world.api.forbid("list", kube.Kind.CONFIGMAP, C)  # listed, it would be read anyway
    world.api.forbid("get", kube.Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT))


@pytest.mark.parametrize(
    ("withhold", "signed"),
    [
        pytest.param(withhold_second_serving_bundle, "serving", id="serving CA: one API server's bundle not written"),
        pytest.param(withhold_client_bundle, "client", id="client CA: the proxies' bundle unreadable"),
    ],
)
def test_a_staged_ca_signs_only_after_every_bundle_of_its_role_held_it_for_the_delay(
    withhold: Any, signed: str
) -> None:
    """CAs of an hour: due at 40 minutes, a staged CA signs 6 minutes after every bundle holds it. While one bundle
    of its role cannot get it, the staged CA never starts that delay, so no consumer meets a leaf it cannot verify."""
    second = {"name": "etcd-serving-ca-2", "namespace": APISERVER_NAMESPACE}
    world = new_world(
        signingCertificateValidity="60m",
        servingCertificateValidity="30m",
        clientCertificateValidity="30m",
        caCertConfigMap=[{"name": SERVING_CA, "namespace": APISERVER_NAMESPACE}, second],
    )
    world.settings = Settings(ca_propagation_delay=MINUTE)

    def issuer() -> str:
        material = world.proxy().server_cert if signed == "serving" else world.apiserver().client_cert
        return pki.parse_certs(material)[0].issuer.rfc4514_string()

    assert world.run(T0) == job.EXIT_OK
    first = issuer()
    withhold(world)
    assert world.run(T0 + 41 * MINUTE) == job.EXIT_FAILURES  # staged, but not held by every bundle
    assert world.run(T0 + 50 * MINUTE) == job.EXIT_FAILURES  # long past the delay, had it started
    assert issuer() == first
    held = (world.proxy(), world.apiserver(configmap="etcd-serving-ca-2"))
    assert connects(*held, T0 + 50 * MINUTE) is None
    world.api.forbidden.clear()
    assert world.run(T0 + 51 * MINUTE) == job.EXIT_OK  # every bundle holds it now: the delay starts
    assert world.run(T0 + 54 * MINUTE) == job.EXIT_OK
    assert issuer() == first  # half the 9 minutes the current CA has left: not yet
    assert world.run(T0 + 56 * MINUTE) == job.EXIT_OK
    assert issuer() != first
    for configmap in (SERVING_CA, "etcd-serving-ca-2"):
        assert connects(world.proxy(), world.apiserver(configmap=configmap), T0 + 56 * MINUTE) is None


# --- Logs ----------------------------------------------------------------------------------------------------------


def test_no_key_material_reaches_the_logs() -> None:
    world = new_world(**SHORT)
    world.add_tenant("other", "other-ns")
    world.api.forbid("update", kube.Kind.SECRET, "other-ns", CLIENT_CERT)
    world.settings = Settings(ca_propagation_delay=MINUTE)
    with captured_logs() as logs:
        for minute in range(0, 40, 3):
            world.run(T0 + minute * MINUTE)
        put_core(
            world.api,
            world.core_ca,
            pki.new_client_cert(
                world.core_ca, "client", now=T0, validity=timedelta(days=1), algorithm=KeyAlgorithm.ECDSA_P256
            ),
        )
        world.run(T0 + 41 * MINUTE)
    text = logs.getvalue()
    assert len(text.splitlines()) > 50
    assert "-----BEGIN" not in text
    assert "PRIVATE" not in text
    secrets = []
    for (kind, _, _), obj in world.api.objects.items():
        if kind is kube.Kind.SECRET:
            for value in (obj.get("data") or {}).values():
                secrets.append(value)
                decoded = base64.b64decode(value)
                secrets.extend(re.findall(r"[A-Za-z0-9+/=]{40,}", decoded.decode(errors="replace")))
    leaked = [secret[:12] for secret in secrets if secret and secret in text]
    assert leaked == []


# --- The command ---------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        pytest.param({"ETCDSTORAGE_CA_PROPAGATION_DELAY": "soon"}, 'msg="invalid settings"', id="invalid settings"),
        pytest.param({}, 'msg="no Kubernetes credentials"', id="neither a ServiceAccount nor a kubeconfig"),
    ],
)
def test_python_m_hooks_job_exits_2_when_it_cannot_run(
    tmp_path: Path, environment: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "certrotation"],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == job.EXIT_CANNOT_RUN
    [line] = result.stderr.splitlines()
    assert message in line
    assert line.startswith("time=")


def test_the_run_record_tells_the_last_success_and_is_written_when_it_changes_or_every_five_minutes(
    world: World,
) -> None:
    def record() -> dict[str, str]:
        return dict(world.api.object(kube.Kind.CONFIGMAP, C, names.JOB_STATUS_CONFIGMAP)["data"])

    assert world.run(T0) == job.EXIT_OK
    assert record() == {"lastRunTime": rfc3339(T0), "lastRunExitCode": "0", "lastSuccessTime": rfc3339(T0)}
    writes = len(world.api.writes)
    assert world.run(T0 + MINUTE) == job.EXIT_OK
    assert len(world.api.writes) == writes  # the same outcome a minute later: nothing written
    assert world.run(T0 + 6 * MINUTE) == job.EXIT_OK
    assert record()["lastRunTime"] == rfc3339(T0 + 6 * MINUTE)
    world.add_tenant("broken", "broken-ns", precreate=False)  # its destinations are missing: the run fails
    assert world.run(T0 + 7 * MINUTE) == job.EXIT_FAILURES
    assert record() == {"lastRunTime": rfc3339(T0 + 7 * MINUTE), "lastRunExitCode": "1",
                        "lastSuccessTime": rfc3339(T0 + 6 * MINUTE)}  # fmt: skip


def test_a_run_record_that_cannot_be_written_is_a_warning_not_a_failure(world: World) -> None:
    world.api.forbid("create", kube.Kind.CONFIGMAP, C, names.JOB_STATUS_CONFIGMAP)
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_OK
    [line] = lines(logs, "run not recorded")
    assert "level=warning" in line
    assert "apply manifests/cert-rotation-rbac.yaml" in line
    assert connects(world.proxy(), world.apiserver(), T0) is None
