"""A lost `<N>-signer` against a real kube-apiserver: the job (`python -m certrotation` under the RBAC of manifests/)
does not re-key silently. It stages a new CA next to the certificates the bundles hold, keeps the certificates in
place, exits 1 with an ERROR line, records a SignerLost Event, and the hook, fed its real report, says SignerLost.
(The recovery's end, after the propagation delay, is run minute by minute in tests/job/test_signer_loss.py.)"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from certrotation import events, job
from etcdstorage import names
from testbed import harness
from tests.e2e.install import C, failures_of, get, run_job, tenant_from_example
from tests.e2e.test_cert_rotation_job import events_of, hook_sees


def certificates(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def test_a_deleted_signer_is_recovered_with_overlap_loudly(installed: harness.ControlPlane, tmp_path: Path) -> None:
    tenant, namespace = tenant_from_example(installed, "signer-lost")
    assert failures_of(run_job(installed, tmp_path).stderr, tenant) == []
    bundle = certificates(get(installed, "configmap", namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY])
    server = get(installed, "secret", C, names.server_cert_secret(tenant))["data"]
    client = get(installed, "secret", namespace, "etcd-client-cert")["data"]

    installed.kubectl("delete", "secret", names.signer_secret(tenant), f"--namespace={C}")
    ran = run_job(installed, tmp_path)

    assert ran.returncode == job.EXIT_FAILURES
    assert any("signer lost" in line for line in failures_of(ran.stderr, tenant)), ran.stderr
    after = certificates(get(installed, "configmap", namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY])
    assert set(bundle) < set(after)  # the old CA stays, a new one is published next to it
    assert get(installed, "secret", C, names.server_cert_secret(tenant))["data"] == server  # still serving
    assert get(installed, "secret", namespace, "etcd-client-cert")["data"] == client
    assert get(installed, "secret", C, names.signer_secret(tenant))  # the staged CA is kept
    told = [event for event in events_of(installed, tenant) if event["reason"] == events.SIGNER_LOST]
    assert told
    assert told[0]["type"] == "Warning"
    conditions = {c["type"]: c for c in hook_sees(installed, tenant)["status"]["conditions"]}
    assert (conditions["CertificatesReady"]["status"], conditions["CertificatesReady"]["reason"]) == (
        "False", "SignerLost")  # fmt: skip
    assert conditions["Ready"]["status"] == "False"

    again = run_job(installed, tmp_path)  # loud until the recovery completes, and nothing re-keyed meanwhile
    assert again.returncode == job.EXIT_FAILURES
    assert get(installed, "secret", C, names.server_cert_secret(tenant))["data"] == server
    installed.kubectl("delete", "etcdstorage", tenant)
