"""EtcdStorage objects and hook requests for tests, shaped as Kubernetes and Metacontroller send them."""

from __future__ import annotations

import copy
from typing import Any

# The original project's example (artifacts/etcdstorage/example-etcdstorage.yaml), as the API server serves it.
ORIGINAL_EXAMPLE: dict[str, Any] = {
    "apiVersion": "etcd.xmudrii.com/v1alpha1",
    "kind": "EtcdStorage",
    "metadata": {"name": "sample-apiserver", "uid": "0c7d5f9e-2b1a-4c55-9a3e-6f1d2c3b4a50", "generation": 1},
    "spec": {
        "caCertConfigMap": [{"name": "etcd-serving-ca", "namespace": "k8s-sample-apiserver"}],
        "clientCertSecret": [{"name": "etcd-client-cert", "namespace": "k8s-sample-apiserver"}],
        "signingCertificateValidity": "730h",
        "servingCertificateValidity": "730h",
        "clientCertificateValidity": "730h",
    },
}


def etcdstorage(name: str = "sample-apiserver", **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(ORIGINAL_EXAMPLE)
    obj["metadata"]["name"] = name
    obj["spec"].update(spec)
    return obj


def sync_request(parent: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "controller": {"metadata": {"name": "etcdstorage-controller"}, "spec": {}, "status": {}},
        "parent": parent,
        "children": {"Deployment.apps/v1": {}, "Service.v1": {}, "PodDisruptionBudget.policy/v1": {}},
        "related": {"ConfigMap.v1": {}},
        "finalizing": False,
    }
    request.update(overrides)
    return request
