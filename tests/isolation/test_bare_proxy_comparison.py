"""The same attacks against a bare grpc-proxy (TLS and client certificates checked by the grpc-proxy itself, as
the original project deployed it) and against the tenant proxy, side by side.

The bare column proves the attacks detect a hole when there is one; the tenant proxy's column must be all refusals
and isolation.
"""

from __future__ import annotations

import grpc
import pytest

from tests.isolation.attacks import ATTACKS, Kind, Outcome, Target, Verdict, Victims

pytestmark = pytest.mark.real


def test_the_tenant_proxy_closes_every_hole_a_bare_grpc_proxy_leaves_open(
    bare: Target, proxied: Target, victims: Victims, capsys: pytest.CaptureFixture[str]
) -> None:
    results: dict[str, tuple[Outcome, Outcome]] = {
        attack.id: (attack.run(bare, victims), attack.run(proxied, victims)) for attack in ATTACKS
    }

    width = max(len(attack_id) for attack_id in results)
    lines = [
        f"{'attack':<{width}} | {'bare grpc-proxy':<62} | tenant proxy",
        f"{'-' * width}-+-{'-' * 62}-+-{'-' * 40}",
    ]
    lines += [
        f"{attack_id:<{width}} | {str(bare_outcome)[:62]:<62} | {proxy_outcome}"
        for attack_id, (bare_outcome, proxy_outcome) in results.items()
    ]
    leaked = sum(bare_outcome.verdict is Verdict.LEAKED for bare_outcome, _ in results.values())
    reached = sum(bare_outcome.verdict is Verdict.REACHED for bare_outcome, _ in results.values())
    lines.append(
        f"bare grpc-proxy: {leaked} attacks leaked or changed foreign data, {reached} more reached the core etcd"
    )
    with capsys.disabled():
        print("\n" + "\n".join(lines))

    kinds = {attack.id: attack.kind for attack in ATTACKS}
    for attack_id, (_, proxy_outcome) in results.items():
        expected = {Verdict.ISOLATED, Verdict.REFUSED} if kinds[attack_id] is Kind.KEYS else {Verdict.REFUSED}
        assert proxy_outcome.verdict in expected, f"{attack_id}: {proxy_outcome}"
    snapshot, _ = results["tenant cannot download a snapshot of the core etcd"]
    assert snapshot.verdict is Verdict.LEAKED, snapshot
    assert "secrets included" in snapshot.detail
    assert snapshot.code is None  # the bare proxy answered: no gRPC error at all
    assert results["tenant cannot download a snapshot of the core etcd"][1].code is grpc.StatusCode.PERMISSION_DENIED
    assert victims.damage() == []
