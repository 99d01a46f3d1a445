"""Annotations the job adds to a tenant's `<N>-ca-cert` beside its certificate report: the deletion of a going
tenant's keys, and the state of its consumers. Each writer merges its own keys into what is there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from certrotation import gather, kube, plan
from certrotation.kube import Kind, Ref
from etcdstorage import names
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage


def annotate(
    api: kube.Api, settings: Settings, tenant: EtcdStorage, listed: gather.Listed | None,
    annotations: Mapping[str, str],
) -> str | None:  # fmt: skip
    """Merge `annotations` into `<N>-ca-cert` (created, owned by the tenant, when it is not there); the problem, or
    None. Nothing is written when the annotations already hold these values."""
    ref = Ref(Kind.CONFIGMAP, settings.namespace, names.client_ca_configmap(tenant.name))
    for fresh in (False, True):  # a concurrent change (409): read it again, once
        current = gather.read(api, ref, None if fresh else listed)
        if current.error is not None:
            return f"cannot read {ref}: {current.error}"
        try:
            if current.obj is None:
                api.create(ref.kind, ref.namespace, _new_configmap(ref, tenant, annotations))
            else:
                metadata = {**(current.obj.get("metadata") or {})}
                held = metadata.get("annotations") or {}
                if all(held.get(key) == value for key, value in annotations.items()):
                    return None
                metadata["annotations"] = {**held, **annotations}
                api.replace(ref.kind, ref.namespace, {**current.obj, "metadata": metadata})
        except kube.ConflictError:
            continue
        except kube.KubeError as error:
            return f"cannot write {ref}: {error}"
        return None
    return f"cannot write {ref}: it kept changing"


def _new_configmap(ref: Ref, tenant: EtcdStorage, annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": names.certificate_labels(tenant.name),
            "annotations": dict(annotations),
            "ownerReferences": [plan.owner_reference(tenant)],
        },
    }
