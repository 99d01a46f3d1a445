"""spec.consumers against a real kube-apiserver: the cert-rotation job (`python -m certrotation` under the RBAC of
manifests/ plus examples/consumer-rbac.yaml) stamps the hash of the certificates on the API server Deployment's pod
template, leaves it alone while they stay the same, stamps a new one when they change, and reports a consumer it may
not patch with the fix; the hook shows each as status.consumers. (No kubelet here: pods do not roll, so `current`
stays False; the node suite runs real pods.)"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from etcdstorage import consumers, names
from testbed import harness
from tests.e2e.install import EXAMPLES, C, apply, failures_of, get, load, run_job, tenant_from_example
from tests.e2e.test_children import call, hook, sync_request

__all__ = ["hook"]
Body = dict[str, Any]


def deployment(namespace: str, name: str) -> Body:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "apiserver", "image": "registry.example/sample-apiserver:1"}]}}},
    }  # fmt: skip


def stamped(plane: harness.ControlPlane, namespace: str, name: str) -> str | None:
    template = get(plane, "deployment", namespace, name)["spec"]["template"]
    return (template["metadata"].get("annotations") or {}).get(names.ANNOTATION_CERTIFICATES_HASH)


def reported(plane: harness.ControlPlane, tenant: str) -> dict[str, consumers.ConsumerState]:
    annotations = get(plane, "configmap", C, names.client_ca_configmap(tenant))["metadata"]["annotations"]
    return {state.name: state for state in consumers.from_annotations(annotations) or []}


def test_the_job_rolls_the_api_server_when_its_certificates_change_and_only_then(
    installed: harness.ControlPlane, hook: httpx.Client, tmp_path: Path
) -> None:
    granted, refused = "api", "other"
    spec = {"consumers": [{"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "", "name": name}
                          for name in (granted, refused)]}  # fmt: skip
    tenant, namespace = tenant_from_example(installed, "consumers", spec)
    apply(installed, [deployment(namespace, granted), deployment(namespace, refused)])
    rbac = load(EXAMPLES / "consumer-rbac.yaml")
    for document in rbac:
        document["metadata"]["namespace"] = namespace
    rbac[0]["rules"][0]["resourceNames"] = [granted]
    apply(installed, rbac)
    try:
        first = run_job(installed, tmp_path)
        assert first.returncode == 1  # the consumer it may not patch
        [failure] = failures_of(first.stderr, tenant)
        assert f"Deployment {namespace}/{refused}" in failure
        assert "consumer-rbac.yaml" in failure
        digest = stamped(installed, namespace, granted)
        assert digest is not None
        assert len(digest) == 64
        assert stamped(installed, namespace, refused) is None
        states = reported(installed, tenant)
        assert (states[granted].restarted, states[granted].current, states[granted].problem) == (True, False, "")
        assert "may not read" in states[refused].problem
        assert not states[refused].restarted

        # Nothing changed: the Deployment is not touched again.
        version = get(installed, "deployment", namespace, granted)["metadata"]["resourceVersion"]
        run_job(installed, tmp_path)
        assert get(installed, "deployment", namespace, granted)["metadata"]["resourceVersion"] == version

        # The client certificate is lost and issued again: a new hash rolls the Deployment.
        installed.kubectl("patch", "secret", "etcd-client-cert", f"--namespace={namespace}", "--type=merge",
                          '--patch={"data":{"tls.crt":"","tls.key":""}}')  # fmt: skip
        run_job(installed, tmp_path)
        renewed = stamped(installed, namespace, granted)
        assert renewed not in (None, digest)
        secret = get(installed, "secret", namespace, "etcd-client-cert")
        assert base64.b64decode(secret["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")

        # The hook shows the job's view of each consumer.
        parent = get(installed, "etcdstorage", "", tenant)
        shown = call(hook, "/sync", sync_request(installed, hook, parent, []))["status"]["consumers"]
        assert [(item["name"], item["restarted"], item["certificatesHash"]) for item in shown] == [
            (granted, True, renewed), (refused, False, renewed)]  # fmt: skip
        assert "consumer-rbac.yaml" in shown[1]["problem"]
    finally:
        installed.kubectl("delete", "etcdstorage", tenant, "--ignore-not-found")
