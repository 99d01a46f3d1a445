"""A tenant holding its own client certificate reaches nothing outside its prefix through its guard.

Every attack of the catalogue (tests/isolation/attacks.py) runs against alpha's guard, with the core etcd and
tenant beta as victims; a victim's own client checks afterwards that nothing of theirs changed.
"""

from __future__ import annotations

import grpc
import pytest

from hooks import guard
from tests.isolation.attacks import ALL_KEYS, ATTACKS, ETCD_V3_RPCS, Attack, Kind, Target, Verdict, Victims, status_of
from tests.support import etcdwire as wire

pytestmark = pytest.mark.real


def _of(kind: Kind) -> list[Attack]:
    return [attack for attack in ATTACKS if attack.kind is kind]


@pytest.mark.parametrize("attack", _of(Kind.KEYS), ids=lambda attack: attack.id)
def test_allowlisted_rpcs_stay_inside_the_prefix(attack: Attack, guarded: Target, victims: Victims) -> None:
    outcome = attack.run(guarded, victims)

    assert outcome.verdict is Verdict.ISOLATED, outcome
    assert victims.damage() == []


@pytest.mark.parametrize("attack", _of(Kind.RPC), ids=lambda attack: attack.id)
def test_rpcs_off_the_allowlist_are_denied(attack: Attack, guarded: Target, victims: Victims) -> None:
    outcome = attack.run(guarded, victims)

    assert outcome.verdict is Verdict.REFUSED, outcome
    assert outcome.code is grpc.StatusCode.PERMISSION_DENIED, outcome
    assert victims.damage() == []


@pytest.mark.parametrize("attack", _of(Kind.IDENTITY), ids=lambda attack: attack.id)
def test_clients_other_than_the_tenants_api_server_are_refused(
    attack: Attack, guarded: Target, victims: Victims
) -> None:
    outcome = attack.run(guarded, victims)

    assert outcome.verdict is Verdict.REFUSED, outcome
    assert outcome.code is grpc.StatusCode.UNAUTHENTICATED, outcome
    assert guard.UNAUTHENTICATED_MESSAGE[:40] in outcome.detail


@pytest.mark.parametrize(
    "path",
    [
        "/etcdserverpb.Maintenance/Snapshot/../../etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Range/../../etcdserverpb.Maintenance/Status/../Snapshot",
        "//etcdserverpb.KV/Range",
        "/etcdserverpb.KV//Range",
        "/etcdserverpb.KV/Rang%65",
        "/etcdserverpb.KV/Range?",
        "/etcdserverpb.kv/range",
        "/v3/kv/range",
    ],
    ids=[
        "a denied path that normalizes to an allowed one",
        "an allowed path that normalizes to a denied one",
        "a doubled leading slash",
        "a doubled inner slash",
        "a percent-encoded letter",
        "an empty query string",
        "the wrong case",
        "the JSON gateway path",
    ],
)
def test_paths_dressed_up_as_allowed_rpcs_are_denied(path: str, guarded: Target, victims: Victims) -> None:
    """The guard compares the raw path it forwards, not nginx's normalized URI."""
    with guarded.client() as client, pytest.raises(grpc.RpcError) as raised:
        client.unary(path, wire.range_request(*ALL_KEYS))

    assert status_of(raised.value) == (grpc.StatusCode.PERMISSION_DENIED, guard.DENIED_MESSAGE)


def test_every_rpc_off_the_allowlist_is_attacked() -> None:
    """The catalogue covers every method of etcd's v3 services that the allowlist leaves out."""
    attacked = {call for attack in ATTACKS for call in attack.paths}
    missing = sorted(set(ETCD_V3_RPCS) - set(guard.ALLOWED_RPCS) - attacked)

    assert missing == []
