"""Manual rotation against a real kube-apiserver: `kubectl annotate` an EtcdStorage, run `python -m certrotation` as
its ServiceAccount with exactly the RBAC of manifests/, and the destinations, the Events and the status the hook
computes from the job's real report say what was done, once per value."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from certrotation import events, pki
from etcdstorage import names
from testbed import harness
from tests.e2e import install
from tests.e2e.install import failures_of, get, run_job, tenant_from_example
from tests.e2e.test_cert_rotation_job import events_of, hook_sees

pytestmark = pytest.mark.e2e

C = install.C


def client_certificate(plane: harness.ControlPlane, namespace: str) -> bytes:
    return base64.b64decode(get(plane, "secret", namespace, "etcd-client-cert")["data"][names.TLS_CRT])


def test_a_renew_annotation_reissues_the_client_certificate_once_and_status_shows_the_value(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    assert failures_of(run_job(installed, tmp_path).stderr, tenant) == []
    before = client_certificate(installed, namespace)
    serving_before = get(installed, "secret", C, names.server_cert_secret(tenant))["data"][names.TLS_CRT]

    installed.kubectl("annotate", "etcdstorage", tenant, f"{names.ANNOTATION_RENEW}=2030-01-01T00:00:00Z")
    renewed = run_job(installed, tmp_path)

    assert failures_of(renewed.stderr, tenant) == [], renewed.stderr  # other tests' tenants may fail in this run
    after = client_certificate(installed, namespace)
    assert after != before
    assert get(installed, "secret", C, names.server_cert_secret(tenant))["data"][names.TLS_CRT] != serving_before
    bundle = str(get(installed, "configmap", C, names.client_ca_configmap(tenant))["data"][names.CLIENT_CA_KEY])
    assert any(pki.is_signed_by(pki.parse_certs(after)[0], ca) for ca in pki.parse_certs(bundle.encode()))
    status = hook_sees(installed, tenant)["status"]
    assert status["manualRotation"]["renew"]["value"] == "2030-01-01T00:00:00Z"
    assert "rotateCA" not in status["manualRotation"]
    assert "reasons=renew-requested" in renewed.stderr
    assert [event["type"] for event in events_of(installed, tenant) if event["reason"] == events.RENEW_REQUESTED] == [
        "Normal"
    ]

    again = run_job(installed, tmp_path)  # the same value: acted on already
    assert f"tenant={tenant}" not in again.stderr
    assert client_certificate(installed, namespace) == after


def test_a_rotate_ca_annotation_stages_both_cas_once_and_a_bad_value_is_refused_without_harm(
    installed: harness.ControlPlane, tmp_path: Path
) -> None:
    tenant, namespace = tenant_from_example(installed)
    run_job(installed, tmp_path)
    installed.kubectl("annotate", "etcdstorage", tenant, f"{names.ANNOTATION_ROTATE_CA}=first")

    rotated = run_job(installed, tmp_path)

    assert failures_of(rotated.stderr, tenant) == [], rotated.stderr
    serving = str(get(installed, "configmap", namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY])
    assert len(pki.parse_certs(serving.encode())) == 2  # staged next to the current CA, not replacing it
    assert hook_sees(installed, tenant)["status"]["manualRotation"]["rotateCA"]["value"] == "first"
    signer = get(installed, "secret", C, names.signer_secret(tenant))
    run_job(installed, tmp_path)
    assert get(installed, "secret", C, names.signer_secret(tenant))["data"] == signer["data"]  # no second staged CA

    installed.kubectl("annotate", "--overwrite", "etcdstorage", tenant, f"{names.ANNOTATION_RENEW}={'x' * 200}")
    refused = run_job(installed, tmp_path)
    assert failures_of(refused.stderr, tenant) == [], refused.stderr
    [told] = [event for event in events_of(installed, tenant) if event["reason"] == events.ROTATION_REQUEST_REFUSED]
    assert told["type"] == "Warning"
    assert names.ANNOTATION_RENEW in told["message"]
    [problem] = hook_sees(installed, tenant)["status"]["manualRotation"]["problems"]
    assert "at most 128 printable characters" in problem
