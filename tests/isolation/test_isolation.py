"""A tenant holding its own client certificate reaches nothing outside its prefix through its tenant proxy.

Every attack of the catalogue (tests/isolation/attacks.py) runs against alpha's proxy, with the core etcd and
tenant beta as victims; a victim's own client checks afterwards that nothing of theirs changed. Attacks with the
allowlisted RPCs end isolated in the prefix, or refused outright where the proxy's request checks forbid their
shape (a range inside a Txn, a nested Txn): either way nothing foreign is read or changed.
"""

from __future__ import annotations

import grpc
import pytest

from testbed import etcdwire as wire
from testbed import proxy
from tests.isolation.attacks import (
    ALL_KEYS,
    ATTACKS,
    DENIED_MESSAGE,
    ETCD_V3_RPCS,
    PROXY_MESSAGE,
    Attack,
    Kind,
    Target,
    Verdict,
    Victims,
    status_of,
)

pytestmark = pytest.mark.real


def _of(kind: Kind) -> list[Attack]:
    return [attack for attack in ATTACKS if attack.kind is kind]


@pytest.mark.parametrize("attack", _of(Kind.KEYS), ids=lambda attack: attack.id)
def test_allowlisted_rpcs_stay_inside_the_prefix(attack: Attack, proxied: Target, victims: Victims) -> None:
    outcome = attack.run(proxied, victims)

    assert outcome.verdict in {Verdict.ISOLATED, Verdict.REFUSED}, outcome
    assert victims.damage() == []


@pytest.mark.parametrize("attack", _of(Kind.RPC), ids=lambda attack: attack.id)
def test_rpcs_off_the_allowlist_are_denied(attack: Attack, proxied: Target, victims: Victims) -> None:
    outcome = attack.run(proxied, victims)

    assert outcome.verdict is Verdict.REFUSED, outcome
    if attack.paths:  # an etcd RPC: refused by name; an HTTP/1.1 request gets no answer at all
        assert outcome.code is grpc.StatusCode.PERMISSION_DENIED, outcome
    assert victims.damage() == []


@pytest.mark.parametrize("attack", _of(Kind.IDENTITY), ids=lambda attack: attack.id)
def test_clients_other_than_the_tenants_api_server_are_refused(
    attack: Attack, proxied: Target, victims: Victims
) -> None:
    outcome = attack.run(proxied, victims)

    assert outcome.verdict is Verdict.REFUSED, outcome
    # The TLS handshake fails: no RPC is ever read, grpc reports the connection as unavailable.
    assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome


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
def test_paths_dressed_up_as_allowed_rpcs_are_denied(path: str, proxied: Target, victims: Victims) -> None:
    """Methods are compared exactly as sent: nothing is normalized into an allowed one."""
    with proxied.client() as client, pytest.raises(grpc.RpcError) as raised:
        client.unary(path, wire.range_request(*ALL_KEYS))

    code, details = status_of(raised.value)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith(PROXY_MESSAGE)
    assert DENIED_MESSAGE in details


def test_every_rpc_off_the_allowlist_is_attacked() -> None:
    """The catalogue covers every method of etcd's v3 services that the allowlist leaves out."""
    attacked = {call for attack in ATTACKS for call in attack.paths}
    missing = sorted(set(ETCD_V3_RPCS) - set(proxy.allowlist()) - attacked)

    assert missing == []
