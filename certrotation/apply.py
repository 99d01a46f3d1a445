"""Applying a plan: the only part of the job that writes to Kubernetes.

Writes go out in the plan's order. A write that fails is reported with the operator's fix, and keeps back every later
write that needs it (`plan.Write.needs`): a failed signer write stops the tenant, a failed bundle write the staged
CA's publication, while the independent writes go on. Every prefix of a plan leaves a state the next run completes
safely (the tests that kill a run after each write prove it), and a write is never sent without the ones it needs. A
write that meets a concurrent change stops the tenant's pass: it gathers and plans again from fresh reads.

Events (`record`) only describe: one that cannot be written is returned for the log and never fails the pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from certrotation import fixes, kube
from certrotation.fixes import Problem
from certrotation.kube import Kind
from certrotation.plan import Verb, Write


@dataclasses.dataclass(frozen=True)
class Applied:
    written: tuple[Write, ...]  # in order
    failures: tuple[Problem, ...] = ()  # one per failed write, with the operator's fix
    held_back: tuple[Write, ...] = ()  # not sent: a write they need failed or was held back
    stale: bool = False  # a write found its object changed (409) or gone (404) since it was read: the rest unsent
    unsent: Mapping[int, Problem] = dataclasses.field(default_factory=dict)  # position -> why it was not written
    versions: Mapping[kube.Ref, str] = dataclasses.field(default_factory=dict)  # what the writes made of each object


def writes(
    api: kube.Api, planned: Sequence[Write], namespace: str, *, versions: Mapping[kube.Ref, str] | None = None
) -> Applied:
    """Send `planned` in order; `namespace` is the controller's (its ServiceAccount is named in fixes). `versions`:
    what earlier writes of the pass made of each object, for a write that `follows` one of them."""
    written: list[Write] = []
    failures: list[Problem] = []
    held_back: list[Write] = []
    made = dict(versions or {})
    unsent: dict[int, Problem] = {}

    def applied(*, stale: bool = False) -> Applied:
        return Applied(tuple(written), tuple(failures), tuple(held_back), stale, unsent, made)

    for position, write in enumerate(planned):
        ref = write.ref
        needed = sorted(unsent.keys() & write.needs)
        if needed:
            held_back.append(write)
            root = unsent[needed[0]]
            unsent[position] = root if root.ref == ref else fixes.held_back(ref, root)
            continue
        body = _at_version(write.body, made[ref]) if write.follows else write.body
        try:
            result = _send(api, write.verb, ref, body)
        except kube.ConflictError:  # someone else wrote in between, or created what was missing when read
            return applied(stale=True)
        except kube.NotFoundError as error:
            if write.verb is Verb.UPDATE:  # deleted since it was read
                return applied(stale=True)
            failures.append(fixes.failed(ref, error, write.verb, namespace))
            unsent[position] = failures[-1]
            continue
        except kube.KubeError as error:
            failures.append(fixes.failed(ref, error, write.verb, namespace))
            unsent[position] = failures[-1]
            continue
        made[ref] = str((result.get("metadata") or {}).get("resourceVersion", ""))
        written.append(write)
    return applied()


def _send(api: kube.Api, verb: Verb, ref: kube.Ref, body: Mapping[str, Any]) -> dict[str, Any]:
    if verb is Verb.CREATE:
        return api.create(ref.kind, ref.namespace, body)
    return api.replace(ref.kind, ref.namespace, body)


def _at_version(body: Mapping[str, Any], version: str) -> dict[str, Any]:
    return {**body, "metadata": {**(body.get("metadata") or {}), "resourceVersion": version}}


# --- Events -----------------------------------------------------------------------------------------------------------


def record(api: kube.Api, events: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], kube.KubeError]]:
    """Create each Event (`certrotation.events` builds them); one of the same name, told by an earlier run within the
    Events' lifetime, has its count and lastTimestamp raised instead, as client-go's recorder does. Returns those that
    could not be written, with why."""
    failed = []
    for event in events:
        try:
            _record(api, event)
        except kube.KubeError as error:
            failed.append((event, error))
    return failed


def _record(api: kube.Api, event: Mapping[str, Any]) -> None:
    namespace, name = event["metadata"]["namespace"], event["metadata"]["name"]
    try:
        api.create(Kind.EVENT, namespace, event)
        return
    except kube.ConflictError:  # AlreadyExists: the same event again
        pass
    told = api.get(Kind.EVENT, namespace, name)
    if told is None:  # expired in between
        api.create(Kind.EVENT, namespace, event)
        return
    count = told.get("count")
    again = {
        **told,
        "count": (count if isinstance(count, int) and count > 0 else 1) + 1,
        "lastTimestamp": event["lastTimestamp"],
    }
    api.replace(Kind.EVENT, namespace, again)
