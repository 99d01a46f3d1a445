"""metacontroller/ patches Metacontroller's client rate. The release manifests come from GitHub, which this machine
cannot reach: the test renders the kustomization over a stand-in of the one object it patches, the release's
StatefulSet, written as v4.17.2 ships it (container 0 `metacontroller` with two args)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.support.manifests import ROOT, rendered

RELEASE = "https://github.com/metacontroller/metacontroller//manifests/production?ref=v4.17.2"
STAND_IN = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "metacontroller", "namespace": "metacontroller"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "metacontroller"}},
        "serviceName": "",
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "metacontroller"}},
            "spec": {
                "serviceAccountName": "metacontroller",
                "containers": [
                    {
                        "name": "metacontroller",
                        "image": "ghcr.io/metacontroller/metacontroller:v4.17.2",
                        "command": ["/usr/bin/metacontroller"],
                        "args": ["--zap-log-level=4", "--discovery-interval=20s"],
                    }
                ],
            },
        },
    },
}


def test_metacontroller_runs_with_a_client_rate_sized_for_a_thousand_tenants(tmp_path: Path) -> None:
    kustomization = yaml.safe_load((ROOT / "metacontroller" / "kustomization.yaml").read_text())
    assert RELEASE in kustomization["resources"]
    shutil.copy(ROOT / "metacontroller" / "compositecontroller.yaml", tmp_path)
    (tmp_path / "release.yaml").write_text(yaml.safe_dump(STAND_IN))
    kustomization["resources"] = ["release.yaml" if item == RELEASE else item for item in kustomization["resources"]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    [statefulset] = [document for document in rendered(tmp_path) if document["kind"] == "StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "--zap-log-level=4", "--discovery-interval=20s", "--client-go-qps=50", "--client-go-burst=100"
    ]  # fmt: skip
    assert container["image"] == "ghcr.io/metacontroller/metacontroller:v4.17.2"
