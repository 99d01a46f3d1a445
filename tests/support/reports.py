"""The annotations the cert-rotation job leaves on <N>-ca-cert, for hook tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from etcdstorage import names, report


def report_for(now: datetime, *, lifetime: timedelta = timedelta(hours=730), problem: str = "") -> report.Report:
    times = report.CertificateTimes(notBefore=now, notAfter=now + lifetime, renewalTime=now + lifetime * 2 / 3)
    return report.Report(certificates=dict.fromkeys(report.CERTIFICATES, times), core_certificate_problem=problem)


def ca_cert_configmap(
    tenant: str, annotations: dict[str, str], namespace: str = names.DEFAULT_CONTROLLER_NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.client_ca_configmap(tenant), "namespace": namespace, "annotations": annotations},
        "data": {names.CLIENT_CA_KEY: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"},
    }


def related(tenant: str, annotations: dict[str, str]) -> dict[str, Any]:
    configmap = ca_cert_configmap(tenant, annotations)
    key = f"{configmap['metadata']['namespace']}/{configmap['metadata']['name']}"
    return {"ConfigMap.v1": {key: configmap}}
