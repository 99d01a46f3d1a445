"""Manual rotation end to end on the in-memory FAKE API (tests/job/fake.py): the EtcdStorage's renew and rotate-ca
annotations are acted on once per value, also by a run killed after any of its writes, and a rotation already in
progress takes a rotate-ca request over; every consumer keeps a working connection throughout."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from certrotation import events, job, pki
from etcdstorage import names
from etcdstorage.settings import Settings
from tests.job.fake import Crash
from tests.job.world import T0, TENANT, World, captured_logs, connects, lines, new_world

MINUTE = timedelta(minutes=1)
# CAs of an hour (renewal due at 40 minutes; a staged CA signs 6 minutes after every bundle holds it), leaves of 30.
SPEC: dict[str, Any] = {
    "signingCertificateValidity": "60m",
    "servingCertificateValidity": "30m",
    "clientCertificateValidity": "30m",
}


def annotate(world: World, annotation: str, value: str) -> None:
    world.api.etcdstorages[TENANT]["metadata"].setdefault("annotations", {})[annotation] = value


def serials(world: World) -> tuple[int, int]:
    """The proxies' serving certificate and the API server's client certificate in place."""
    return (
        pki.parse_certs(world.proxy().server_cert)[0].serial_number,
        pki.parse_certs(world.apiserver().client_cert)[0].serial_number,
    )


def cas(world: World) -> set[bytes]:
    """Every CA certificate either bundle holds."""
    bundles = (world.proxy().client_ca, world.apiserver().serving_ca)
    return {ca.tbs_certificate_bytes for bundle in bundles for ca in pki.parse_certs(bundle)}


def copy_of(world: World) -> World:
    return dataclasses.replace(world, api=copy.deepcopy(world.api))


def writes_of_a_run(world: World, now: datetime) -> int:
    probe = copy_of(world)
    probe.run(now)
    return len(probe.api.writes) - len(world.api.writes)


def settled() -> World:
    world = new_world(settings=Settings(ca_propagation_delay=MINUTE), **SPEC)
    assert world.run(T0) == job.EXIT_OK
    return world


# --- Once per value ---------------------------------------------------------------------------------------------------


def test_a_renew_value_reissues_every_leaf_once_and_a_new_value_again() -> None:
    world = settled()
    first = serials(world)
    annotate(world, names.ANNOTATION_RENEW, "2030-01-01T00:01:00Z")
    with captured_logs() as logs:
        assert world.run(T0 + MINUTE) == job.EXIT_OK
    second = serials(world)
    assert all(before != after for before, after in zip(first, second, strict=True))
    assert all("reasons=renew-requested" in line for line in lines(logs, "certificate issued"))
    assert connects(world.proxy(), world.apiserver(), T0 + MINUTE) is None
    record = world.report().manual_rotation.renew
    assert record is not None
    assert (record.value, record.time) == ("2030-01-01T00:01:00Z", T0 + MINUTE)
    assert world.reasons()[events.RENEW_REQUESTED] == 1

    assert writes_of_a_run(world, T0 + 2 * MINUTE) == 0  # acted on: nothing again
    world.run(T0 + 2 * MINUTE)
    assert serials(world) == second

    annotate(world, names.ANNOTATION_RENEW, "2030-01-01T00:03:00Z")
    assert world.run(T0 + 3 * MINUTE) == job.EXIT_OK
    assert all(before != after for before, after in zip(second, serials(world), strict=True))
    assert world.reasons()[events.RENEW_REQUESTED] == 2


def test_a_rotate_ca_value_rotates_both_cas_with_overlap_once_and_nobody_loses_a_connection() -> None:
    world = settled()
    held = (world.proxy(), world.apiserver())  # consumers that never reload
    before = cas(world)
    issuers = {pki.parse_certs(world.apiserver().client_cert)[0].issuer}
    annotate(world, names.ANNOTATION_ROTATE_CA, "first")
    proxy, apiserver = held
    for minute in range(1, 15):
        now = T0 + minute * MINUTE
        assert world.run(now) == job.EXIT_OK, f"minute {minute}"
        assert connects(proxy, apiserver, now) is None, f"minute {minute}"
        proxy, apiserver = world.proxy(), world.apiserver()  # both reload every minute
        assert connects(proxy, apiserver, now) is None, f"minute {minute}, reloaded"
        issuers.add(pki.parse_certs(world.apiserver().client_cert)[0].issuer)
    assert len(cas(world) - before) == 2  # one new CA per role, and no other
    assert len(issuers) == 2  # the leaves moved to the new client CA once
    # An API server that reloaded its bundle but still holds its client certificate from before: the old client CA
    # stays trusted until it expires.
    reloaded_bundle_only = dataclasses.replace(held[1], serving_ca=world.apiserver().serving_ca)
    assert connects(world.proxy(), reloaded_bundle_only, T0 + 14 * MINUTE) is None
    reasons = world.reasons()
    assert (reasons[events.CA_ROTATION_REQUESTED], reasons[events.CA_STAGED], reasons[events.CA_PROMOTED]) == (1, 2, 2)
    record = world.report().manual_rotation.rotateCA
    assert record is not None
    assert (record.value, record.time) == ("first", T0 + MINUTE)


def test_a_rotation_in_progress_takes_a_rotate_ca_request_over() -> None:
    world = settled()
    assert world.run(T0 + 41 * MINUTE) == job.EXIT_OK  # both CAs due: staged by the schedule
    staged = cas(world)
    annotate(world, names.ANNOTATION_ROTATE_CA, "during")
    assert world.run(T0 + 42 * MINUTE) == job.EXIT_OK
    assert cas(world) == staged  # no second staged CA
    [told] = [event for event in world.events() if event["reason"] == events.CA_ROTATION_REQUESTED]
    assert (
        "serving CA and client CA rotation already in progress (or recovery) takes the request over" in told["message"]
    )
    for minute in range(43, 50):
        assert world.run(T0 + minute * MINUTE) == job.EXIT_OK
    assert world.reasons()[events.CA_PROMOTED] == 2
    assert world.reasons()[events.CA_STAGED] == 2  # the schedule's only
    assert writes_of_a_run(world, T0 + 50 * MINUTE) == 0


def test_a_bad_value_is_a_warning_event_and_status_problem_and_the_certificates_go_on() -> None:
    world = settled()
    annotate(world, names.ANNOTATION_ROTATE_CA, "x" * 500)
    first = serials(world)
    assert world.run(T0 + 21 * MINUTE) == job.EXIT_OK  # the leaves are due: renewed as ever
    assert serials(world) != first
    [told] = [event for event in world.events() if event["reason"] == events.ROTATION_REQUEST_REFUSED]
    assert told["type"] == events.WARNING
    assert names.ANNOTATION_ROTATE_CA in told["message"]
    assert "x" * 100 not in told["message"]  # quoted cut short
    assert world.report().manual_rotation.rotateCA is None


# --- Killed half-way --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("annotation", [names.ANNOTATION_RENEW, names.ANNOTATION_ROTATE_CA])
def test_a_run_killed_after_any_write_of_a_request_never_acts_on_it_harmfully_twice(annotation: str) -> None:
    """Re-issuing a leaf twice is harmless, and may happen; staging a second CA is not, and never does."""
    world = settled()
    annotate(world, annotation, "once")
    now, later = T0 + MINUTE, T0 + MINUTE + timedelta(seconds=30)
    total = writes_of_a_run(world, now)
    assert total >= 3
    before = cas(world)
    for crash_after in range(total):
        trial = copy_of(world)
        held = (trial.proxy(), trial.apiserver())
        trial.api.crash_after = crash_after
        with pytest.raises(Crash):
            trial.run(now)
        assert connects(*held, now) is None, f"crash after write {crash_after}"
        trial.api.crash_after = None
        assert trial.run(later) == job.EXIT_OK
        assert writes_of_a_run(trial, later + MINUTE) == 0, f"crash after write {crash_after}: not settled"
        assert connects(trial.proxy(), trial.apiserver(), later) is None, f"crash after write {crash_after}"
        assert connects(trial.proxy(), held[1], later) is None, f"crash after write {crash_after}"
        record = getattr(
            trial.report().manual_rotation, "renew" if annotation == names.ANNOTATION_RENEW else "rotateCA"
        )
        assert record is not None, f"crash after write {crash_after}"
        assert record.value == "once"
        if annotation == names.ANNOTATION_ROTATE_CA:
            assert len(cas(trial) - before) == 2, f"crash after write {crash_after}: one staged CA per role"
            for minute in range(3, 12):  # the rotation completes, and nothing rotates again
                trial.run(T0 + minute * MINUTE)
            assert len(cas(trial) - before) == 2, f"crash after write {crash_after}"
            assert trial.reasons()[events.CA_PROMOTED] == 2
        else:
            assert all(a != b for a, b in zip(serials(world), serials(trial), strict=True))
