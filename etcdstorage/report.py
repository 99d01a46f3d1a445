"""What the cert-rotation job tells the hook, as annotations on the tenant's `<N>-ca-cert` ConfigMap.

The job writes it (`to_annotations`), the hook reads it (`from_annotations`); neither sees the other's code paths.
Only public facts travel here: times, what each object holds and why one was not delivered, and the uid of the
EtcdStorage the report is for. Never key material. Pure.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, ValidationError

from etcdstorage import names
from etcdstorage.times import rfc3339

# Certificates the report covers, in the order status shows them.
CERTIFICATES: Final = ("servingCA", "clientCA", "servingCertificate", "clientCertificate")
_MAX_PLACE: Final = 100  # characters of a refused field's place named in a ReportError


def _in_utc(value: datetime) -> datetime:
    """The time in UTC, or ValueError when UTC has no such year (9999-12-31T23:00:00-01:00 is in year 10000)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is not a time between years 1 and 9999 in UTC") from None


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class CertificateTimes(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    notBefore: UtcTime
    notAfter: UtcTime
    renewalTime: UtcTime


class State(enum.StrEnum):
    """Whether a pass delivered an object (it holds what it should), or the class of why not."""

    DELIVERED = "Delivered"
    MISSING = "Missing"  # a destination the API server's operator has not created
    FORBIDDEN = "Forbidden"  # the job's ServiceAccount may not read or write it
    INVALID = "Invalid"  # the API server refused the object as written (400, 422)
    CONFLICT = "Conflict"  # a destination another EtcdStorage, created earlier, names too: written for that one only
    FAILED = "Failed"  # anything else (no answer, a server error, a write it needs failed): the next run retries


class Holds(enum.StrEnum):
    """What an object of the job holds."""

    SIGNER = "signer"  # <N>-signer: both CAs and their keys
    CLIENT_CA_BUNDLE = "clientCABundle"  # <N>-ca-cert: the client-CA bundle the proxies trust
    SERVING_CERTIFICATE = "servingCertificate"  # <N>-server-cert: the proxies' serving pair
    SERVING_CA_BUNDLE = "servingCABundle"  # a spec.caCertConfigMap destination
    CLIENT_CERTIFICATE = "clientCertificate"  # a spec.clientCertSecret destination


class Delivery(BaseModel):
    """One object as the job's last pass left it: delivered, or why not and the operator's fix; with the certificate
    it holds, if it holds one (delivered or not, what is in place)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: str
    namespace: str
    name: str
    holds: Holds
    state: State
    destination: bool = False  # a spec destination in an API server's namespace, not an object of the controller's
    message: str = ""
    fix: str = ""
    certificate: CertificateTimes | None = None

    @property
    def delivered(self) -> bool:
        return self.state is State.DELIVERED

    def where(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class Acted(BaseModel):
    """A manual rotation request (an annotation's value on the EtcdStorage) the job acted on, and when."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    value: str
    time: UtcTime


class ManualRotation(BaseModel):
    """The last value of each manual rotation annotation the job acted on: `renew` once every leaf was re-issued for
    it, `rotateCA` once the rotation of both CAs started (or a rotation in progress took it over)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    renew: Acted | None = None
    rotateCA: Acted | None = None


# Read off the model rather than through model_dump(), which costs more than the formatting on every sync.
_TIME_FIELDS: Final = tuple(sorted(CertificateTimes.model_fields))


class Report(BaseModel):
    """The job's view of one tenant after its last pass: the certificates in place, and what each object holds."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    certificates: dict[str, CertificateTimes]
    core_certificate_problem: str = ""  # why the core etcd client certificate cannot work, "" when it can
    report_for: str = ""  # the uid of the EtcdStorage it was written for; "" from a job that did not say
    deliveries: tuple[Delivery, ...] = ()  # in the order of the pass: owned objects, then the spec's destinations
    signer_lost: str = ""  # why a CA is being recovered with overlap, "" when none is
    manual_rotation: ManualRotation = ManualRotation()

    def undelivered(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if not delivery.delivered]


class ReportError(ValueError):
    """The annotations are there but do not parse: written by something else, or by hand."""


def certificate_times(report: Report) -> dict[str, dict[str, str]]:
    """The certificate times as Kubernetes prints times, sorted: for annotations and for status."""
    return {name: times(certificate) for name, certificate in sorted(report.certificates.items())}


def times(certificate: CertificateTimes) -> dict[str, str]:
    return {field: rfc3339(getattr(certificate, field)) for field in _TIME_FIELDS}


def to_annotations(report: Report) -> dict[str, str]:
    deliveries = [delivery.model_dump(mode="json", exclude_defaults=True) for delivery in report.deliveries]
    return {
        names.ANNOTATION_CERTIFICATES: _json(certificate_times(report)),
        names.ANNOTATION_CORE_CERT_PROBLEM: report.core_certificate_problem,
        names.ANNOTATION_REPORT_FOR: report.report_for,
        names.ANNOTATION_DELIVERIES: _json(deliveries),
        names.ANNOTATION_SIGNER_LOST: report.signer_lost,
        names.ANNOTATION_MANUAL_ROTATION: _json(report.manual_rotation.model_dump(mode="json", exclude_none=True)),
    }


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def from_annotations(annotations: object) -> Report | None:
    """The report, or None when the job has not written one yet; `ReportError` when it cannot be read.

    Takes whatever the ConfigMap's `metadata.annotations` holds: anything but a map of strings is unreadable.
    """
    if not isinstance(annotations, Mapping):
        raise ReportError("metadata.annotations is not a map of strings")
    if names.ANNOTATION_CERTIFICATES not in annotations:
        return None
    # A report of an earlier job has only the first two: read as delivered everywhere, for no particular uid.
    defaults = {
        names.ANNOTATION_CERTIFICATES: "",
        names.ANNOTATION_CORE_CERT_PROBLEM: "",
        names.ANNOTATION_REPORT_FOR: "",
        names.ANNOTATION_DELIVERIES: "[]",
        names.ANNOTATION_SIGNER_LOST: "",
        names.ANNOTATION_MANUAL_ROTATION: "{}",
    }
    values = {name: annotations.get(name, default) for name, default in defaults.items()}
    for name, value in values.items():
        if not isinstance(value, str):
            raise ReportError(f"annotation {name} is not a string")
    return Report(
        certificates=_parsed(names.ANNOTATION_CERTIFICATES, values, "certificates"),
        core_certificate_problem=values[names.ANNOTATION_CORE_CERT_PROBLEM],
        report_for=values[names.ANNOTATION_REPORT_FOR],
        deliveries=_parsed(names.ANNOTATION_DELIVERIES, values, "deliveries"),
        signer_lost=values[names.ANNOTATION_SIGNER_LOST],
        manual_rotation=_parsed(names.ANNOTATION_MANUAL_ROTATION, values, "manual_rotation"),
    )


def manual_rotation(annotations: object, uid: str) -> ManualRotation:
    """What the report on `<N>-ca-cert` (its `metadata.annotations`) says was acted on for the EtcdStorage of `uid`;
    nothing when there is no report, or an unreadable one, or one written for another EtcdStorage of the same name.
    The job carries it over from run to run: what it acted on is kept on the objects it wrote (see names.py)."""
    try:
        found = from_annotations(annotations)
    except ReportError:
        return ManualRotation()
    if found is None or found.report_for != uid:
        return ManualRotation()
    return found.manual_rotation


def _parsed(annotation: str, values: Mapping[str, str], field: str) -> Any:
    """The JSON of `annotation`, validated as the Report's `field`; `ReportError` naming the first problem."""
    try:
        parsed = Report.model_validate({"certificates": {}, field: json.loads(values[annotation])})
    except ValidationError as error:
        # The first problem only, its place cut short: the message lands in status, once per tenant.
        first = error.errors(include_url=False)[0]
        where = ".".join(str(step) for step in first["loc"])[:_MAX_PLACE]
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ReportError(f"annotation {annotation} does not parse: {where}: {first['msg']}{more}") from None
    # RecursionError: json.loads gives up on a value nested some thousand levels deep.
    except (ValueError, RecursionError) as error:
        raise ReportError(f"annotation {annotation} does not parse: {error}") from None
    return getattr(parsed, field)
