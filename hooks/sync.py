"""The sync and customize hooks as pure functions: observed EtcdStorage and children in, desired state out.

No clock, environment or network: `now` and `settings` are arguments. Raises `spec.InvalidSpec` for an object it
refuses and `TooManyObjects` for a request beyond the settings' bounds; the HTTP edge turns those into a 422 so that
Metacontroller keeps the existing children.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from etcdstorage import names, report, spec
from etcdstorage.settings import Settings
from hooks import children, status
from hooks.wire import (
    CONFIGMAPS,
    DEPLOYMENTS,
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
        _check_spec_lists(request, settings.hook_max_spec_list_items)
        tenant = spec.parse({"metadata": request.parent.metadata, "spec": request.parent.spec})
    except spec.InvalidSpec:
        if not request.finalizing:
            raise
        # A parent being deleted that the hook refuses must still go: nothing outside Kubernetes needs cleaning up,
        # and a refusal here would keep Metacontroller's finalizer on it forever.
        previous = request.parent.status if isinstance(request.parent.status, dict) else {}
        return SyncResponse(status=previous, children=[], finalized=True)
    observed = _observe(request, tenant.name, settings)
    # Status describes what was observed, before the desired state is built.
    current = status.compute(tenant, observed, settings, previous=request.parent.status, now=now)
    desired = children.desired(tenant, settings)
    return SyncResponse(
        status=current,
        children=desired,
        resyncAfterSeconds=_resync_after(current, observed, settings, now),
        finalized=True if request.finalizing else None,
    )


def customize(request: CustomizeRequest, settings: Settings) -> CustomizeResponse:
    """Ask for the tenant's `<N>-ca-cert`, where the job reports; never for a Secret."""
    name = request.parent.metadata.get("name")
    problems = spec.name_problems(name)
    if problems:
        raise spec.InvalidSpec(str(name or ""), [spec.Problem("metadata.name", p) for p in problems])
    assert isinstance(name, str)
    rule = RelatedResourceRule(
        apiVersion="v1", resource="configmaps", namespace=settings.namespace, names=[names.client_ca_configmap(name)]
    )
    return CustomizeResponse(relatedResources=[rule])


def _observe(request: SyncRequest, tenant: str, settings: Settings) -> status.Observed:
    key = f"{settings.namespace}/{names.proxy_name(tenant)}"
    configmap = _find(request.related, CONFIGMAPS, f"{settings.namespace}/{names.client_ca_configmap(tenant)}")
    certificates, error = None, ""
    if configmap is not None:
        metadata = configmap.get("metadata")
        annotations = (metadata.get("annotations") if isinstance(metadata, dict) else None) or {}
        try:
            certificates = report.from_annotations(annotations)
        except report.ReportError as failure:
            error = str(failure)
    return status.Observed(
        deployment=_find(request.children, DEPLOYMENTS, key),
        service=_find(request.children, SERVICES, key),
        certificates=certificates,
        certificates_error=error,
    )


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


def _check_spec_lists(request: SyncRequest, limit: int) -> None:
    """Refuse a spec list longer than `limit` as one problem, before `spec.parse` names a problem for every item (a
    million items made a million problems). The CRD allows 32 destinations per list."""
    fields = request.parent.spec if isinstance(request.parent.spec, dict) else {}
    problems = [
        spec.Problem(f"spec.{field}", f"must hold at most {limit} items, got {len(value)}")
        for field, value in fields.items()
        if isinstance(value, list) and len(value) > limit
    ]
    if problems:
        name = request.parent.metadata.get("name")
        raise spec.InvalidSpec(name if isinstance(name, str) else "", problems)


def _find(objects: dict[str, ObjectMap], kind: str, key: str) -> dict[str, Any] | None:
    found = objects.get(kind, {}).get(key)
    return found if isinstance(found, dict) else None


def _resync_after(current: dict[str, Any], observed: status.Observed, settings: Settings, now: datetime) -> float:
    if not status.is_ready(current):
        return float(settings.waiting_resync_seconds)
    assert observed.certificates is not None  # ready implies a report
    first_expiry = min(times.notAfter for times in observed.certificates.certificates.values())
    return max(1.0, min(MAX_RESYNC_SECONDS, (first_expiry - now).total_seconds()))
