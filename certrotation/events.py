"""The Events the job records on an EtcdStorage, in the spirit of library-go's (`SignerUpdateRequired`...): what
`kubectl describe etcdstorage <N>` shows of the job's decisions, which its logs keep only as long as the Job.

Pure: `certrotation.plan` says what happened, this module words it and builds the core v1 Event objects, and
`certrotation.apply.record` creates them. Reasons are constants; messages name objects and reasons, never key
material. An Event's name is derived from what it says, so that the same event told on every run is one Event whose
count grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from certrotation import plan
from certrotation.rotation import Reason, Role
from etcdstorage import deletion, names, report
from etcdstorage.spec import EtcdStorage
from etcdstorage.times import rfc3339

NORMAL: Final = "Normal"
WARNING: Final = "Warning"

CA_ISSUED: Final = "CAIssued"  # a CA made with nothing to overlap with (a new tenant, or the old one unusable)
CA_STAGED: Final = "CAStaged"  # a new CA published next to the current one; it signs after the propagation delay
CA_PROMOTED: Final = "CAPromoted"  # the staged CA signs from now on
CA_RETIRED: Final = "CARetired"  # the CA it replaced stays in the bundles until it expires
STAGED_CA_DISCARDED: Final = "StagedCADiscarded"  # a staged CA that no longer fits the spec, or is no longer needed
CERTIFICATE_ISSUED: Final = "CertificateIssued"
FOREIGN_CERTIFICATE_REPLACED: Final = "ForeignCertificateReplaced"  # a valid certificate no CA of the tenant signed
SIGNER_LOST: Final = "SignerLost"
DELIVERY_FAILED: Final = "DeliveryFailed"
DESTINATION_CONFLICT: Final = "DestinationConflict"
RENEW_REQUESTED: Final = "RenewRequested"  # the renew annotation's new value: the leaves are issued anew
CA_ROTATION_REQUESTED: Final = "CARotationRequested"  # the rotate-ca annotation's new value: both CAs rotate
ROTATION_REQUEST_REFUSED: Final = "RotationRequestRefused"  # an annotation value that is no request: nothing done
KEYS_DELETED: Final = "KeysDeleted"  # deletionPolicy Delete: no key left under the prefix, the object may go
DELETING_KEYS: Final = "DeletingKeys"  # some deleted, some left (written meanwhile): the next run goes on
KEY_DELETION_FAILED: Final = "KeyDeletionFailed"  # the core etcd could not be reached or refused

MAX_MESSAGE: Final = 1024  # characters, as events.k8s.io's note
_NAME_DIGEST: Final = 16  # hex characters of the digest in an Event's name

_SIGNER_ACTIONS: Final = {
    "issued": (CA_ISSUED, "issued a new {role} CA into Secret {signer}"),
    "staged": (CA_STAGED, "staged a new {role} CA next to the current one; it signs once every bundle has held it "
               "for the propagation delay"),
    "promoted": (CA_PROMOTED, "the staged {role} CA signs from now on; the leaves it did not sign are issued anew"),
    "discarded-next": (STAGED_CA_DISCARDED, "discarded the staged {role} CA"),
}  # fmt: skip


def build(tenant: EtcdStorage, namespace: str, told: Iterable[plan.Event], now: datetime) -> list[dict[str, Any]]:
    """The Event objects for what the pass `told` about `tenant` (`namespace`: the controller's, where the signer
    lives), in order, each once."""
    bodies: dict[str, dict[str, Any]] = {}
    for event in told:
        for kind, reason, message in worded(event, tenant, namespace):
            body = _body(tenant, kind, reason, message, now)
            bodies.setdefault(body["metadata"]["name"], body)
    return list(bodies.values())


def worded(event: plan.Event, tenant: EtcdStorage, namespace: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of each Event that `event` is."""
    signer = f"{namespace}/{names.signer_secret(tenant.name)}"
    if isinstance(event, plan.SignerChanged):
        reason, text = _SIGNER_ACTIONS[event.action]
        lost = Reason.SIGNER_LOST in event.reasons
        worded = [(WARNING if lost else NORMAL, reason, _because(text.format(role=event.role, signer=signer), event))]
        if event.action == "promoted" and not lost:
            retired = f"retired the previous {event.role} CA: it stays in the bundles until it expires"
            worded.append((NORMAL, CA_RETIRED, retired))
        return worded
    if isinstance(event, plan.CertificateIssued):
        where = f"Secret {event.ref}"
        if event.replaced_issuer:
            replaced = (
                f"replaced the certificate in {where}, issued by {event.replaced_issuer}, which no CA of this "
                f"EtcdStorage signed; the new one is valid until {rfc3339(event.not_after)}"
            )
            return [(WARNING, FOREIGN_CERTIFICATE_REPLACED, replaced)]
        issued = f"issued the certificate in {where}, valid until {rfc3339(event.not_after)}"
        return [(NORMAL, CERTIFICATE_ISSUED, _because(issued, event))]
    if isinstance(event, plan.SignerLost):
        told = (
            f"the {event.role} CA is missing or unreadable in Secret {signer} while the bundles hold "
            f"{event.trusted} CA certificate(s) of it: a new CA is staged next to them, the certificates in place "
            "keep working, and it signs after the propagation delay"
        )
        return [(WARNING, SIGNER_LOST, told)]
    if isinstance(event, plan.RotationRequested | plan.RequestRefused):
        return [_request(event)]
    delivery = event.delivery
    reason = DESTINATION_CONFLICT if delivery.state is report.State.CONFLICT else DELIVERY_FAILED
    return [(WARNING, reason, f"{delivery.where()}: {delivery.message}; fix: {delivery.fix}")]


def _request(event: plan.RotationRequested | plan.RequestRefused) -> tuple[str, str, str]:
    """A manual rotation request: what is done for it, or why nothing is."""
    if isinstance(event, plan.RequestRefused):
        return WARNING, ROTATION_REQUEST_REFUSED, event.problem
    asked = f"annotation {event.annotation}={event.value}"
    if event.annotation == names.ANNOTATION_RENEW:
        return (
            NORMAL,
            RENEW_REQUESTED,
            f"{asked}: issuing the proxies' serving certificate and every client certificate anew",
        )
    staged = " and ".join(f"{role} CA" for role in event.staged)
    others = " and ".join(f"{role} CA" for role in Role if role not in event.staged)
    parts = (
        [f"staged a new {staged}; it signs once every bundle has held it for the propagation delay"] if staged else []
    )
    if others:
        parts.append(f"the {others} rotation already in progress (or recovery) takes the request over")
    return NORMAL, CA_ROTATION_REQUESTED, f"{asked}: {'; '.join(parts)}"


def key_deletion(tenant: EtcdStorage, attempt: deletion.KeyDeletion, now: datetime) -> dict[str, Any]:
    """The Event of one attempt at deleting a going tenant's keys (deletionPolicy Delete)."""
    if attempt.problem:
        told = (WARNING, KEY_DELETION_FAILED, f"deleting the keys under {attempt.prefix} failed: {attempt.problem}")
    elif attempt.complete:
        told = (NORMAL, KEYS_DELETED, f"deleted {attempt.deleted} keys under {attempt.prefix}: none is left")
    else:
        left = f"deleted {attempt.deleted} keys under {attempt.prefix}, {attempt.remaining} left"
        told = (NORMAL, DELETING_KEYS, left)
    return _body(tenant, *told, now)


def _because(text: str, event: plan.SignerChanged | plan.CertificateIssued) -> str:
    return f"{text} (reasons: {', '.join(event.reasons)})" if event.reasons else text


def _body(tenant: EtcdStorage, kind: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    clipped = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
    digest = hashlib.sha256("\0".join((tenant.uid, reason, clipped)).encode()).hexdigest()[:_NAME_DIGEST]
    at = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{tenant.name}.{digest}", "namespace": names.EVENTS_NAMESPACE},
        # No namespace: the EtcdStorage is cluster-scoped, which is why the Event lives in `default`.
        "involvedObject": {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": tenant.name, "uid": tenant.uid},
        "type": kind,
        "reason": reason,
        "message": clipped,
        "source": {"component": names.EVENTS_COMPONENT},
        "reportingComponent": names.EVENTS_COMPONENT,
        "reportingInstance": names.EVENTS_COMPONENT,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }
