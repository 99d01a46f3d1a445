"""Applying a plan: the only part of the job that writes to Kubernetes.

Writes go out in the plan's order. A write that fails is reported with the operator's fix, and keeps back every later
write that needs it (`plan.Write.needs`): a failed signer write stops the tenant, a failed bundle write the staged
CA's publication and the report, while the independent writes go on. Every prefix of a plan leaves a state the next
run completes safely (the tests that kill a run after each write prove it), and a write is never sent without the ones
it needs. A write that meets a concurrent change stops the tenant's pass: it gathers and plans again from fresh reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from certrotation import fixes, kube
from certrotation.fixes import Problem
from certrotation.plan import Verb, Write


@dataclasses.dataclass(frozen=True)
class Applied:
    written: tuple[Write, ...]  # in order
    failures: tuple[Problem, ...] = ()  # one per failed write, with the operator's fix
    held_back: tuple[Write, ...] = ()  # not sent: a write they need failed or was held back
    stale: bool = False  # a write found its object changed (409) or gone (404) since it was read: the rest unsent


def writes(api: kube.Api, planned: Sequence[Write], namespace: str) -> Applied:
    """Send `planned` in order; `namespace` is the controller's (its ServiceAccount is named in fixes)."""
    written: list[Write] = []
    failures: list[Problem] = []
    held_back: list[Write] = []
    versions: dict[kube.Ref, str] = {}  # what this run's writes made of each object
    unsent: set[int] = set()  # positions of the writes that failed or were held back
    for position, write in enumerate(planned):
        ref = write.ref
        if unsent & write.needs:
            held_back.append(write)
            unsent.add(position)
            continue
        body = _at_version(write.body, versions[ref]) if write.follows else write.body
        try:
            result = _send(api, write.verb, ref, body)
        except kube.ConflictError:  # someone else wrote in between, or created what was missing when read
            return Applied(tuple(written), tuple(failures), tuple(held_back), stale=True)
        except kube.NotFoundError as error:
            if write.verb is Verb.UPDATE:  # deleted since it was read
                return Applied(tuple(written), tuple(failures), tuple(held_back), stale=True)
            failures.append(fixes.failed(ref, error, write.verb, namespace))
            unsent.add(position)
            continue
        except kube.KubeError as error:
            failures.append(fixes.failed(ref, error, write.verb, namespace))
            unsent.add(position)
            continue
        versions[ref] = str((result.get("metadata") or {}).get("resourceVersion", ""))
        written.append(write)
    return Applied(tuple(written), tuple(failures), tuple(held_back))


def _send(api: kube.Api, verb: Verb, ref: kube.Ref, body: Mapping[str, Any]) -> dict[str, Any]:
    if verb is Verb.CREATE:
        return api.create(ref.kind, ref.namespace, body)
    return api.replace(ref.kind, ref.namespace, body)


def _at_version(body: Mapping[str, Any], version: str) -> dict[str, Any]:
    return {**body, "metadata": {**(body.get("metadata") or {}), "resourceVersion": version}}
