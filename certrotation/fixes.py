"""What went wrong with an object of the job, and what the operator does about it: the fixes the job logs. Pure.

One place for every fix, so that a read refused while gathering and a write refused while applying say the same, and
one class (`report.State`) per problem, which the report carries to the hook's condition reasons.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from certrotation import kube
from etcdstorage import names
from etcdstorage.report import State

# TODO(names.py): the ServiceAccount of manifests/cert-rotation-rbac.yaml, named in the fixes we log.
SERVICE_ACCOUNT: Final = "etcdstorage-cert-rotation"
RBAC_MANIFEST: Final = "manifests/cert-rotation-rbac.yaml"
DESTINATION_TEMPLATE: Final = "manifests/examples/apiserver-rbac.yaml"
RETRY: Final = "the next run retries"


@dataclasses.dataclass(frozen=True)
class Problem:
    """An object of a tenant that could not be read or written, or is missing; `fix` says what the operator does."""

    ref: kube.Ref
    problem: str
    fix: str
    cause: State = State.FAILED


def describe(error: kube.KubeError) -> str:
    """The error for a log field, e.g. `422 Invalid: <the API server's message>`; messages come redacted by `kube`."""
    if isinstance(error, kube.ApiError):
        status = f"{error.status} {error.reason}".rstrip()
        return f"{status}: {error.message}" if error.message else status
    return str(error)


def failed(ref: kube.Ref, error: kube.KubeError, verb: str, namespace: str) -> Problem:
    """`verb` (get, create, update) on `ref` failed with `error`; `namespace` is the controller's."""
    if isinstance(error, kube.ApiError) and error.status in _INVALID:
        return Problem(ref, f"{verb} refused: {describe(error)}", _INVALID_FIX, State.INVALID)
    if not isinstance(error, kube.ForbiddenError):
        return Problem(ref, f"{verb} failed: {describe(error)}", RETRY)
    account = f"{namespace}/{SERVICE_ACCOUNT}"
    if ref.destination:
        fix = (
            f"in namespace {ref.namespace}, bind a Role granting get and update on {ref.kind} {ref.name} "
            f"to ServiceAccount {account}: see {DESTINATION_TEMPLATE}"
        )
    else:
        fix = f"apply {RBAC_MANIFEST}: its Role lets {account} get, create and update {ref.kind}s in {ref.namespace}"
    return Problem(ref, f"{verb} forbidden", fix, State.FORBIDDEN)


_INVALID: Final = frozenset({400, 422})
_INVALID_FIX: Final = (
    "the API server refuses the object as the job writes it: check what admission (a webhook, a policy) requires "
    "of it, or recreate it empty"
)


def held_back(ref: kube.Ref, needed: Problem) -> Problem:
    """`ref` was not written because the write of `needed.ref`, which it needs, was not."""
    return Problem(ref, f"not written: it needs {needed.ref.kind} {needed.ref}, which was not written", needed.fix)


def conflict(ref: kube.Ref, tenant: str, owner: str, field: str) -> Problem:
    """Destination `ref` of EtcdStorage `tenant` is named by EtcdStorage `owner` too, which the job writes it for."""
    return Problem(
        ref,
        f"also named by EtcdStorage {owner}, created earlier, which the job writes it for",
        f"name another {ref.kind} in spec.{field} of EtcdStorage {tenant}, or remove {ref} from EtcdStorage {owner}",
        State.CONFLICT,
    )


def missing(ref: kube.Ref, namespace: str) -> Problem:
    """A destination the API server's operator has not created (the job never creates one)."""
    fix = (
        f"create {ref.kind} {ref} (empty is fine) and let ServiceAccount {namespace}/{SERVICE_ACCOUNT} "
        f"get and update it: see {DESTINATION_TEMPLATE}"
    )
    return Problem(ref, "does not exist", fix, State.MISSING)


def signer_lost(ref: kube.Ref, roles: str, trusted: int) -> Problem:
    """The CAs of `roles` in `ref` (the tenant's `<N>-signer`) are gone while `trusted` CA certificates of theirs are
    still in the bundles: a new CA is staged next to them. Not a delivery: the report says it in its own field."""
    return Problem(
        ref,
        f"the {roles} CA is missing or unreadable while the bundles hold {trusted} CA certificate(s) the job has no "
        "key for: a new CA is staged next to them and signs once every bundle has held it for the propagation delay; "
        "the certificates in place keep working meanwhile",
        f"find out what deleted or changed {ref.kind} {ref} (a restore from backup ends the recovery only if it "
        "brings back the same CA); nothing else to do, the job completes the recovery",
    )


def unlisted(kind: kube.Kind, error: kube.KubeError, namespace: str) -> str:
    """The fix when the controller namespace's objects of `kind` cannot be listed."""
    if isinstance(error, kube.ForbiddenError):
        return f"apply {RBAC_MANIFEST}: its Role lets {SERVICE_ACCOUNT} list {kind}s in {namespace}"
    return "the next run lists again"


def etcdstorages_unlisted(error: kube.KubeError) -> str:
    """The fix when the EtcdStorages cannot be listed (nothing can be done then)."""
    if isinstance(error, kube.ForbiddenError):
        return f"apply {RBAC_MANIFEST}: its ClusterRole lets {SERVICE_ACCOUNT} list {names.PLURAL}"
    if isinstance(error, kube.NotFoundError):
        return "apply manifests/crd.yaml: the EtcdStorage resource is not installed"
    return "check that the API server is reachable; the next run retries"


def events_unrecorded(error: kube.KubeError) -> str:
    """The fix when an Event cannot be written (the pass goes on: Events only describe)."""
    if isinstance(error, kube.ForbiddenError):
        return f"apply {RBAC_MANIFEST}: its ClusterRole lets {SERVICE_ACCOUNT} create and update events"
    return "the next run tells it again"


def core_unusable(ca_where: str, cert_where: str) -> str:
    return (
        f"put the core etcd CA in {ca_where} key {names.CORE_CA_KEY} and a valid client certificate it "
        f"signed in {cert_where}"
    )
