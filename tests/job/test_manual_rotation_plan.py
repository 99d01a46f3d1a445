"""Manual rotation as table tests over the pure plan: the EtcdStorage's renew and rotate-ca annotations in, the writes,
the Events they carry and the report's record out (tests/job/test_plan.py builds the snapshots)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Final

import pytest

from certrotation import fixes, kube, rotation
from certrotation.plan import (
    CertificateIssued,
    NotDelivered,
    Plan,
    RequestRefused,
    RotationRequested,
    SignerChanged,
    Verb,
    plan,
    report_of,
)
from certrotation.rotation import Reason, Role
from etcdstorage import names, report
from etcdstorage.spec import EtcdStorage, parse
from tests.job.test_plan import (
    CLIENT_CA,
    CLIENT_CERT,
    MINUTE,
    SERVER_CERT,
    SETTINGS,
    SIGNER,
    SPEC,
    STAGING,
    T0,
    TENANT,
    Objects,
    certificate,
    keys,
    published,
    settle,
    settled_at,
    snapshot,
    staged,
    writes,
)
from tests.support.objects import etcdstorage

LEAVES: Final = [SERVER_CERT, CLIENT_CERT]


def annotated(**annotations: str) -> EtcdStorage:
    obj = etcdstorage(TENANT, **SPEC)
    obj["metadata"]["annotations"] = {
        names.GROUP + "/" + key.replace("_", "-"): value for key, value in annotations.items()
    }
    return parse(obj)


def run(objects: Objects, now: datetime, tenant: EtcdStorage, **options: Any) -> tuple[Plan, Objects]:
    planned = plan(snapshot(objects, tenant=tenant, **options), SETTINGS, now, new_key=keys())
    return planned, settle(objects, planned)


def told(planned: Plan) -> list[Any]:
    return [event for write in planned.writes for event in write.events]


def recorded(planned: Plan, unsent: dict[int, fixes.Problem] | None = None) -> report.ManualRotation:
    return report_of(planned, unsent or {}).report.manual_rotation


def settle_but(objects: Objects, planned: Plan, unsent: dict[int, fixes.Problem]) -> Objects:
    """The objects after a pass whose `unsent` writes were not written, the report of that outcome included."""
    settled = dict(objects)
    last = report_of(planned, unsent).write
    for position, write in [*enumerate(planned.writes), (len(planned.writes), last)]:
        if write is not None and position not in unsent:
            settled[write.ref] = {
                **write.body,
                "metadata": {**write.body["metadata"], "resourceVersion": f"v{position}"},
            }
    return settled


def annotation(objects: Objects, ref: kube.Ref, name: str) -> str | None:
    return (objects[ref]["metadata"].get("annotations") or {}).get(name)


def refused_write(planned: Plan, ref: kube.Ref) -> dict[int, fixes.Problem]:
    position = next(i for i, write in enumerate(planned.writes) if write.ref == ref)
    return {position: fixes.failed(ref, kube.ApiError(422, "Invalid", "denied by a policy"), "update", "c")}


# --- renew ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        pytest.param({}, [SERVER_CERT, CLIENT_CERT], id="a new value: both leaves issued anew, then the report"),
        pytest.param({SERVER_CERT: "one", CLIENT_CERT: "one"}, [], id="a value every leaf was issued for: nothing"),
        pytest.param({SERVER_CERT: "one"}, [CLIENT_CERT], id="a value one leaf was issued for: only the other"),
        pytest.param({SERVER_CERT: "zero", CLIENT_CERT: "zero"}, LEAVES, id="an older value on the leaves: both"),
    ],
)  # fmt: skip
def test_a_renew_value_reissues_each_leaf_not_issued_for_it_and_the_write_records_it(
    held: dict[kube.Ref, str], expected: list[kube.Ref]
) -> None:
    objects = settled_at(T0)
    for ref, value in held.items():
        metadata = {**objects[ref]["metadata"], "annotations": {names.ANNOTATION_RENEWED_FOR: value}}
        objects[ref] = {**objects[ref], "metadata": metadata}
    planned, after = run(objects, T0 + MINUTE, annotated(renew="one"))
    leaves = [ref for verb, ref in writes(planned) if ref in LEAVES]
    assert leaves == expected
    for ref in expected:
        assert certificate(after, ref).serial_number != certificate(objects, ref).serial_number
        assert annotation(after, ref, names.ANNOTATION_RENEWED_FOR) == "one"
        [issued] = [event for event in told(planned) if isinstance(event, CertificateIssued) and event.ref == ref]
        assert issued.reasons == (Reason.RENEW_REQUESTED,)
    assert (RotationRequested(names.ANNOTATION_RENEW, "one") in told(planned)) == bool(expected)
    assert {SIGNER, CLIENT_CA}.isdisjoint(
        ref for verb, ref in writes(planned) if verb is Verb.UPDATE and ref != CLIENT_CA
    )
    record = recorded(planned).renew
    assert record is not None
    assert record.value == "one"


def test_without_a_renew_annotation_a_leafs_old_renewed_for_is_no_request() -> None:
    objects = settled_at(T0)
    objects[CLIENT_CERT] = {
        **objects[CLIENT_CERT],
        "metadata": {**objects[CLIENT_CERT]["metadata"], "annotations": {names.ANNOTATION_RENEWED_FOR: "one"}},
    }
    planned, _ = run(objects, T0 + MINUTE, annotated())
    assert writes(planned) == []
    assert recorded(planned).renew is None


def test_a_renew_record_keeps_its_first_time_and_waits_for_every_leaf() -> None:
    objects = settled_at(T0)
    tenant = annotated(renew="one")
    planned, _ = run(objects, T0 + MINUTE, tenant)
    failed = refused_write(planned, CLIENT_CERT)
    assert recorded(planned, failed).renew is None  # one leaf not issued for it: not acted on yet
    # The client certificate's write was refused: the next pass re-issues it, and only it.
    after = settle_but(objects, planned, failed)
    again, settled = run(after, T0 + 2 * MINUTE, tenant)
    assert [ref for _, ref in writes(again) if ref in LEAVES] == [CLIENT_CERT]
    first = recorded(again).renew
    assert first is not None
    assert first.time == T0 + 2 * MINUTE
    later, _ = run(settled, T0 + 3 * MINUTE, tenant)
    assert writes(later) == []  # recorded, and its time kept
    assert recorded(later).renew == first


def test_a_renew_waits_while_the_signer_recovers_from_its_loss() -> None:
    objects = settled_at(T0)
    objects = {ref: obj for ref, obj in objects.items() if ref != SIGNER}
    planned, _ = run(objects, T0 + 5 * MINUTE, annotated(renew="one"))
    assert {SERVER_CERT, CLIENT_CERT}.isdisjoint(ref for _, ref in writes(planned))  # the new CA is not trusted yet
    assert recorded(planned).renew is None


# --- rotate-ca --------------------------------------------------------------------------------------------------------


def test_a_rotate_ca_value_stages_both_cas_once_records_it_on_the_signer_and_reports_it() -> None:
    objects = settled_at(T0)
    tenant = annotated(rotate_ca="first")
    planned, after = run(objects, T0 + MINUTE, tenant)  # the CAs are fresh: nothing else calls for a rotation
    signer_events = [event for event in told(planned) if isinstance(event, SignerChanged)]
    assert [(event.role, event.action, event.reasons) for event in signer_events] == [
        (role, "staged", (Reason.ROTATION_REQUESTED,)) for role in Role
    ]
    assert RotationRequested(names.ANNOTATION_ROTATE_CA, "first", tuple(Role)) in told(planned)
    assert annotation(after, SIGNER, names.ANNOTATION_CA_ROTATED_FOR) == "first"
    assert all(staged(after, role) and published(after, role) for role in Role)
    assert {SERVER_CERT, CLIENT_CERT}.isdisjoint(ref for _, ref in writes(planned))  # leaves wait for the promotion
    record = recorded(planned).rotateCA
    assert record is not None
    assert (record.value, record.time) == ("first", T0 + MINUTE)

    # The next passes act on nothing new: the staged CAs are kept (though the current ones are fine) and promoted
    # after the propagation delay, the leaves then issued by them; never a second staged CA.
    issuer = certificate(after, CLIENT_CERT).issuer
    quiet, after = run(after, T0 + 2 * MINUTE, tenant)
    assert writes(quiet) == []
    promoted, after = run(after, T0 + 8 * MINUTE, tenant)  # a tenth of the CAs' hour after every bundle held them
    assert [(e.role, e.action) for e in told(promoted) if isinstance(e, SignerChanged)] == [
        (role, "promoted") for role in Role
    ]
    assert certificate(after, CLIENT_CERT).issuer != issuer
    assert not any(staged(after, role) for role in Role)
    done, _ = run(after, T0 + 9 * MINUTE, tenant)
    assert writes(done) == []
    assert recorded(done).rotateCA == record


@pytest.mark.parametrize("busy", list(Role))
def test_a_role_already_rotating_takes_a_rotate_ca_request_over_and_the_other_is_staged(busy: Role) -> None:
    objects = settled_at(T0)
    # Stage `busy` as the schedule would: keep only its staged entries from a pass where both CAs came due.
    _, due = run(objects, STAGING, annotated())
    data = dict(objects[SIGNER]["data"])
    for key, value in due[SIGNER]["data"].items():
        if key.startswith(f"{busy}-signer-next"):
            data[key] = value
    objects[SIGNER] = {**objects[SIGNER], "data": data}
    planned, after = run(objects, T0 + MINUTE, annotated(rotate_ca="first"))
    other = next(role for role in Role if role is not busy)
    assert RotationRequested(names.ANNOTATION_ROTATE_CA, "first", (other,)) in told(planned)
    assert [(e.role, e.action) for e in told(planned) if isinstance(e, SignerChanged)] == [(other, "staged")]
    assert objects[SIGNER]["data"][f"{busy}-signer-next.crt"] == after[SIGNER]["data"][f"{busy}-signer-next.crt"]
    assert staged(after, other)


def test_a_rotate_ca_request_whose_signer_write_fails_is_not_recorded_and_acted_on_next_pass() -> None:
    objects = settled_at(T0)
    tenant = annotated(rotate_ca="first")
    planned, _ = run(objects, T0 + MINUTE, tenant)
    assert recorded(planned, refused_write(planned, SIGNER)).rotateCA is None
    again, after = run(objects, T0 + 2 * MINUTE, tenant)  # the signer as it was
    assert all(staged(after, role) for role in Role)
    assert recorded(again).rotateCA is not None


def test_a_signer_that_says_the_value_was_acted_on_stages_nothing_and_the_report_catches_up() -> None:
    """A pass that died after the signer write and before the report: the next one finds the CAs staged."""
    objects = settled_at(T0)
    tenant = annotated(rotate_ca="first")
    planned, _ = run(objects, T0 + MINUTE, tenant)
    died = {position: fixes.Problem(SIGNER, "killed", "") for position in range(1, len(planned.writes))}
    signer_only = settle_but(objects, planned, died)
    signer_only[CLIENT_CA] = objects[CLIENT_CA]  # died before the report
    again, after = run(signer_only, T0 + 2 * MINUTE, tenant)
    assert not [e for e in told(again) if isinstance(e, SignerChanged | RotationRequested)]
    for role in Role:  # the CAs staged then, and no other
        next_cert = rotation.signer_keys(role).next_cert
        assert after[SIGNER]["data"][next_cert] == signer_only[SIGNER]["data"][next_cert]
    record = recorded(again).rotateCA
    assert record is not None
    assert record.value == "first"


# --- What is recorded, and what is refused ------------------------------------------------------------------------


def test_a_record_in_a_report_for_another_etcdstorage_of_the_same_name_is_not_carried_over() -> None:
    objects = settled_at(T0)
    tenant = annotated(renew="one")
    _, after = run(objects, T0 + MINUTE, tenant)
    recreated = dataclasses.replace(tenant, uid="another-uid")
    planned, _ = run(after, T0 + 2 * MINUTE, recreated)
    assert planned.recorded == report.ManualRotation()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("x" * 129, "at most 128 printable characters", id="too long"),
        pytest.param("a\nb", "printable", id="a line break"),
    ],
)
def test_a_bad_annotation_value_is_refused_and_told_and_nothing_else_changes(value: str, problem: str) -> None:
    objects = settled_at(T0)
    tenant = annotated(renew=value, rotate_ca="ok")
    assert (tenant.renew, tenant.rotate_ca) == ("", "ok")
    planned, _ = run(objects, T0 + MINUTE, tenant)
    assert planned.problems == ()
    assert {SERVER_CERT, CLIENT_CERT}.isdisjoint(ref for _, ref in writes(planned))
    [refusal] = [event for event in report_of(planned, {}).events if isinstance(event, RequestRefused)]
    assert problem in refusal.problem
    assert names.ANNOTATION_RENEW in refusal.problem
    assert all(isinstance(event, NotDelivered | RequestRefused) for event in report_of(planned, {}).events)


def test_the_staged_ca_a_request_is_for_is_kept_across_passes_by_its_mark_in_the_signer() -> None:
    """The policy alone: a staged CA with nothing calling for it is discarded, unless it was staged for a request."""
    objects = settled_at(T0)
    _, after = run(objects, T0 + MINUTE, annotated(rotate_ca="first"))
    keys_of = rotation.signer_keys(Role.CLIENT)
    unmarked = {key: value for key, value in after[SIGNER]["data"].items() if key != keys_of.next_requested}
    after = {**after, SIGNER: {**after[SIGNER], "data": unmarked}}
    planned, _ = run(after, T0 + 2 * MINUTE, annotated(rotate_ca="first"))
    assert [(e.role, e.action) for e in told(planned) if isinstance(e, SignerChanged)] == [
        (Role.CLIENT, "discarded-next")
    ]
