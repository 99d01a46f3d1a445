"""The controller namespace is one setting: the kustomization's `namespace`. An overlay that changes it moves every
object, binding and variable with it, and the hook and the job learn it from their own pod."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from etcdstorage import names
from tests.support.manifests import MANIFESTS, load, rendered

OTHER = "storage-elsewhere"


def overlay(tmp_path: Path) -> list[dict[str, Any]]:
    """manifests/ under an overlay that sets another namespace, as an operator would write it."""
    shutil.copytree(MANIFESTS, tmp_path / "base")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"namespace": OTHER, "resources": ["base"]}))
    return rendered(tmp_path)


def containers(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for document in documents:
        pod = {"Deployment": lambda d: d["spec"]["template"], "CronJob": lambda d: d["spec"]["jobTemplate"]["spec"]
               ["template"]}.get(document["kind"])  # fmt: skip
        if pod is not None:
            for container in pod(document)["spec"]["containers"]:
                found[f"{document['kind']}/{document['metadata']['name']}"] = container
    return found


def test_the_namespace_is_written_once_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == names.DEFAULT_CONTROLLER_NAMESPACE
    for path in MANIFESTS.glob("*.yaml"):
        if path.name in ("kustomization.yaml", "namespace.yaml", "kustomizeconfig.yaml"):
            continue
        for document in load(path):
            assert "namespace" not in document["metadata"], f"{path.name}: {document['kind']} names its namespace"
            assert names.DEFAULT_CONTROLLER_NAMESPACE not in yaml.safe_dump(document), path.name


def test_an_overlay_with_another_namespace_moves_every_object_binding_and_variable(tmp_path: Path) -> None:
    documents = overlay(tmp_path)
    assert names.DEFAULT_CONTROLLER_NAMESPACE not in yaml.safe_dump_all(documents)
    [namespace] = [document for document in documents if document["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == OTHER
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for document in documents:
        if document["kind"] not in cluster_scoped:
            assert document["metadata"]["namespace"] == OTHER, document["kind"]
        for subject in document.get("subjects", []):
            assert subject == {**subject, "kind": "ServiceAccount", "namespace": OTHER}


def test_the_hook_and_the_job_read_the_controller_namespace_from_their_pod() -> None:
    documents = rendered()
    [settings] = [document for document in documents if document["metadata"]["name"] == "etcdstorage-settings"]
    assert "ETCDSTORAGE_NAMESPACE" not in settings["data"]
    found = containers(documents)
    assert sorted(found) == ["CronJob/etcdstorage-cert-rotation", "Deployment/etcdstorage-hook"]
    for container in found.values():
        assert {"name": "ETCDSTORAGE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in (
            container["env"]
        )
        assert container["envFrom"] == [{"configMapRef": {"name": "etcdstorage-settings"}}]
