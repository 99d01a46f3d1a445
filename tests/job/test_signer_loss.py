"""Losing `<N>-signer` is recovered with overlap, loudly, on the in-memory FAKE API (tests/job/fake.py): a new CA is
staged next to the CA certificates the bundles still hold, the certificates in place keep working, the new CA signs
only after every bundle held it for the propagation delay, and until then every run logs an error, tells a SignerLost
Event, reports it to the hook and exits non-zero."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from certrotation import events, job, kube, pki, rotation
from certrotation.rotation import Role
from etcdstorage import names
from etcdstorage.settings import Settings
from etcdstorage.spec import KeyAlgorithm
from tests.job.world import T0, TENANT, C, World, captured_logs, connects, lines, new_world

MINUTE = timedelta(minutes=1)
# CAs of an hour (renewal due at 40 minutes), leaves of 30 minutes (due at 20); a staged CA waits at least 6 minutes.
SPEC: dict[str, Any] = {
    "signingCertificateValidity": "60m",
    "servingCertificateValidity": "30m",
    "clientCertificateValidity": "30m",
}
SIGNER = (kube.Kind.SECRET, C, names.signer_secret(TENANT))


def deleted(world: World) -> None:
    del world.api.objects[SIGNER]


def garbage(world: World) -> None:
    signer = world.api.object(*SIGNER)
    signer["data"] = {key: base64.b64encode(b"not a PEM").decode() for key in signer["data"]}
    world.api.put(*SIGNER, signer)


def key_removed(role: Role) -> Callable[[World], None]:
    def remove(world: World) -> None:
        signer = world.api.object(*SIGNER)
        del signer["data"][rotation.signer_keys(role).key]
        world.api.put(*SIGNER, signer)

    return remove


DAMAGE = {
    "deleted": (deleted, set(Role)),
    "filled with garbage": (garbage, set(Role)),
    "the serving CA's key removed": (key_removed(Role.SERVING), {Role.SERVING}),
    "the client CA's key removed": (key_removed(Role.CLIENT), {Role.CLIENT}),
}


def issuers(world: World) -> dict[Role, str]:
    """Who signed the leaves in place: the serving CA the proxies' certificate, the client CA the API server's."""
    server = pki.parse_certs(world.proxy().server_cert)[0]
    client = pki.parse_certs(world.apiserver().client_cert)[0]
    return {Role.SERVING: server.issuer.rfc4514_string(), Role.CLIENT: client.issuer.rfc4514_string()}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_lost_signer_is_recovered_with_overlap_and_loudly_and_nobody_loses_a_connection(damage: str) -> None:
    damaging, lost = DAMAGE[damage]
    world = new_world(settings=Settings(ca_propagation_delay=MINUTE), **SPEC)
    assert world.run(T0) == job.EXIT_OK
    held = (world.proxy(), world.apiserver())  # consumers that never reload
    before = issuers(world)
    damaging(world)

    with captured_logs() as logs:
        assert world.run(T0 + 5 * MINUTE) == job.EXIT_FAILURES
    assert {line.split("role=")[1].split()[0] for line in lines(logs, "signer lost: recovering with overlap")} == {
        str(role) for role in lost
    }
    assert all("level=error" in line for line in lines(logs, "signer lost: recovering with overlap"))
    assert world.reasons()[events.SIGNER_LOST] == len(lost)
    assert world.report().signer_lost
    assert issuers(world) == before  # nothing re-keyed: the leaves in place still serve
    assert connects(*held, T0 + 5 * MINUTE) is None
    assert connects(world.proxy(), world.apiserver(), T0 + 5 * MINUTE) is None
    for bundle in (world.proxy().client_ca, world.apiserver().serving_ca):
        assert len(pki.parse_certs(bundle)) in (1, 2)
    if Role.CLIENT in lost:
        assert len(pki.parse_certs(world.proxy().client_ca)) == 2  # the new CA next to the lost one
    if Role.SERVING in lost:
        assert len(pki.parse_certs(world.apiserver().serving_ca)) == 2

    # Minute by minute: the API server reloads every few minutes, the proxies load each run's files.
    proxy, apiserver = world.proxy(), world.apiserver()
    codes = []
    for minute in range(6, 20):
        now = T0 + minute * MINUTE
        codes.append(world.run(now))
        assert connects(proxy, apiserver, now + timedelta(seconds=30)) is None, f"minute {minute}"
        proxy = world.proxy()
        if minute % 3 == 0:
            apiserver = world.apiserver()
        assert connects(proxy, apiserver, now + timedelta(seconds=30)) is None, f"minute {minute}, after the roll"
    # The recovery completes once the staged CA was held for the delay; then the job is quiet again.
    assert codes[0] == job.EXIT_FAILURES
    assert codes[-1] == job.EXIT_OK
    recovered = codes.index(job.EXIT_OK)
    assert codes[recovered:] == [job.EXIT_OK] * (len(codes) - recovered)
    assert world.report().signer_lost == ""
    after = issuers(world)
    assert {role for role in Role if after[role] != before[role]} == lost  # re-issued from the new CA, only now
    # An API server that reloaded its bundle but still holds its client certificate from before the loss: trusted.
    reloaded_bundle_only = dataclasses.replace(held[1], serving_ca=world.apiserver().serving_ca)
    assert connects(world.proxy(), reloaded_bundle_only, T0 + 19 * MINUTE) is None
    assert world.reasons()[events.CA_PROMOTED] == len(lost)


def test_a_lost_signer_of_a_tenant_whose_bundles_hold_nothing_valid_is_issued_anew_quietly() -> None:
    world = new_world(**SPEC)
    assert world.run(T0) == job.EXIT_OK
    deleted(world)
    with captured_logs() as logs:
        assert world.run(T0 + 2 * timedelta(hours=1)) == job.EXIT_OK  # everything expired: nothing to overlap with
    assert lines(logs, "signer lost: recovering with overlap") == []
    assert connects(world.proxy(), world.apiserver(), T0 + 2 * timedelta(hours=1)) is None


def test_a_valid_foreign_certificate_in_a_destination_is_replaced_and_told() -> None:
    world = new_world()
    foreign_ca = pki.new_ca("someone-else", now=T0, validity=timedelta(days=30), algorithm=KeyAlgorithm.ECDSA_P256)
    foreign = pki.new_client_cert(
        foreign_ca, "apiserver", now=T0, validity=timedelta(days=30), algorithm=KeyAlgorithm.ECDSA_P256
    )
    world.run(T0)
    secret = world.api.object(kube.Kind.SECRET, "k8s-sample-apiserver", "etcd-client-cert")
    secret["data"] = {
        names.TLS_CRT: base64.b64encode(foreign.cert_pem).decode(),
        names.TLS_KEY: base64.b64encode(foreign.key_pem).decode(),
    }
    world.api.put(kube.Kind.SECRET, "k8s-sample-apiserver", "etcd-client-cert", secret)
    with captured_logs() as logs:
        assert world.run(T0 + MINUTE) == job.EXIT_OK
    [line] = lines(logs, "certificate issued")
    assert "reasons=not-signed-by-current-ca,foreign-issuer" in line
    assert 'replaced_issuer="CN=someone-else"' in line
    assert "level=warning" in line
    [told] = [event for event in world.events() if event["reason"] == events.FOREIGN_CERTIFICATE_REPLACED]
    assert told["type"] == events.WARNING
    assert "issued by CN=someone-else" in told["message"]
    assert connects(world.proxy(), world.apiserver(), T0 + MINUTE) is None
