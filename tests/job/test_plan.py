"""The job's rules as table tests over the pure `certrotation.plan.plan` and `report_of`: snapshots in, writes,
problems and the report out. No Kubernetes API, not even the fake: a snapshot is built from plain dicts, and `settle`
stands for a run whose every write succeeded (each written body becomes the object, at a new resourceVersion), the
report's included."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certrotation import fixes, kube, pki, rotation
from certrotation import plan as plan_module
from certrotation.kube import Kind, Ref
from certrotation.plan import (
    CertificateIssued,
    Core,
    Observed,
    Plan,
    SignerChanged,
    Snapshot,
    Verb,
    Write,
    plan,
    report_of,
    secret_data,
)
from certrotation.rotation import Role
from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage, KeyAlgorithm, parse
from tests.support.objects import etcdstorage

C: Final = names.DEFAULT_CONTROLLER_NAMESPACE
TENANT: Final = "sample-apiserver"
NS: Final = "k8s-sample-apiserver"
T0: Final = datetime(2030, 1, 1, tzinfo=UTC)
MINUTE: Final = timedelta(minutes=1)
SETTINGS: Final = Settings(ca_propagation_delay=MINUTE)
# CAs live an hour (renewal due at 40 minutes, a staged CA signs 6 minutes after every bundle holds it); leaves 30m.
SPEC: Final[dict[str, Any]] = {
    "signingCertificateValidity": "60m",
    "servingCertificateValidity": "30m",
    "clientCertificateValidity": "30m",
    "caCertConfigMap": [{"name": "serving-ca", "namespace": NS}, {"name": "serving-ca-2", "namespace": NS}],
    "clientCertSecret": [{"name": "client-cert", "namespace": NS}],
}

SIGNER: Final = Ref(Kind.SECRET, C, names.signer_secret(TENANT))
CLIENT_CA: Final = Ref(Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT))
SERVER_CERT: Final = Ref(Kind.SECRET, C, names.server_cert_secret(TENANT))
SERVING_CA: Final = Ref(Kind.CONFIGMAP, NS, "serving-ca", destination=True)
SERVING_CA_2: Final = Ref(Kind.CONFIGMAP, NS, "serving-ca-2", destination=True)
CLIENT_CERT: Final = Ref(Kind.SECRET, NS, "client-cert", destination=True)
FORBIDDEN: Final = kube.ForbiddenError(403, "Forbidden", "cannot get resource")

_POOL: Final = [ec.generate_private_key(ec.SECP256R1()) for _ in range(6)]
Objects = dict[Ref, dict[str, Any]]


def keys() -> Callable[[KeyAlgorithm], pki.PrivateKey]:
    """A key factory handing out the same keys in the same order every time."""
    pool: Iterator[pki.PrivateKey] = itertools.cycle(_POOL)
    return lambda _algorithm: next(pool)


def storage(**spec: Any) -> EtcdStorage:
    return parse(etcdstorage(TENANT, **{**SPEC, **spec}))


def precreated() -> Objects:
    """The destinations the API server's operator pre-created, empty."""
    objects: Objects = {}
    for ref in (SERVING_CA, SERVING_CA_2):
        objects[ref] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ref.name, "namespace": NS}}
    objects[CLIENT_CERT] = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": CLIENT_CERT.name, "namespace": NS}, "data": {names.TLS_CRT: "", names.TLS_KEY: ""},
    }  # fmt: skip
    for number, obj in enumerate(objects.values(), 1):
        obj["metadata"]["resourceVersion"] = str(number)
    return objects


def snapshot(
    objects: Mapping[Ref, Mapping[str, Any]],
    *,
    tenant: EtcdStorage | None = None,
    errors: Mapping[Ref, kube.KubeError] | None = None,
    core: Core | None = None,
) -> Snapshot:
    errors = errors or {}

    def observed(ref: Ref) -> Observed:
        return Observed(ref, None, errors[ref]) if ref in errors else Observed(ref, objects.get(ref))

    return Snapshot(
        tenant=tenant or storage(),
        signer=observed(SIGNER),
        client_ca=observed(CLIENT_CA),
        server_cert=observed(SERVER_CERT),
        serving_ca_destinations=(observed(SERVING_CA), observed(SERVING_CA_2)),
        client_cert_destinations=(observed(CLIENT_CERT),),
        core=core or Core(""),
    )


def all_writes(planned: Plan) -> list[Write]:
    """The plan's writes and, after them, the report's of a pass whose every write succeeded."""
    last = report_of(planned, {}).write
    return [*planned.writes, *([last] if last is not None else [])]


def settle(objects: Objects, planned: Plan) -> Objects:
    """The objects after every write of `planned` succeeded, the report's last."""
    settled = dict(objects)
    versions = itertools.count(100)
    for write in all_writes(planned):
        body = dict(write.body)
        body["metadata"] = {**body["metadata"], "resourceVersion": str(next(versions))}
        settled[write.ref] = body
    return settled


def run(objects: Objects, now: datetime, **options: Any) -> tuple[Plan, Objects]:
    planned = plan(snapshot(objects, **options), SETTINGS, now, new_key=keys())
    return planned, settle(objects, planned)


def settled_at(now: datetime = T0) -> Objects:
    return run(precreated(), now)[1]


def certificate(objects: Objects, ref: Ref) -> Any:
    return pki.parse_certs(secret_data(objects[ref])[names.TLS_CRT])[0]


def signer_data(objects: Objects) -> dict[str, bytes]:
    return secret_data(objects[SIGNER])


def published(objects: Objects, role: Role) -> bool:
    return rotation.signer_keys(role).next_published in signer_data(objects)


def staged(objects: Objects, role: Role) -> bool:
    return rotation.signer_keys(role).next_cert in signer_data(objects)


def writes(planned: Plan) -> list[tuple[Verb, Ref]]:
    return [(write.verb, write.ref) for write in all_writes(planned)]


# --- The writes and their order --------------------------------------------------------------------------------------


def test_a_first_plan_writes_signer_bundles_leaves_and_report_in_that_order() -> None:
    planned, _ = run(precreated(), T0)
    assert writes(planned) == [
        (Verb.CREATE, SIGNER),
        (Verb.CREATE, CLIENT_CA),
        (Verb.UPDATE, SERVING_CA),
        (Verb.UPDATE, SERVING_CA_2),
        (Verb.CREATE, SERVER_CERT),
        (Verb.UPDATE, CLIENT_CERT),
        (Verb.UPDATE, CLIENT_CA),  # the report, last
    ]
    assert [write.follows for write in all_writes(planned)] == [False] * 6 + [True]
    assert planned.problems == ()
    found = report_of(planned, {}).report
    assert sorted(found.certificates) == sorted(report.CERTIFICATES)
    assert [delivery.state for delivery in found.deliveries] == [report.State.DELIVERED] * 6


def test_an_update_expects_the_resource_version_it_read() -> None:
    objects = precreated()
    planned, _ = run(objects, T0)
    update = next(write for write in planned.writes if write.ref == SERVING_CA)
    assert update.body["metadata"]["resourceVersion"] == objects[SERVING_CA]["metadata"]["resourceVersion"]
    create = planned.writes[0]
    assert "resourceVersion" not in create.body["metadata"]


def test_the_events_are_carried_by_the_writes_that_do_them() -> None:
    planned, _ = run(precreated(), T0)
    by_ref = {write.ref: write.events for write in planned.writes if write.events}
    assert by_ref[SIGNER] == (
        SignerChanged(Role.SERVING, "issued", (rotation.Reason.MISSING,)),
        SignerChanged(Role.CLIENT, "issued", (rotation.Reason.MISSING,)),
    )
    for ref in (SERVER_CERT, CLIENT_CERT):
        [event] = by_ref[ref]
        assert isinstance(event, CertificateIssued)
        assert (event.ref, event.reasons) == (ref, (rotation.Reason.MISSING,))


def test_new_keys_come_from_the_injected_factory() -> None:
    _, objects = run(precreated(), T0)
    written = pki.parse_key(secret_data(objects[SERVER_CERT])[names.TLS_KEY])
    assert any(pki.same_public_key(certificate(objects, SERVER_CERT), key) for key in _POOL)
    assert pki.encode_key(written) in [pki.encode_key(key) for key in _POOL]


@pytest.mark.parametrize(
    ("change", "now", "expected"),
    [
        pytest.param({}, T0 + MINUTE, [], id="nothing due: nothing written"),
        pytest.param(
            {"cluster_domain": "corp.example"}, T0 + MINUTE,
            [(Verb.UPDATE, SERVER_CERT), (Verb.UPDATE, CLIENT_CA)],
            id="a changed cluster domain: the serving certificate and the report",
        ),
        pytest.param(
            {}, T0 + 21 * MINUTE,
            [(Verb.UPDATE, SERVER_CERT), (Verb.UPDATE, CLIENT_CERT), (Verb.UPDATE, CLIENT_CA)],
            id="leaves due for renewal: both leaves and the report",
        ),
    ],
)  # fmt: skip
def test_a_settled_tenant_is_written_only_where_something_changed(
    change: dict[str, Any], now: datetime, expected: list[tuple[Verb, Ref]]
) -> None:
    objects = settled_at(T0)
    settings = dataclasses.replace(SETTINGS, **change)
    planned = plan(snapshot(objects), settings, now, new_key=keys())
    assert writes(planned) == expected
    assert planned.problems == ()


# --- What is kept of the objects --------------------------------------------------------------------------------------


def test_destinations_keep_their_other_keys_labels_and_type_and_get_no_owner() -> None:
    objects = precreated()
    objects[SERVING_CA] = {**objects[SERVING_CA], "data": {"other.conf": "x=1"}}
    objects[SERVING_CA]["metadata"] = {**objects[SERVING_CA]["metadata"], "labels": {"team": "wardle"}}
    objects[CLIENT_CERT] = {**objects[CLIENT_CERT], "type": "Opaque", "data": {"extra": "a2VlcA=="}}
    _, after = run(objects, T0)
    assert after[SERVING_CA]["data"]["other.conf"] == "x=1"
    assert after[SERVING_CA]["metadata"]["labels"] == {"team": "wardle"}
    assert "ownerReferences" not in after[SERVING_CA]["metadata"]
    assert after[CLIENT_CERT]["type"] == "Opaque"
    assert sorted(after[CLIENT_CERT]["data"]) == ["extra", names.TLS_CRT, names.TLS_KEY]


def test_owned_objects_are_labelled_and_owned_but_not_controlled_and_strangers_are_adopted() -> None:
    tenant = storage()
    objects = settled_at(T0)
    stranger = objects[CLIENT_CA]["metadata"]
    objects[CLIENT_CA] = {**objects[CLIENT_CA], "metadata": {**stranger, "labels": {"a": "b"}, "ownerReferences": []}}
    planned, after = run(objects, T0 + MINUTE)
    assert writes(planned) == [(Verb.UPDATE, CLIENT_CA)]  # adopted, its bundle and report kept
    metadata = after[CLIENT_CA]["metadata"]
    assert metadata["labels"] == {"a": "b", **names.certificate_labels(TENANT)}
    owner = {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": TENANT, "uid": tenant.uid}
    # Not `controller: true`: Metacontroller would take the objects for children of its own and delete them.
    for ref in (SIGNER, CLIENT_CA, SERVER_CERT):
        assert after[ref]["metadata"]["ownerReferences"] == [owner]
    assert after[CLIENT_CA]["data"] == objects[CLIENT_CA]["data"]
    assert after[SIGNER]["type"] == "Opaque"
    assert after[SERVER_CERT]["type"] == "kubernetes.io/tls"


def test_the_signer_is_replaced_whole_so_a_discarded_staged_ca_leaves_it() -> None:
    objects = settled_at(T0)
    data = dict(objects[SIGNER]["data"])
    data["serving-signer-next.crt"] = "bm90IGEgY2VydA=="  # not a certificate: discarded
    objects[SIGNER] = {**objects[SIGNER], "data": data}
    planned, after = run(objects, T0 + MINUTE)
    assert writes(planned) == [(Verb.UPDATE, SIGNER)]
    assert "serving-signer-next.crt" not in after[SIGNER]["data"]


# --- Problems are data -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "errors", "expected_problem", "fix_part", "state"),
    [
        pytest.param(
            CLIENT_CERT, {}, "does not exist", "create Secret", report.State.MISSING,
            id="a missing client destination",
        ),
        pytest.param(
            SERVING_CA_2, {}, "does not exist", "create ConfigMap", report.State.MISSING,
            id="a missing bundle destination",
        ),
        pytest.param(
            None, {CLIENT_CERT: FORBIDDEN}, "get forbidden", "bind a Role granting get and update",
            report.State.FORBIDDEN, id="a destination the job may not read",
        ),
        pytest.param(
            None, {SERVER_CERT: FORBIDDEN}, "get forbidden", f"apply {fixes.RBAC_MANIFEST}", report.State.FORBIDDEN,
            id="an owned certificate the job may not read: reported as such",
        ),
        pytest.param(
            None, {CLIENT_CA: FORBIDDEN}, "get forbidden", "get, create and update ConfigMaps",
            report.State.FORBIDDEN, id="the CA ConfigMap the job may not read: the report has no place",
        ),
    ],
)  # fmt: skip
def test_an_unusable_object_is_a_problem_with_its_fix_and_the_rest_is_planned_and_reported(
    missing: Ref | None,
    errors: dict[Ref, kube.KubeError],
    expected_problem: str,
    fix_part: str,
    state: report.State,
) -> None:
    objects = precreated()
    if missing is not None:
        del objects[missing]
    planned = plan(snapshot(objects, errors=errors), SETTINGS, T0, new_key=keys())
    [problem] = planned.problems
    assert problem.ref == (missing or next(iter(errors)))
    assert problem.problem == expected_problem
    assert fix_part in problem.fix
    assert problem.cause is state
    assert problem.ref not in [write.ref for write in planned.writes]
    assert writes(planned)[0] == (Verb.CREATE, SIGNER)
    reported = report_of(planned, {})
    assert (reported.write is not None) == (CLIENT_CA not in errors)  # the report goes on the CA ConfigMap
    [undelivered] = reported.report.undelivered()
    assert (undelivered.name, undelivered.state, undelivered.message) == (problem.ref.name, state, expected_problem)
    assert undelivered.fix == problem.fix
    assert reported.events == (plan_module.NotDelivered(undelivered),)


def test_an_unreadable_signer_plans_no_write_and_its_report_says_so_for_every_object() -> None:
    objects = settled_at(T0)
    planned = plan(snapshot(objects, errors={SIGNER: FORBIDDEN}), SETTINGS, T0 + MINUTE, new_key=keys())
    assert planned.writes == ()
    [problem] = planned.problems
    assert (problem.ref, problem.problem) == (SIGNER, "get forbidden")
    found = report_of(planned, {}).report
    states = {delivery.name: delivery.state for delivery in found.deliveries}
    assert states.pop(SIGNER.name) is report.State.FORBIDDEN
    assert set(states.values()) == {report.State.FAILED}  # held back by the signer
    # Only what was read is claimed: the leaves in place, no CA.
    assert sorted(found.certificates) == ["clientCertificate", "servingCertificate"]


def test_the_core_certificates_problem_is_reported() -> None:
    bad = plan(snapshot(precreated(), core=Core("expired")), SETTINGS, T0, new_key=keys())
    assert report_of(bad, {}).report.core_certificate_problem == "expired"


def test_the_report_covers_the_client_certificate_that_expires_first() -> None:
    objects = settled_at(T0)
    second = Ref(Kind.SECRET, NS, "client-cert-2", destination=True)
    objects[second] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": second.name, "namespace": NS,
                                                                          "resourceVersion": "9"}}  # fmt: skip
    tenant = storage(
        clientCertSecret=[{"name": "client-cert", "namespace": NS}, {"name": second.name, "namespace": NS}]
    )
    observed = snapshot(objects, tenant=tenant)
    observed = dataclasses.replace(
        observed, client_cert_destinations=(*observed.client_cert_destinations, Observed(second, objects[second]))
    )
    planned = plan(observed, SETTINGS, T0 + 5 * MINUTE, new_key=keys())
    assert writes(planned) == [(Verb.UPDATE, second), (Verb.UPDATE, CLIENT_CA)]  # the report: one more delivery
    found = report_of(planned, {}).report
    first = certificate(objects, CLIENT_CERT)  # issued at T0, so it expires before the one issued now
    assert found.certificates["clientCertificate"].notAfter == first.not_valid_after_utc


# --- A staged CA starts its propagation delay only once every bundle holds it ----------------------------------------

STAGING: Final = T0 + 41 * MINUTE  # both CAs due for renewal: staged next to the current ones


@pytest.mark.parametrize(
    ("missing", "errors", "marked"),
    [
        pytest.param(None, {}, {Role.SERVING, Role.CLIENT}, id="every bundle holds both: both marked"),
        pytest.param(SERVING_CA_2, {}, {Role.CLIENT}, id="a serving-CA destination missing: serving CA not marked"),
        pytest.param(
            None,
            {SERVING_CA_2: FORBIDDEN},
            {Role.CLIENT},
            id="a serving-CA destination unreadable: serving CA not marked",
        ),
        pytest.param(
            None, {CLIENT_CA: FORBIDDEN}, {Role.SERVING}, id="the client-CA ConfigMap unreadable: client CA not marked"
        ),
    ],
)
def test_a_staged_ca_is_marked_published_only_when_every_bundle_of_its_role_holds_it(
    missing: Ref | None, errors: dict[Ref, kube.KubeError], marked: set[Role]
) -> None:
    objects = settled_at(T0)
    if missing is not None:
        del objects[missing]
    planned, after = run(objects, STAGING, errors=errors)
    assert all(staged(after, role) for role in Role)
    assert {role for role in Role if published(after, role)} == marked
    # The mark is written after every bundle write: a run stopped at a failed bundle write never marks.
    signer_writes = [index for index, write in enumerate(planned.writes) if write.ref == SIGNER]
    bundle_writes = [index for index, write in enumerate(planned.writes) if write.ref.kind is Kind.CONFIGMAP]
    assert signer_writes[0] < min(bundle_writes)
    assert signer_writes[-1] > max(bundle_writes)
    assert planned.writes[signer_writes[-1]].follows


@pytest.mark.parametrize("role", list(Role))
def test_an_unmarked_staged_ca_is_not_promoted_however_long_it_waits_and_is_once_marked_and_delayed(
    role: Role,
) -> None:
    withheld = {Role.SERVING: {SERVING_CA_2: FORBIDDEN}, Role.CLIENT: {CLIENT_CA: FORBIDDEN}}[role]
    leaf = {Role.SERVING: SERVER_CERT, Role.CLIENT: CLIENT_CERT}[role]
    objects = settled_at(T0)
    old_issuer = certificate(objects, leaf).issuer
    _, objects = run(objects, STAGING, errors=withheld)
    _, objects = run(objects, STAGING + 10 * MINUTE, errors=withheld)  # past the delay, but never published
    assert staged(objects, role)
    assert certificate(objects, leaf).issuer == old_issuer
    _, objects = run(objects, STAGING + 11 * MINUTE)  # every bundle holds it now: the delay starts
    assert published(objects, role)
    _, objects = run(objects, STAGING + 14 * MINUTE)
    assert certificate(objects, leaf).issuer == old_issuer  # the delay (4 minutes here: half the time left) runs
    _, objects = run(objects, STAGING + 15 * MINUTE)
    assert not staged(objects, role)
    assert certificate(objects, leaf).issuer != old_issuer  # promoted: the leaf is signed by the new CA


def test_each_write_names_the_earlier_writes_it_needs() -> None:
    """A failed bundle write keeps back the staged CAs' publication; the leaves need only the signer (one API
    server's refused ConfigMap never keeps the proxies' certificate from being renewed). The report needs nothing:
    it is written last, from what was written."""
    planned, _ = run(settled_at(T0), STAGING)
    assert writes(planned) == [
        (Verb.UPDATE, SIGNER),  # 0: staged CAs
        (Verb.UPDATE, CLIENT_CA),  # 1
        (Verb.UPDATE, SERVING_CA),  # 2
        (Verb.UPDATE, SERVING_CA_2),  # 3
        (Verb.UPDATE, SIGNER),  # 4: the staged CAs marked published
        (Verb.UPDATE, SERVER_CERT),  # 5
        (Verb.UPDATE, CLIENT_CERT),  # 6
        (Verb.UPDATE, CLIENT_CA),  # 7: the report
    ]
    needs = [set(write.needs) for write in all_writes(planned)]
    assert needs == [set(), {0}, {0}, {0}, {0, 1, 2, 3}, {0}, {0}, set()]


# --- The report says what was delivered ------------------------------------------------------------------------------


def test_the_report_is_for_this_etcdstorages_uid() -> None:
    planned, _ = run(precreated(), T0)
    assert report_of(planned, {}).report.report_for == storage().uid


def test_a_failed_write_is_reported_with_its_class_and_the_certificate_still_in_place() -> None:
    objects = settled_at(T0)
    held = certificate(objects, CLIENT_CERT)
    planned = plan(snapshot(objects), SETTINGS, T0 + 21 * MINUTE, new_key=keys())  # both leaves due
    position = next(i for i, write in enumerate(planned.writes) if write.ref == CLIENT_CERT)
    refused = fixes.failed(CLIENT_CERT, kube.ApiError(422, "Invalid", "denied by a policy"), "update", C)
    reported = report_of(planned, {position: refused})
    [undelivered] = reported.report.undelivered()
    assert (undelivered.name, undelivered.state) == (CLIENT_CERT.name, report.State.INVALID)
    assert undelivered.certificate is not None
    assert undelivered.certificate.notAfter == held.not_valid_after_utc
    assert reported.report.certificates["clientCertificate"].notAfter == held.not_valid_after_utc
    served = reported.report.certificates["servingCertificate"].notAfter
    assert served > certificate(objects, SERVER_CERT).not_valid_after_utc  # renewed, and in place
    assert reported.write is not None  # written all the same


# --- One destination, one owner --------------------------------------------------------------------------------------


def claimant(name: str, created: str, **changes: Any) -> dict[str, Any]:
    obj = etcdstorage(name, **SPEC)
    obj["metadata"].update(uid=f"uid-{name}", creationTimestamp=created, **changes)
    return obj


@pytest.mark.parametrize(
    ("objects", "owner"),
    [
        pytest.param([claimant("b", "2024-01-01T00:00:00Z"), claimant("a", "2024-02-01T00:00:00Z")], "b",
                     id="the oldest, whatever its name"),
        pytest.param([claimant("b", "2024-01-01T00:00:00Z"), claimant("a", "2024-01-01T00:00:00Z")], "a",
                     id="created in the same second: by name"),
        pytest.param([claimant("b", "2024-01-01T00:00:00Z", deletionTimestamp="2024-03-01T00:00:00Z"),
                      claimant("a", "2024-02-01T00:00:00Z")], "a", id="a going EtcdStorage claims nothing"),
        pytest.param([{**claimant("b", "2024-01-01T00:00:00Z"), "spec": {"replicas": 0}},
                      claimant("a", "2024-02-01T00:00:00Z")], "a", id="an invalid EtcdStorage claims nothing"),
    ],
)  # fmt: skip
def test_a_destination_is_owned_by_the_oldest_etcdstorage_naming_it(objects: list[dict[str, Any]], owner: str) -> None:
    owners = plan_module.destination_owners(objects)
    assert {owners[ref] for ref in (SERVING_CA, SERVING_CA_2, CLIENT_CERT)} == {owner}


def test_a_destination_another_etcdstorage_owns_is_not_written_and_its_staged_ca_waits() -> None:
    objects = settled_at(T0)
    observed = dataclasses.replace(snapshot(objects), claimed={SERVING_CA_2: "older", CLIENT_CERT: "older"})
    planned = plan(observed, SETTINGS, STAGING, new_key=keys())
    assert {SERVING_CA_2, CLIENT_CERT}.isdisjoint(write.ref for write in planned.writes)
    assert [(problem.ref, problem.cause) for problem in planned.problems] == [
        (SERVING_CA_2, report.State.CONFLICT),
        (CLIENT_CERT, report.State.CONFLICT),
    ]
    after = settle(objects, planned)
    assert not published(after, Role.SERVING)  # a bundle of the role does not hold it: the delay never starts
    assert published(after, Role.CLIENT)
    found = report_of(planned, {}).report
    assert "clientCertificate" not in found.certificates  # what the Secret holds is the other one's
    assert all("EtcdStorage older" in delivery.message for delivery in found.undelivered())


# --- Signer loss --------------------------------------------------------------------------------------------------


def without(objects: Objects, *keys_removed: str) -> Objects:
    data = {key: value for key, value in objects[SIGNER]["data"].items() if key not in keys_removed}
    return {**objects, SIGNER: {**objects[SIGNER], "data": data}}


LOSSES: Final[dict[str, tuple[Callable[[Objects], Objects], set[Role]]]] = {
    "deleted": (lambda objects: {ref: obj for ref, obj in objects.items() if ref != SIGNER}, set(Role)),
    "the serving key removed": (lambda objects: without(objects, "serving-signer.key"), {Role.SERVING}),
    "the client certificate removed": (lambda objects: without(objects, "client-signer.crt"), {Role.CLIENT}),
}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_a_lost_signer_stages_a_new_ca_next_to_what_the_bundles_hold_and_reissues_nothing_yet(loss: str) -> None:
    damage, lost = LOSSES[loss]
    objects = damage(settled_at(T0))
    planned, after = run(objects, T0 + 5 * MINUTE)
    assert {event.role for event in planned.lost} == lost
    assert {SERVER_CERT, CLIENT_CERT}.isdisjoint(write.ref for write in planned.writes)  # the leaves keep serving
    data = signer_data(after)
    for role in lost:
        keys_of = rotation.signer_keys(role)
        assert keys_of.cert not in data  # no CA signs until the staged one is promoted
        assert keys_of.next_cert in data
        assert rotation.Reason.SIGNER_LOST in next(
            step.reasons for write in planned.writes for step in write.events
            if isinstance(step, SignerChanged) and step.role is role
        )  # fmt: skip
    assert len(pki.parse_certs(after[SERVING_CA]["data"][names.SERVING_CA_KEY].encode())) == (
        2 if Role.SERVING in lost else 1
    )
    assert report_of(planned, {}).report.signer_lost
