"""What the cert-rotation job tells the hook, as annotations on the tenant's `<N>-ca-cert` ConfigMap.

The job writes it (`to_annotations`), the hook reads it (`from_annotations`); neither sees the other's code paths.
Only public facts travel here: times and problems. Never key material. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Final

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


# Read off the model rather than through model_dump(), which costs more than the formatting on every sync.
_TIME_FIELDS: Final = tuple(sorted(CertificateTimes.model_fields))


class Report(BaseModel):
    """The job's view of one tenant after its last successful pass."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    certificates: dict[str, CertificateTimes]
    core_certificate_problem: str = ""  # why the core etcd client certificate cannot work, "" when it can


class ReportError(ValueError):
    """The annotations are there but do not parse: written by something else, or by hand."""


def certificate_times(report: Report) -> dict[str, dict[str, str]]:
    """The certificate times as Kubernetes prints times, sorted: for annotations and for status."""
    return {
        name: {field: rfc3339(getattr(times, field)) for field in _TIME_FIELDS}
        for name, times in sorted(report.certificates.items())
    }


def to_annotations(report: Report) -> dict[str, str]:
    return {
        names.ANNOTATION_CERTIFICATES: json.dumps(certificate_times(report), sort_keys=True, separators=(",", ":")),
        names.ANNOTATION_CORE_CERT_PROBLEM: report.core_certificate_problem,
    }


def from_annotations(annotations: object) -> Report | None:
    """The report, or None when the job has not written one yet; `ReportError` when it cannot be read.

    Takes whatever the ConfigMap's `metadata.annotations` holds: anything but a map of strings is unreadable.
    """
    if not isinstance(annotations, Mapping):
        raise ReportError("metadata.annotations is not a map of strings")
    if names.ANNOTATION_CERTIFICATES not in annotations:
        return None
    certificates = annotations[names.ANNOTATION_CERTIFICATES]
    problem = annotations.get(names.ANNOTATION_CORE_CERT_PROBLEM, "")
    for name, value in ((names.ANNOTATION_CERTIFICATES, certificates), (names.ANNOTATION_CORE_CERT_PROBLEM, problem)):
        if not isinstance(value, str):
            raise ReportError(f"annotation {name} is not a string")
    try:
        return Report(certificates=json.loads(certificates), core_certificate_problem=problem)
    except ValidationError as error:
        # The first problem only, its place cut short: the message lands in status, once per tenant.
        first = error.errors(include_url=False)[0]
        where = ".".join(str(step) for step in first["loc"])[:_MAX_PLACE]
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ReportError(
            f"annotation {names.ANNOTATION_CERTIFICATES} does not parse: {where}: {first['msg']}{more}"
        ) from None
    # RecursionError: json.loads gives up on a value nested some thousand levels deep.
    except (ValueError, RecursionError) as error:
        raise ReportError(f"annotation {names.ANNOTATION_CERTIFICATES} does not parse: {error}") from None
