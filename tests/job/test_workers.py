"""Tenants' passes overlap (ETCDSTORAGE_JOB_WORKERS): the same certificates, writes and exit code as one at a time,
over the fake API (thread-safe for this: each tenant writes only its own objects)."""

from __future__ import annotations

from datetime import timedelta

from certrotation import job, kube
from tests.job.world import T0, World, connects, new_world

TENANTS = [f"tenant-{index:02d}" for index in range(24)]


def world_of_many(workers: int) -> World:
    world = new_world()
    world.workers = workers
    for name in TENANTS:
        world.add_tenant(name, f"ns-{name}")
    return world


def test_overlapping_passes_deliver_what_one_at_a_time_delivers() -> None:
    one, eight = world_of_many(1), world_of_many(8)
    for world in (one, eight):
        assert world.run(T0) == job.EXIT_OK
    # Every object, and as many Events (named after each world's own uids).
    assert sorted(key for key in one.api.objects if key[0] is not kube.Kind.EVENT) == sorted(
        key for key in eight.api.objects if key[0] is not kube.Kind.EVENT
    )
    assert sum(key[0] is kube.Kind.EVENT for key in one.api.objects) == sum(
        key[0] is kube.Kind.EVENT for key in eight.api.objects
    )
    assert len(eight.api.writes) == len(one.api.writes)
    for name in TENANTS:
        assert connects(eight.proxy(name), eight.apiserver(f"ns-{name}"), T0, tenant=name) is None
    # And a later pass with nothing due writes nothing, overlapping or not.
    written = len(eight.api.writes)
    assert eight.run(T0 + timedelta(minutes=1)) == job.EXIT_OK
    assert len(eight.api.writes) == written
