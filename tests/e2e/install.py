"""What an operator does with the control plane, for e2e tests: apply manifests, install the controller namespace with
the core etcd's certificates, add a tenant the way manifests/examples/ shows, and run the cert-rotation job as its
CronJob would. Test support only; fixtures built on these live in conftest.py."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from certrotation import job
from etcdstorage import names
from testbed import harness
from tests.support.manifests import installed

MANIFESTS: Final = harness.REPO / "manifests"
EXAMPLES: Final = MANIFESTS / "examples"
C: Final = names.DEFAULT_CONTROLLER_NAMESPACE
EXAMPLE_NAMESPACE: Final = "k8s-sample-apiserver"  # where the examples put the sample API server's objects
JOB_TIMEOUT: Final = 120.0  # seconds; a run takes a few


def apply(plane: harness.ControlPlane, documents: list[dict[str, Any]]) -> None:
    plane.kubectl("apply", "--filename=-", input=yaml.safe_dump_all(documents))


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def get(plane: harness.ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any]:
    result = plane.kubectl("get", kind, name, f"--namespace={namespace}", "--output=json")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def install(plane: harness.ControlPlane) -> None:
    """The controller namespace, the job's RBAC, the proxies' ServiceAccount, and the core etcd's CA and client
    certificate (without a Common Name, as grpc-proxy requires) where the proxies and the job read them."""
    apply(
        plane,
        installed(MANIFESTS / "namespace.yaml")
        + installed(MANIFESTS / "cert-rotation-rbac.yaml")
        + installed(MANIFESTS / "proxy.yaml"),
    )
    upstream = plane.core.pki.proxy_client
    apply(
        plane,
        [
            {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": names.CORE_CA_CONFIGMAP, "namespace": C},
                "data": {names.CORE_CA_KEY: upstream.ca.read_text()},
            },
            {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": names.CORE_CERT_SECRET, "namespace": C},
                "data": {
                    names.TLS_CRT: base64.b64encode(upstream.cert.read_bytes()).decode(),
                    names.TLS_KEY: base64.b64encode(upstream.key.read_bytes()).decode(),
                },
            },
        ],
    )  # fmt: skip


def tenant_from_example(
    plane: harness.ControlPlane, prefix: str = "job-e2e", spec: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """The operator's example (examples/apiserver-rbac.yaml and etcdstorage.yaml) under fresh names, `spec` added to
    the EtcdStorage's: the tenant's name and the API server's namespace, which holds the pre-created ConfigMap
    `etcd-serving-ca` and Secret `etcd-client-cert` and the Role that lets the job update them."""
    suffix = secrets.token_hex(3)
    tenant, namespace = f"{prefix}-{suffix}", f"apiserver-{suffix}"
    plane.kubectl("create", "namespace", namespace)
    documents = load(EXAMPLES / "apiserver-rbac.yaml")
    for document in documents:
        if document["metadata"].get("namespace") == EXAMPLE_NAMESPACE:
            document["metadata"]["namespace"] = namespace
    [storage] = load(EXAMPLES / "etcdstorage.yaml")
    storage["metadata"]["name"] = tenant
    storage["spec"].update(spec or {})
    for destination in storage["spec"]["caCertConfigMap"] + storage["spec"]["clientCertSecret"]:
        destination["namespace"] = namespace
    for consumer in storage["spec"].get("consumers", []):  # the API server's workloads live there too
        consumer["namespace"] = namespace
    apply(plane, [*documents, storage])
    return tenant, namespace


def run_job(
    plane: harness.ControlPlane, tmp_path: Path, settings: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m certrotation` as the CronJob runs it, with the job ServiceAccount's token instead of a mounted one,
    and `settings` (ETCDSTORAGE_* variables) on top of the defaults."""
    token = plane.token(C, job.SERVICE_ACCOUNT)
    kubeconfig = plane.kubeconfig_for_token(token, tmp_path / "job.kubeconfig")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "KUBECONFIG": str(kubeconfig),
        "ETCDSTORAGE_NAMESPACE": C,
        "NO_PROXY": "*",
        **(settings or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "certrotation"],
        cwd=harness.REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
    )


def failures_of(output: str, tenant: str) -> list[str]:
    """The job's error lines about `tenant` (other tests' tenants may fail in the same run, for their own reasons)."""
    return [line for line in output.splitlines() if "level=error" in line and f"tenant={tenant}" in line]


def resource_versions(plane: harness.ControlPlane, *selection: str) -> dict[str, str]:
    """`kind/namespace/name` -> resourceVersion of every object `kubectl get <selection>` finds (all must exist)."""
    listed = json.loads(plane.kubectl("get", *selection, "--output=json").stdout)
    items = listed["items"] if listed.get("kind") == "List" else [listed]
    return {
        f"{item['kind']}/{item['metadata'].get('namespace', '')}/{item['metadata']['name']}": item["metadata"][
            "resourceVersion"
        ]
        for item in items
    }


def pod_dry_run(
    plane: harness.ControlPlane, template: dict[str, Any], namespace: str, name: str
) -> subprocess.CompletedProcess[str]:
    """Create a Pod from a pod template with a server-side dry run: all of admission (Pod Security included), nothing
    stored. Nothing here runs a controller, so this is the only way a template meets the admission of Pods."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template.get("metadata", {}).get("labels", {})},
        "spec": template["spec"],
    }
    return plane.kubectl(
        "create", "--dry-run=server", "--output=name", "--filename=-", input=json.dumps(pod), check=False
    )
