"""Rolling a tenant's consumers (`spec.consumers`: the Deployments and StatefulSets of its API server) when the
certificates it mounts change, so that nobody restarts an API server by hand after a rotation.

After the tenant's pass, the job hashes what its destinations hold (each serving-CA bundle and client certificate,
never a key) and stamps that hash on each consumer's pod template, `etcd.xmudrii.com/certificates-hash`, by a JSON
merge patch; a new value rolls the pods, which then mount the certificates as they are. A template that carries the
hash already is left alone. Whether each consumer's pods all run that template is read from its status. The states
go to the hook on `<N>-ca-cert` (`etcdstorage.consumers`), which shows them as `status.consumers`.

The operator grants the job `get` and `patch` on exactly those objects (manifests/examples/consumer-rbac.yaml); a
consumer the job may not read or patch is reported with that fix and the others go on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol, runtime_checkable

from certrotation import fixes, kube, reporting
from certrotation.kube import Kind, Ref
from etcdstorage import consumers, names
from etcdstorage.consumers import ConsumerState
from etcdstorage.settings import Settings
from etcdstorage.spec import Consumer, EtcdStorage

log = logging.getLogger("certrotation.job")

RBAC_TEMPLATE: Final = "manifests/examples/consumer-rbac.yaml"


@runtime_checkable
class Workloads(Protocol):
    """What rolling needs of Kubernetes beyond `kube.Api`: `kube.Kubernetes` has it."""

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_workload(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...


def roll(api: kube.Api, settings: Settings, tenant: EtcdStorage) -> bool:
    """Stamp the certificates' hash on every consumer that lacks it, and report; True when this failed anywhere."""
    if not tenant.consumers:
        return False
    if not isinstance(api, Workloads):
        _log(logging.ERROR, "consumers not restarted: this client cannot read or patch workloads", tenant=tenant.name)
        return True
    digest, unread = certificates_hash(api, tenant)
    states = [_roll_one(api, settings, tenant, consumer, digest=digest, unread=unread) for consumer in tenant.consumers]
    written = reporting.annotate(api, settings, tenant, None, consumers.to_annotations(states))
    if written is not None:
        _log(logging.ERROR, "consumers not reported", tenant=tenant.name, problem=written)
    return written is not None or any(state.problem for state in states)


def certificates_hash(api: kube.Api, tenant: EtcdStorage) -> tuple[str, str]:
    """The SHA-256 of what the tenant's destinations hold (bundles and certificates, never a key), and "" - or ""
    and why not, when a destination does not hold its certificate yet (rolling onto it would gain nothing)."""
    hashed = hashlib.sha256()
    places = [(Kind.CONFIGMAP, where, names.SERVING_CA_KEY) for where in tenant.ca_cert_configmaps]
    places += [(Kind.SECRET, where, names.TLS_CRT) for where in tenant.client_cert_secrets]
    for kind, where, key in places:
        ref = Ref(kind, where.namespace, where.name, destination=True)
        try:
            obj = api.get(kind, where.namespace, where.name)
        except kube.KubeError as error:
            return "", f"cannot read {ref}: {fixes.describe(error)}"
        value = ((obj or {}).get("data") or {}).get(key)
        if not isinstance(value, str) or not value:
            return "", f"{ref} holds no {key} yet: the job delivers it first"
        hashed.update(f"{ref}\n{key}\n{value}\n".encode())
    return hashed.hexdigest(), ""


def _roll_one(
    api: Workloads, settings: Settings, tenant: EtcdStorage, consumer: Consumer, *, digest: str, unread: str
) -> ConsumerState:
    def state(problem: str = "", *, restarted: bool = False, current: bool = False) -> ConsumerState:
        return ConsumerState(
            kind=consumer.kind, namespace=consumer.namespace, name=consumer.name, certificatesHash=digest,
            restarted=restarted, current=current, problem=problem,
        )  # fmt: skip

    grant = (
        f"grant the ServiceAccount {settings.namespace}/{fixes.SERVICE_ACCOUNT} get and patch on {consumer} "
        f"(template: {RBAC_TEMPLATE})"
    )
    workload = _read(api, consumer, grant)
    if isinstance(workload, str):
        return _failed(state(workload), tenant)
    if unread:
        return _failed(state(unread), tenant)
    template = (workload.get("spec") or {}).get("template") or {}
    stamped = ((template.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_CERTIFICATES_HASH)
    if stamped == digest:
        return state(restarted=True, current=rolled_out(workload))
    patch = {"spec": {"template": {"metadata": {"annotations": {names.ANNOTATION_CERTIFICATES_HASH: digest}}}}}
    try:
        api.patch_workload(consumer.kind, consumer.namespace, consumer.name, patch)
    except kube.KubeError as error:
        denied = isinstance(error, kube.ForbiddenError)
        problem = (
            f"the job may not patch {consumer}: {grant}"
            if denied
            else f"cannot patch {consumer}: {fixes.describe(error)}"
        )
        return _failed(state(problem), tenant)
    _log(logging.INFO, "consumer restarted: its certificates changed", tenant=tenant.name, consumer=str(consumer))
    return state(restarted=True)


def _read(api: Workloads, consumer: Consumer, grant: str) -> dict[str, Any] | str:
    """The workload, or why it cannot be read (with the fix)."""
    try:
        workload = api.get_workload(consumer.kind, consumer.namespace, consumer.name)
    except kube.ForbiddenError:
        return f"the job may not read {consumer}: {grant}"
    except kube.KubeError as error:
        return f"cannot read {consumer}: {fixes.describe(error)}"
    return (
        workload if workload is not None else f"{consumer} does not exist: create it, or remove it from spec.consumers"
    )


def rolled_out(workload: Mapping[str, Any]) -> bool:
    """Whether every pod of the workload runs its current template, as its controller reports."""
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < (workload.get("metadata") or {}).get("generation", 0):
        return False
    updated: bool = status.get("updatedReplicas") == wanted
    if workload.get("kind") == "StatefulSet":
        return updated and bool(status.get("updateRevision") == status.get("currentRevision"))
    return updated and bool(status.get("replicas") == wanted)


def _failed(state: ConsumerState, tenant: EtcdStorage) -> ConsumerState:
    consumer = f"{state.kind} {state.namespace}/{state.name}"
    _log(logging.ERROR, "consumer not restarted", tenant=tenant.name, consumer=consumer, problem=state.problem)
    return state


def _log(level: int, message: str, **fields: object) -> None:
    log.log(level, message, extra={"fields": fields})
