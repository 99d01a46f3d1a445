"""The sync and customize hooks as pure functions: observed EtcdStorage and children in, desired state out.

No clock, environment or network: `now` and `settings` are arguments. An object whose spec it refuses gets Ready False
with the reason and its children handed back exactly as Metacontroller last applied them (`hooks.applied`), so that
`kubectl get etcdstorages` says why and nothing changes. Raises `spec.InvalidSpec` when a child cannot be handed back
so, and `TooManyObjects` for a request beyond the settings' bounds; the HTTP edge turns those into a 422, on which
Metacontroller keeps the existing children (and the status as it was).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from etcdstorage import annotated, consumers, names, report, spec
from etcdstorage.settings import Settings
from hooks import applied, children, finalize, status
from hooks.wire import (
    CONFIGMAPS,
    DEPLOYMENTS,
    DISRUPTION_BUDGETS,
    SERVICES,
    CustomizeRequest,
    CustomizeResponse,
    ObjectMap,
    RelatedResourceRule,
    SyncRequest,
    SyncResponse,
)

# While healthy, wake up at the latest when this much time has passed, to notice certificates nearing expiry.
MAX_RESYNC_SECONDS: Final = 3600.0


class TooManyObjects(ValueError):
    """`children` or `related` holds more kinds, or more objects of a kind, than `limit` allows."""

    def __init__(self, limit: int, problems: list[str]) -> None:
        self.limit, self.problems = limit, problems
        super().__init__(f"more than {limit} kinds, or objects of a kind, in children or related")


def sync(request: SyncRequest, settings: Settings, now: datetime) -> SyncResponse:
    _check_counts(request, settings.hook_max_objects_per_kind)
    try:
        tenant = spec.parse(
            {"metadata": request.parent.metadata, "spec": request.parent.spec},
            max_list_items=settings.hook_max_spec_list_items,
        )
    except spec.InvalidSpec as refusal:
        if not request.finalizing:
            return _refused(request, refusal, now)
        # A parent being deleted that the hook refuses must still go: nothing outside Kubernetes needs cleaning up,
        # and a refusal here would keep Metacontroller's finalizer on it forever.
        previous = request.parent.status if isinstance(request.parent.status, dict) else {}
        return SyncResponse(status=previous, children=[], finalized=True)
    if request.finalizing and tenant.deletion_policy is spec.DeletionPolicy.DELETE:
        where = f"{settings.namespace}/{names.client_ca_configmap(tenant.name)}"
        report_configmap = _find(request.related, CONFIGMAPS, where)
        return finalize.answer(tenant, report_configmap, settings, previous=request.parent.status, now=now)
    observed = _observe(request, tenant, settings)
    # Status describes what was observed, before the desired state is built.
    current = status.compute(tenant, observed, settings, previous=request.parent.status, now=now)
    if tenant.consumers:
        current["consumers"] = _consumers(request, tenant, settings)
    desired = children.desired(tenant, settings)
    return SyncResponse(
        status=current,
        children=desired,
        resyncAfterSeconds=_resync_after(current, observed, settings, now),
        finalized=True if request.finalizing else None,
    )


def _consumers(request: SyncRequest, tenant: spec.EtcdStorage, settings: Settings) -> list[dict[str, Any]]:
    """`status.consumers`: each consumer of the spec as the job last found it (`etcdstorage.consumers`), or waiting
    for the job; a report of a consumer since removed from the spec is not shown."""
    where = f"{settings.namespace}/{names.client_ca_configmap(tenant.name)}"
    configmap = _find(request.related, CONFIGMAPS, where)
    metadata = (configmap or {}).get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    try:
        reported = consumers.from_annotations(annotations or {}) or []
        problem = "not looked at by the cert-rotation job yet"
    except annotated.AnnotationError as error:
        reported, problem = [], str(error)
    found = {(state.kind, state.namespace, state.name): state for state in reported}
    shown = []
    for consumer in tenant.consumers:
        state = found.get((consumer.kind, consumer.namespace, consumer.name))
        if state is None:
            state = consumers.ConsumerState(
                kind=consumer.kind, namespace=consumer.namespace, name=consumer.name, problem=problem
            )
        shown.append({"apiVersion": spec.CONSUMER_API_VERSION, **state.model_dump(exclude_defaults=False)})
    return shown


def _refused(request: SyncRequest, refusal: spec.InvalidSpec, now: datetime) -> SyncResponse:
    """Ready False with the reason, and every observed child as Metacontroller last applied it: a 200 that changes
    nothing (a 422 would leave the status empty or stale, with the reason only in a SyncError event). No resync is
    asked for: only a new spec can change the answer, and a spec change triggers a sync."""
    kept = applied.kept_children(request.children)
    if kept is None:
        raise refusal  # no answer provably keeps that child: the 422 keeps it, the status waits
    generation = request.parent.metadata.get("generation")
    known = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
    refused = status.refused(refusal, previous=request.parent.status, now=now, generation=known)
    return SyncResponse(status=refused, children=kept)


def customize(request: CustomizeRequest, settings: Settings) -> CustomizeResponse:
    """Ask for the tenant's `<N>-ca-cert`, where the job reports (never for a Secret), and for the objects of its
    children's names: Metacontroller hands over only the children it controls, so this is how the sync sees an object
    of such a name that belongs to another owner. Nothing for a name no EtcdStorage can have: the sync refuses that
    object and says why in its status, which a refused customize call (Metacontroller then calls no sync) would not."""
    name = request.parent.metadata.get("name")
    if spec.name_problems(name):
        return CustomizeResponse(relatedResources=[])
    assert isinstance(name, str)
    namespace = settings.namespace
    proxy = [names.proxy_name(name)]
    return CustomizeResponse(
        relatedResources=[
            RelatedResourceRule(
                apiVersion="v1", resource="configmaps", namespace=namespace, names=[names.client_ca_configmap(name)]
            ),
            RelatedResourceRule(apiVersion="apps/v1", resource="deployments", namespace=namespace, names=proxy),
            RelatedResourceRule(apiVersion="v1", resource="services", namespace=namespace, names=proxy),
            RelatedResourceRule(
                apiVersion="policy/v1", resource="poddisruptionbudgets", namespace=namespace, names=proxy
            ),
            # The job's record of its runs: exported as metrics (hooks/metrics.py), not a part of the status.
            RelatedResourceRule(
                apiVersion="v1", resource="configmaps", namespace=namespace, names=[names.JOB_STATUS_CONFIGMAP]
            ),
        ]
    )


def _observe(request: SyncRequest, tenant: spec.EtcdStorage, settings: Settings) -> status.Observed:
    key = f"{settings.namespace}/{names.proxy_name(tenant.name)}"
    where = f"{settings.namespace}/{names.client_ca_configmap(tenant.name)}"
    configmap = _find(request.related, CONFIGMAPS, where)
    certificates, error, foreign_report = None, "", None
    if configmap is not None and not _belongs(configmap, tenant.uid):
        foreign_report = status.Foreign("ConfigMap", where, _owners(configmap))
    elif configmap is not None:
        metadata = configmap.get("metadata")
        annotations = (metadata.get("annotations") if isinstance(metadata, dict) else None) or {}
        try:
            certificates = report.from_annotations(annotations)
        except report.ReportError as failure:
            error = str(failure)
    found = {kind: _find(request.children, kind, key) for kind in (DEPLOYMENTS, SERVICES, DISRUPTION_BUDGETS)}
    # Asked for by name as related objects too: one there but not among the children is someone else's.
    foreign = tuple(
        status.Foreign(kind.split(".", 1)[0], key, _owners(other))
        for kind, child in found.items()
        if child is None and (other := _find(request.related, kind, key)) is not None
    )
    return status.Observed(
        deployment=found[DEPLOYMENTS],
        service=found[SERVICES],
        disruption_budget=found[DISRUPTION_BUDGETS],
        certificates=certificates,
        certificates_error=error,
        foreign=foreign,
        foreign_report=foreign_report,
    )


def _owners(obj: dict[str, Any]) -> tuple[str, ...]:
    """The uids of the EtcdStorages `obj` names as owners, sorted."""
    metadata = obj.get("metadata")
    references = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    return tuple(
        sorted(
            reference["uid"]
            for reference in (references if isinstance(references, list) else [])
            if isinstance(reference, dict)
            and reference.get("kind") == names.KIND
            and reference.get("apiVersion") == names.API_VERSION
            and isinstance(reference.get("uid"), str)
        )
    )


def _belongs(report_configmap: dict[str, Any], uid: str) -> bool:
    """Whether `<N>-ca-cert` reports for this EtcdStorage: the job adds each tenant's ownerReference before it reports,
    so one that names EtcdStorages but not this one was written for an earlier EtcdStorage of the same name. One that
    names none (made by hand) is read as it is."""
    owners = _owners(report_configmap)
    return not owners or uid in owners


def _check_counts(request: SyncRequest, limit: int) -> None:
    """Refuse a request no Metacontroller sends: it asks for three child kinds and one ConfigMap, and the hook names
    one child of each kind. Checked before anything reads the maps, so that no answer is built from them."""
    problems = []
    for field, maps in (("children", request.children), ("related", request.related)):
        if len(maps) > limit:
            problems.append(f"{field}: {len(maps)} kinds, more than {limit}")
        for kind, found in maps.items():
            if len(found) > limit:
                problems.append(f"{field}.{kind}: {len(found)} objects, more than {limit}")
    if problems:
        raise TooManyObjects(limit, problems)


def _find(objects: dict[str, ObjectMap], kind: str, key: str) -> dict[str, Any] | None:
    found = objects.get(kind, {}).get(key)
    return found if isinstance(found, dict) else None


def _resync_after(current: dict[str, Any], observed: status.Observed, settings: Settings, now: datetime) -> float:
    if not status.is_ready(current):
        return float(settings.waiting_resync_seconds)
    assert observed.certificates is not None  # ready implies a report
    first_expiry = min(times.notAfter for times in observed.certificates.certificates.values())
    return max(1.0, min(MAX_RESYNC_SECONDS, (first_expiry - now).total_seconds()))
