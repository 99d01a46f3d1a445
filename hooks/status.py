"""The EtcdStorage status: computed from what was observed, never from what is about to be created.

Deterministic for a given observation and `now` (Metacontroller re-syncs on every status write, so a value that
changed on every call would loop). Pure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage
from etcdstorage.times import rfc3339

READY: Final = "Ready"
CERTIFICATES_READY: Final = "CertificatesReady"
PROXY_AVAILABLE: Final = "ProxyAvailable"
DEPLOYED: Final = "Deployed"  # the original's only condition, kept for tools written against it
INVALID_SPEC: Final = "InvalidSpec"  # Ready's reason while the hook refuses the spec and keeps the children as they are
STALE_CHILD: Final = "StaleChild"  # an object of a child's name belongs to another owner
STALE_REPORT: Final = "StaleCertificateReport"  # <N>-ca-cert reports for another EtcdStorage of the same name
SIGNER_LOST: Final = "SignerLost"  # a CA is being recovered with overlap after <N>-signer lost it
# CertificatesReady's reason when the job's last pass did not deliver an object: per class, for a destination of the
# spec (in an API server's namespace) and for an object of the controller namespace.
DESTINATION_REASONS: Final[dict[report.State, str]] = {
    state: f"Destination{state}" for state in report.State if state is not report.State.DELIVERED
}
OWNED_REASONS: Final[dict[report.State, str]] = {
    state: f"Delivery{state}" for state in report.State if state is not report.State.DELIVERED
}
MAX_MESSAGE_CHARS: Final = 1000  # of a condition message that quotes input (a refused spec's problems)
_RFC3339: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


@dataclasses.dataclass(frozen=True)
class Foreign:
    """An object named as one of this EtcdStorage's that is not this EtcdStorage's: left by an earlier EtcdStorage of
    the same name (recreated before the garbage collector removed the old one's objects), or orphaned. Metacontroller
    does not hand it over as a child and cannot create this object's own in its place."""

    kind: str
    key: str  # namespace/name
    owners: tuple[str, ...]  # uids of the EtcdStorages it names as owners; empty for none

    def describe(self, uid: str) -> str:
        held = f"belongs to EtcdStorage uid {', '.join(self.owners)}" if self.owners else "has no EtcdStorage owner"
        return f"{self.kind} {self.key} {held}, not to this EtcdStorage (uid {uid or 'unknown'})"


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the request says exists, reduced to what status needs. The children are this object's: Metacontroller
    hands over only the children it controls, and `foreign` names the objects of their names that it does not."""

    deployment: Mapping[str, Any] | None
    service: Mapping[str, Any] | None
    certificates: report.Report | None
    certificates_error: str = ""  # the report annotations exist but do not parse
    disruption_budget: Mapping[str, Any] | None = None
    foreign: tuple[Foreign, ...] = ()  # objects of the children's names held by another owner
    foreign_report: Foreign | None = None  # <N>-ca-cert, when it belongs to another EtcdStorage


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def compute(
    tenant: EtcdStorage, observed: Observed, settings: Settings, *, previous: Any, now: datetime
) -> dict[str, Any]:
    desired_replicas = tenant.replicas if tenant.replicas is not None else settings.replicas
    available = _available_replicas(observed.deployment)
    certificates = (
        _stale_report_condition(tenant, observed)
        or _delivery_condition(tenant, observed, settings)
        or _certificates_condition(tenant, observed, settings, now)
    )
    proxy = _proxy_condition(tenant, observed, available, desired_replicas)
    deployed = _deployed_condition(tenant, observed, settings)
    conditions = [_ready_condition(certificates, proxy, deployed), certificates, proxy, deployed]
    result: dict[str, Any] = {
        "conditions": _with_transition_times(conditions, previous, now, tenant.generation),
        "endpoint": names.endpoint(tenant.name, settings.namespace),
        "keyPrefix": names.key_prefix(tenant.name, settings.key_prefix_root),
        "replicas": desired_replicas,
        "availableReplicas": available,
    }
    if observed.certificates is not None:
        result["certificates"] = report.certificate_times(observed.certificates)
        if observed.certificates.deliveries:  # none from a job that did not report them
            result["destinations"] = destinations(observed.certificates)
    manual = manual_rotation(tenant, observed.certificates)
    if manual:
        result["manualRotation"] = manual
    return result


def manual_rotation(tenant: EtcdStorage, found: report.Report | None) -> dict[str, Any]:
    """`status.manualRotation`: the last value of each manual rotation annotation the job acted on, and when, as this
    EtcdStorage's report says; and why an annotation is not taken as a request. Empty when there is nothing to say."""
    ours = found is not None and found.report_for == tenant.uid  # a stale report's is another EtcdStorage's
    recorded = found.manual_rotation if found is not None and ours else report.ManualRotation()
    shown: dict[str, Any] = {}
    for field, acted in (("renew", recorded.renew), ("rotateCA", recorded.rotateCA)):
        if acted is not None:
            shown[field] = {"value": acted.value, "time": rfc3339(acted.time)}
    if tenant.request_problems:
        shown["problems"] = [str(problem) for problem in tenant.request_problems]
    return shown


def destinations(found: report.Report) -> list[dict[str, Any]]:
    """What each destination of the spec holds after the job's last pass: delivered, or why not and the fix; and the
    times of the client certificate a Secret holds."""
    shown = []
    for delivery in found.deliveries:
        if not delivery.destination:
            continue
        entry: dict[str, Any] = {
            "kind": delivery.kind,
            "namespace": delivery.namespace,
            "name": delivery.name,
            "holds": str(delivery.holds),
            "state": str(delivery.state),
        }
        if not delivery.delivered:
            entry.update(message=delivery.message, fix=delivery.fix)
        if delivery.certificate is not None:
            entry["certificate"] = report.times(delivery.certificate)
        shown.append(entry)
    return shown


def refused(refusal: Exception, *, previous: Any, now: datetime, generation: int) -> dict[str, Any]:
    """The status of an object whose spec the hook refuses: Ready False with the reason, shown by `kubectl get`.
    Only Ready: the other conditions would describe a spec the hook cannot read."""
    message = f"{refusal}; its children are kept as they are until the spec is fixed"
    return {
        "conditions": _with_transition_times(
            [Condition(READY, False, INVALID_SPEC, _clipped(message))], previous, now, generation
        )
    }


def _clipped(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def ready_condition(current: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Ready condition of a status, {} when it has none: a previous status handed back may hold anything."""
    conditions = current.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == READY:
            return condition
    return {}


def is_ready(status: Mapping[str, Any]) -> bool:
    return any(c["type"] == READY and c["status"] == "True" for c in status.get("conditions", []))


def _available_replicas(deployment: Mapping[str, Any] | None) -> int:
    reported = deployment.get("status") if deployment is not None else None
    if not isinstance(reported, Mapping):  # none yet, or not an object: nothing is known to be available
        return 0
    value = reported.get("availableReplicas", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _stale_report_condition(tenant: EtcdStorage, observed: Observed) -> Condition | None:
    """CertificatesReady False when `<N>-ca-cert` is another EtcdStorage's, or its report was written for another:
    it is not about this object."""
    found = observed.certificates
    if found is not None and found.report_for and found.report_for != tenant.uid:
        where = f"ConfigMap {names.client_ca_configmap(tenant.name)}"
        return Condition(
            CERTIFICATES_READY, False, STALE_REPORT,
            f"the certificate report on {where} was written for EtcdStorage uid {found.report_for}, not for this one "
            f"(uid {tenant.uid or 'unknown'}): an earlier EtcdStorage of the same name's; the cert-rotation job "
            "reports for this one on its next run, check the logs of the CronJob etcdstorage-cert-rotation if this "
            "persists",
        )  # fmt: skip
    if observed.foreign_report is None:
        return None
    return Condition(
        CERTIFICATES_READY, False, STALE_REPORT,
        f"the certificate report on {observed.foreign_report.describe(tenant.uid)}: it is an earlier EtcdStorage's "
        "of the same name; the cert-rotation job adopts the ConfigMap and reports for this one on its next run, "
        "check the logs of the CronJob etcdstorage-cert-rotation if this persists",
    )  # fmt: skip


def _certificates_condition(tenant: EtcdStorage, observed: Observed, settings: Settings, now: datetime) -> Condition:
    where = f"{settings.namespace}/{names.client_ca_configmap(tenant.name)}"
    if observed.certificates_error:
        return Condition(
            CERTIFICATES_READY, False, "CertificateReportUnreadable",
            f"ConfigMap {where} carries an unreadable certificate report ({observed.certificates_error}); "
            "the cert-rotation job rewrites it on its next run",
        )  # fmt: skip
    certificates = observed.certificates
    if certificates is None:
        return Condition(
            CERTIFICATES_READY, False, "WaitingForCertificates",
            f"waiting for the cert-rotation job to issue certificates into {where} and "
            f"{settings.namespace}/{names.server_cert_secret(tenant.name)}; it runs every minute, "
            "check the logs of the CronJob etcdstorage-cert-rotation if this persists",
        )  # fmt: skip
    if certificates.core_certificate_problem:
        return Condition(
            CERTIFICATES_READY, False, "CoreClientCertificateInvalid",
            f"the core etcd client certificate in Secret {settings.namespace}/{settings.core_cert_secret} cannot "
            f"work: {certificates.core_certificate_problem}",
        )  # fmt: skip
    expired = sorted(name for name, times in certificates.certificates.items() if times.notAfter <= now)
    if expired:
        return Condition(
            CERTIFICATES_READY, False, "CertificateExpired",
            f"expired: {', '.join(expired)}; the cert-rotation job has not renewed them, check its logs",
        )  # fmt: skip
    if not certificates.certificates:
        return Condition(CERTIFICATES_READY, False, "WaitingForCertificates", f"{where} lists no certificates yet")
    not_after = min(times.notAfter for times in certificates.certificates.values())
    renewal = min(times.renewalTime for times in certificates.certificates.values())
    return Condition(
        CERTIFICATES_READY, True, "Issued",
        f"all certificates valid; the first expires at {rfc3339(not_after)}, "
        f"the next renewal is due at {rfc3339(renewal)}",
    )  # fmt: skip


def _delivery_condition(tenant: EtcdStorage, observed: Observed, settings: Settings) -> Condition | None:
    """CertificatesReady False while a CA is being recovered, or when the job's last pass did not deliver an object:
    the reason is the class of the first failure (a destination's, or an object's of the controller namespace), the
    message names every object with its fix."""
    certificates = observed.certificates
    if certificates is None:
        return None
    if certificates.signer_lost:
        return Condition(
            CERTIFICATES_READY, False, SIGNER_LOST,
            f"Secret {settings.namespace}/{names.signer_secret(tenant.name)} lost its CA: {certificates.signer_lost}; "
            "the certificates in place keep working, find out what deleted or changed the Secret",
        )  # fmt: skip
    undelivered = certificates.undelivered()
    if undelivered:
        first = undelivered[0]
        reasons = DESTINATION_REASONS if first.destination else OWNED_REASONS
        message = "not delivered: " + "; ".join(
            f"{delivery.where()} {delivery.message} (fix: {delivery.fix})" for delivery in undelivered
        )
        return Condition(CERTIFICATES_READY, False, reasons[first.state], _clipped(message))
    return None


def _proxy_condition(tenant: EtcdStorage, observed: Observed, available: int, desired: int) -> Condition:
    stale = [child for child in observed.foreign if child.kind == "Deployment"]
    if observed.deployment is None and stale:
        return Condition(PROXY_AVAILABLE, False, STALE_CHILD, _stale_message(tenant, stale))
    if observed.deployment is None:
        return Condition(
            PROXY_AVAILABLE,
            False,
            "DeploymentNotFound",
            f"Deployment {names.proxy_name(tenant.name)} does not exist yet",
        )
    if available == 0:
        return Condition(
            PROXY_AVAILABLE, False, "NoProxyAvailable",
            f"0 of {desired} proxies available: pods wait for their certificates, or cannot reach the core etcd",
        )  # fmt: skip
    return Condition(PROXY_AVAILABLE, True, "ProxyAvailable", f"{available} of {desired} proxies available")


def _deployed_condition(tenant: EtcdStorage, observed: Observed, settings: Settings) -> Condition:
    """True when this object's Deployment, Service and PodDisruptionBudget all exist; an object of one of their names
    that belongs to another owner is named, with the fix."""
    if observed.foreign:
        return Condition(DEPLOYED, False, STALE_CHILD, _stale_message(tenant, observed.foreign))
    children = {
        "Deployment": observed.deployment,
        "Service": observed.service,
        "PodDisruptionBudget": observed.disruption_budget,
    }
    missing = [kind for kind, child in children.items() if child is None]
    if not missing:
        return Condition(DEPLOYED, True, "Deployed", "etcdproxy Deployment, Service and PodDisruptionBudget exist")
    return Condition(
        DEPLOYED, False, "Creating",
        f"waiting for {', '.join(missing)} {settings.namespace}/{names.proxy_name(tenant.name)} to be created",
    )  # fmt: skip


def _stale_message(tenant: EtcdStorage, stale: list[Foreign] | tuple[Foreign, ...]) -> str:
    objects = "; ".join(child.describe(tenant.uid) for child in stale)
    return (
        f"{objects}: left by an earlier EtcdStorage named {tenant.name}, or orphaned; delete it and it is created for "
        "this one"
    )


def _ready_condition(*parts: Condition) -> Condition:
    for part in parts:
        if not part.status:
            return Condition(READY, False, part.reason, part.message)
    return Condition(READY, True, "Ready", "the proxies serve the tenant's prefix with valid certificates")


def _with_transition_times(
    conditions: list[Condition], previous: Any, now: datetime, generation: int
) -> list[dict[str, Any]]:
    """Standard conditions (metav1.Condition); lastTransitionTime carried over from the previous status while `status`
    holds; observedGeneration the generation of the spec they were computed from (left out when it is unknown)."""
    before: dict[str, Mapping[str, Any]] = {}
    if isinstance(previous, Mapping) and isinstance(previous.get("conditions"), list):
        before = {
            c["type"]: c for c in previous["conditions"] if isinstance(c, Mapping) and isinstance(c.get("type"), str)
        }
    result = []
    for condition in conditions:
        status = "True" if condition.status else "False"
        old = before.get(condition.type, {})
        carried = old.get("lastTransitionTime")
        since = (
            carried
            if isinstance(carried, str) and old.get("status") == status and _is_rfc3339(carried)
            else rfc3339(now)
        )
        result.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": since,
                **({"observedGeneration": generation} if generation > 0 else {}),
            }
        )
    return result


def _is_rfc3339(value: object) -> bool:
    """Whether `value` reads as a time in `rfc3339`'s format, exactly as `strptime` with that format reads it."""
    if not isinstance(value, str):
        return False
    # The form written by Kubernetes and by us is checked without strptime (several times slower, on every sync);
    # anything else strptime also reads (one-digit fields, lower-case t and z) still goes through strptime.
    canonical = _RFC3339.fullmatch(value)
    try:
        if canonical:
            year, month, day, hour, minute, second = map(int, canonical.groups())
            datetime(year, month, day, hour, minute, second)  # ValueError for a field out of range, as strptime
        else:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def going(
    reason: str, message: str, *, previous: Any, now: datetime, remaining: int | None, generation: int
) -> dict[str, Any]:
    """The status of an EtcdStorage being deleted whose keys the job is deleting: Ready False with why it is still
    here, and the keys left as the job last counted them (absent when not counted)."""
    result: dict[str, Any] = {
        "conditions": _with_transition_times([Condition(READY, False, reason, message)], previous, now, generation)
    }
    if remaining is not None:
        result["keysRemaining"] = remaining
    return result
