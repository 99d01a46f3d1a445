"""What the job reports and tells, on the in-memory FAKE API (tests/job/fake.py): the report on `<N>-ca-cert` says,
per object, whether the pass delivered it or why not, and is written even when a destination fails, claiming only
the certificates in place; a destination named by two EtcdStorages is written for the older only; the pass's
decisions become Events on the EtcdStorage, and an Event that cannot be written fails nothing."""

from __future__ import annotations

import re
from datetime import timedelta

from cryptography import x509

from certrotation import events, job, kube, pki
from etcdstorage import names, report
from tests.job.world import (
    APISERVER_NAMESPACE,
    CLIENT_CERT,
    SERVING_CA,
    T0,
    TENANT,
    C,
    World,
    captured_logs,
    connects,
    lines,
    new_world,
)

MINUTE = timedelta(minutes=1)
LATER = T0 + timedelta(days=25)  # the 730h leaves are due for renewal (after two thirds of their lifetime)


def delivery(world: World, name: str, tenant: str = TENANT) -> report.Delivery:
    [found] = [delivery for delivery in world.report(tenant).deliveries if delivery.name == name]
    return found


def client_leaf(world: World) -> x509.Certificate:
    return pki.parse_certs(world.apiserver().client_cert)[0]


def test_a_first_run_reports_every_object_delivered_for_this_etcdstorages_uid() -> None:
    world = new_world()
    assert world.run(T0) == job.EXIT_OK
    found = world.report()
    assert found.report_for == world.api.etcdstorages[TENANT]["metadata"]["uid"]
    assert [(d.holds, d.name, d.state) for d in found.deliveries] == [
        (report.Holds.SIGNER, names.signer_secret(TENANT), report.State.DELIVERED),
        (report.Holds.CLIENT_CA_BUNDLE, names.client_ca_configmap(TENANT), report.State.DELIVERED),
        (report.Holds.SERVING_CA_BUNDLE, SERVING_CA, report.State.DELIVERED),
        (report.Holds.SERVING_CERTIFICATE, names.server_cert_secret(TENANT), report.State.DELIVERED),
        (report.Holds.CLIENT_CERTIFICATE, CLIENT_CERT, report.State.DELIVERED),
    ]
    secret = delivery(world, CLIENT_CERT)
    assert secret.destination
    assert secret.certificate is not None
    assert secret.certificate.notAfter == client_leaf(world).not_valid_after_utc
    assert found.signer_lost == ""


def test_a_missing_client_secret_is_reported_undelivered_with_its_fix_and_no_client_certificate_is_claimed() -> None:
    world = new_world()
    del world.api.objects[(kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT)]
    assert world.run(T0) == job.EXIT_FAILURES
    missing = delivery(world, CLIENT_CERT)
    assert missing.state is report.State.MISSING
    assert missing.message == "does not exist"
    assert "manifests/examples/apiserver-rbac.yaml" in missing.fix
    assert missing.certificate is None
    assert "clientCertificate" not in world.report().certificates
    assert delivery(world, SERVING_CA).delivered  # the rest is in place, and said so


def test_a_forbidden_client_secret_keeps_the_report_on_the_certificate_still_in_place() -> None:
    world = new_world()
    assert world.run(T0) == job.EXIT_OK
    held = client_leaf(world)
    world.api.forbid("update", kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT)
    assert world.run(LATER) == job.EXIT_FAILURES  # due for renewal, and refused
    refused = delivery(world, CLIENT_CERT)
    assert refused.state is report.State.FORBIDDEN
    assert f"bind a Role granting get and update on Secret {CLIENT_CERT}" in refused.fix
    # Never a certificate that is not in place: the report keeps the one the Secret holds.
    assert refused.certificate is not None
    assert refused.certificate.notAfter == held.not_valid_after_utc
    assert world.report().certificates["clientCertificate"].notAfter == held.not_valid_after_utc
    assert delivery(world, names.server_cert_secret(TENANT)).delivered  # renewed all the same
    world.api.forbidden.clear()
    assert world.run(LATER + MINUTE) == job.EXIT_OK
    assert world.report().undelivered() == []


def test_a_signer_that_cannot_be_stored_keeps_everything_back_and_the_report_says_why() -> None:
    world = new_world()
    assert world.run(T0) == job.EXIT_OK
    world.api.forbid("update", kube.Kind.SECRET, C, names.signer_secret(TENANT))
    world.api.etcdstorages[TENANT]["spec"]["keyAlgorithm"] = "RSA2048"  # new CAs are due
    assert world.run(T0 + MINUTE) == job.EXIT_FAILURES
    states = {d.name: d.state for d in world.report().deliveries}
    assert states.pop(names.signer_secret(TENANT)) is report.State.FORBIDDEN
    assert set(states.values()) == {report.State.FAILED}
    assert "it needs Secret" in delivery(world, CLIENT_CERT).message


# --- One destination, one owner ---------------------------------------------------------------------------------------


def two_tenants_one_destination(*, older: str, newer: str, same_time: bool = False) -> World:
    """Two EtcdStorages naming the same ConfigMap and Secret in one namespace; `older` created first."""
    world = new_world()
    world.api.etcdstorages.clear()
    world.add_tenant(older, APISERVER_NAMESPACE, created="2024-01-01T00:00:00Z")
    world.add_tenant(
        newer, APISERVER_NAMESPACE, created="2024-01-01T00:00:00Z" if same_time else "2024-02-01T00:00:00Z"
    )
    return world


def test_a_destination_named_by_two_etcdstorages_is_written_for_the_older_only_never_alternately() -> None:
    world = two_tenants_one_destination(older="zeta", newer="alpha")  # by age, not by name
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    assert connects(world.proxy("zeta"), world.apiserver(), T0, tenant="zeta") is None
    versions = {
        key: obj["metadata"]["resourceVersion"]
        for key, obj in world.api.objects.items()
        if key[1] == APISERVER_NAMESPACE
    }
    for minute in range(1, 4):
        assert world.run(T0 + minute * MINUTE) == job.EXIT_FAILURES
    assert {key: world.api.objects[key]["metadata"]["resourceVersion"] for key in versions} == versions
    assert connects(world.proxy("zeta"), world.apiserver(), T0, tenant="zeta") is None

    for name in (SERVING_CA, CLIENT_CERT):
        conflict = delivery(world, name, tenant="alpha")
        assert conflict.state is report.State.CONFLICT
        assert "also named by EtcdStorage zeta, created earlier" in conflict.message
        assert "EtcdStorage alpha" in conflict.fix
        assert delivery(world, name, tenant="zeta").delivered
    assert "clientCertificate" not in world.report("alpha").certificates
    failures = [line for line in lines(logs, "tenant object failed") if "tenant=alpha" in line]
    assert len(failures) == 2
    assert not [line for line in lines(logs, "tenant object failed") if "tenant=zeta" in line]
    assert world.reasons("alpha")[events.DESTINATION_CONFLICT] == 2 * 4  # one Event per destination, counted per run
    assert events.DESTINATION_CONFLICT not in world.reasons("zeta")


def test_two_etcdstorages_created_at_the_same_second_are_ordered_by_name() -> None:
    world = two_tenants_one_destination(older="beta", newer="alpha", same_time=True)
    world.run(T0)
    assert delivery(world, CLIENT_CERT, tenant="alpha").delivered
    assert delivery(world, CLIENT_CERT, tenant="beta").state is report.State.CONFLICT


def test_when_the_owner_goes_the_other_etcdstorage_takes_the_destination_over() -> None:
    world = two_tenants_one_destination(older="zeta", newer="alpha")
    world.run(T0)
    del world.api.etcdstorages["zeta"]
    assert world.run(T0 + MINUTE) == job.EXIT_OK
    assert connects(world.proxy("alpha"), world.apiserver(), T0 + MINUTE, tenant="alpha") is None
    assert world.report("alpha").undelivered() == []


# --- Events ---------------------------------------------------------------------------------------------------------


def test_a_first_run_tells_the_issued_cas_and_certificates_as_normal_events_on_the_etcdstorage() -> None:
    world = new_world()
    world.run(T0)
    assert world.reasons() == {events.CA_ISSUED: 2, events.CERTIFICATE_ISSUED: 2}
    uid = world.api.etcdstorages[TENANT]["metadata"]["uid"]
    for event in world.events():
        assert event["metadata"]["namespace"] == names.EVENTS_NAMESPACE
        assert event["involvedObject"] == {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": TENANT,
                                           "uid": uid}  # fmt: skip
        assert event["type"] == events.NORMAL
        assert event["source"] == {"component": names.EVENTS_COMPONENT}
    messages = sorted(event["message"] for event in world.events())
    assert any(f"Secret {APISERVER_NAMESPACE}/{CLIENT_CERT}" in message and "reasons: missing" in message
               for message in messages)  # fmt: skip
    world.run(T0 + MINUTE)
    assert world.reasons() == {events.CA_ISSUED: 2, events.CERTIFICATE_ISSUED: 2}  # nothing happened: nothing told


def test_a_ca_rotation_tells_staged_promoted_and_retired() -> None:
    world = new_world(
        signingCertificateValidity="60m", servingCertificateValidity="30m", clientCertificateValidity="30m"
    )
    for minute in range(0, 60, 2):
        assert world.run(T0 + minute * MINUTE) == job.EXIT_OK
    told = world.reasons()
    assert told[events.CA_STAGED] == told[events.CA_PROMOTED] == told[events.CA_RETIRED] == 2  # both roles once


def test_a_failure_told_on_every_run_is_one_event_whose_count_grows() -> None:
    world = new_world()
    del world.api.objects[(kube.Kind.SECRET, APISERVER_NAMESPACE, CLIENT_CERT)]
    for minute in range(3):
        world.run(T0 + minute * MINUTE)
    [failed] = [event for event in world.events() if event["reason"] == events.DELIVERY_FAILED]
    assert failed["type"] == events.WARNING
    assert failed["count"] == 3
    assert failed["lastTimestamp"] == "2030-01-01T00:02:00Z"
    assert failed["firstTimestamp"] == "2030-01-01T00:00:00Z"
    assert f"Secret {APISERVER_NAMESPACE}/{CLIENT_CERT}: does not exist; fix: create Secret" in failed["message"]


def test_an_event_that_cannot_be_written_fails_nothing() -> None:
    world = new_world()
    world.api.forbid("create", kube.Kind.EVENT, names.EVENTS_NAMESPACE)
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_OK
    assert connects(world.proxy(), world.apiserver(), T0) is None
    [line, *_] = lines(logs, "event not recorded")
    assert "level=warning" in line
    assert "ClusterRole lets etcdstorage-cert-rotation create and update events" in line


def test_no_event_carries_key_material() -> None:
    world = new_world()
    world.run(T0)
    world.api.etcdstorages[TENANT]["spec"]["keyAlgorithm"] = "RSA2048"
    world.run(T0 + timedelta(days=40))
    text = " ".join(str(event) for event in world.events())
    assert "BEGIN" not in text
    assert re.findall(r"[A-Za-z0-9+/=]{40,}", text) == []
