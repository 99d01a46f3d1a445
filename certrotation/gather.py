"""Gathering: what one pass of the job reads of Kubernetes, read once, as the snapshots `certrotation.plan` plans from.

The controller namespace is read once a pass, by a LIST of its ConfigMaps and one of its Secrets; destinations (in
the API servers' namespaces) by GET. A read that fails is kept in the snapshot as its error: what it means for the
tenant is the plan's decision. Writes nothing, decides nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from certrotation import kube
from certrotation.kube import Kind, Ref
from certrotation.plan import Core, Observed, Snapshot, destination_refs
from etcdstorage import names
from etcdstorage.settings import Settings
from etcdstorage.spec import Destination, EtcdStorage

# The controller namespace's ConfigMaps and Secrets by (kind, name), as the pass's LISTs gave them (resourceVersions
# included).
Listed = Mapping[tuple[Kind, str], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Unlisted:
    """The controller namespace's objects of `kind` could not be listed: the pass reads each object by GET."""

    kind: Kind
    error: kube.KubeError


def controller_namespace(api: kube.Api, namespace: str) -> Listed | Unlisted:
    """Every ConfigMap and Secret of the controller namespace, read at the start of the pass: two paged LISTs instead
    of three GETs per tenant."""
    listed: dict[tuple[Kind, str], dict[str, Any]] = {}
    for kind in (Kind.CONFIGMAP, Kind.SECRET):
        try:
            items = kube.list_all(api, kind, namespace)
        except kube.KubeError as error:
            return Unlisted(kind, error)
        for item in items:
            listed[(kind, str((item.get("metadata") or {}).get("name", "")))] = item
    return listed


def core_objects(api: kube.Api, settings: Settings, listed: Listed | None) -> tuple[Observed, Observed]:
    """The core etcd's CA ConfigMap and client certificate Secret (whose key the job never uses)."""
    namespace = settings.namespace
    return (
        read(api, Ref(Kind.CONFIGMAP, namespace, settings.core_ca_configmap), listed),
        read(api, Ref(Kind.SECRET, namespace, settings.core_cert_secret), listed),
    )


def tenant(
    api: kube.Api,
    settings: Settings,
    storage: EtcdStorage,
    core: Core,
    listed: Listed | None,
    *,
    owners: Mapping[Ref, str] | None = None,
) -> Snapshot:
    """Everything a tenant's pass needs. `listed` None: the controller namespace's objects too are read by GET (as
    when a write met a concurrent change, to see them as they are now). `owners`: the EtcdStorage each destination
    is written for (`plan.destination_owners`); a destination another one owns is not read."""
    namespace, name = settings.namespace, storage.name
    claimed = {ref: owner for ref in destination_refs(storage) if (owner := (owners or {}).get(ref, name)) != name}

    def owned(kind: Kind, object_name: str) -> Observed:
        return read(api, Ref(kind, namespace, object_name), listed)

    def mine(ref: Ref) -> Observed:
        """A destination, unless another EtcdStorage owns it: nothing of it is this tenant's to read."""
        return Observed(ref, None) if ref in claimed else read(api, ref, None)

    return Snapshot(
        tenant=storage,
        signer=owned(Kind.SECRET, names.signer_secret(name)),
        client_ca=owned(Kind.CONFIGMAP, names.client_ca_configmap(name)),
        server_cert=owned(Kind.SECRET, names.server_cert_secret(name)),
        serving_ca_destinations=tuple(mine(destination(Kind.CONFIGMAP, where)) for where in storage.ca_cert_configmaps),
        client_cert_destinations=tuple(mine(destination(Kind.SECRET, where)) for where in storage.client_cert_secrets),
        core=core,
        claimed=claimed,
    )


def destination(kind: Kind, where: Destination) -> Ref:
    return Ref(kind, where.namespace, where.name, destination=True)


def read(api: kube.Api, ref: Ref, listed: Listed | None) -> Observed:
    """The object from the pass's LIST when it is in the listed namespace, else by GET."""
    if listed is not None and not ref.destination:
        # Never modified in place (the plan copies what it changes), so the listed object itself is handed out.
        return Observed(ref, listed.get((ref.kind, ref.name)))
    try:
        return Observed(ref, api.get(ref.kind, ref.namespace, ref.name))
    except kube.KubeError as error:
        return Observed(ref, None, error)
