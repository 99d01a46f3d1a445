"""What the cert-rotation job tells the hook, as annotations on the tenant's `<N>-ca-cert` ConfigMap.

The job writes it (`to_annotations`), the hook reads it (`from_annotations`); neither sees the other's code paths.
Only public facts travel here: times and problems. Never key material. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from hooks import names

# Certificates the report covers, in the order status shows them.
CERTIFICATES: Final = ("servingCA", "clientCA", "servingCertificate", "clientCertificate")


class CertificateTimes(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    notBefore: AwareDatetime
    notAfter: AwareDatetime
    renewalTime: AwareDatetime


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


def from_annotations(annotations: Mapping[str, str]) -> Report | None:
    """The report, or None when the job has not written one yet; `ReportError` when it cannot be read."""
    if names.ANNOTATION_CERTIFICATES not in annotations:
        return None
    try:
        certificates = json.loads(annotations[names.ANNOTATION_CERTIFICATES])
        return Report(
            certificates=certificates,
            core_certificate_problem=annotations.get(names.ANNOTATION_CORE_CERT_PROBLEM, ""),
        )
    except (ValueError, ValidationError) as error:
        raise ReportError(f"annotation {names.ANNOTATION_CERTIFICATES} does not parse: {error}") from None


def rfc3339(value: datetime) -> str:
    """UTC, whole seconds, `Z`: the form Kubernetes uses for times (and the original's expiry annotation)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
