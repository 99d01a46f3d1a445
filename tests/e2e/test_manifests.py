"""Every manifest of the project in a real API server: `kubectl apply -k manifests/` installs for real and a second
apply changes nothing; the pod templates pass the `restricted` Pod Security level of their namespace; the examples
apply; the CompositeController applies to the pinned Metacontroller API and agrees with our CRD, the children our
hook returns and the hook's Service; Metacontroller's manifests and image are pinned to one release."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from etcdstorage import durations, names
from etcdstorage.settings import Settings
from hooks import sync, wire
from hooks.app import create_app
from testbed import harness
from tests.e2e.install import EXAMPLE_NAMESPACE, EXAMPLES, MANIFESTS, C, load, pod_dry_run, resource_versions
from tests.support import asgi, objects
from tests.support.manifests import one

pytestmark = pytest.mark.e2e

METACONTROLLER: Final = harness.REPO / "metacontroller"
COMPOSITE_CONTROLLER: Final = METACONTROLLER / "compositecontroller.yaml"
COMPOSITE_CONTROLLER_CRD: Final = Path(__file__).parent / "compositecontroller-crd.yaml"
RESTRICTED_REFUSAL: Final = 'violates PodSecurity "restricted:latest"'


@pytest.fixture(scope="module")
def kustomized(control_plane: harness.ControlPlane) -> list[dict[str, Any]]:
    """`kubectl apply -k manifests/`, as the README says, once; the objects kustomize built for it."""
    control_plane.kubectl("apply", f"--kustomize={MANIFESTS}")
    output = control_plane.kubectl("kustomize", str(MANIFESTS)).stdout
    built = [document for document in yaml.safe_load_all(output) if document]
    # A new CRD's status is written by the API server shortly after: let that settle before versions are compared.
    for crd in (document for document in built if document["kind"] == "CustomResourceDefinition"):
        control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd['metadata']['name']}")
    return built


@pytest.fixture(scope="module")
def composite_controller_crd(control_plane: harness.ControlPlane) -> str:
    """Our stand-in for Metacontroller's CompositeController CRD, applied and Established."""
    applied = control_plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=etcdstorage-e2e",
        f"--filename={COMPOSITE_CONTROLLER_CRD}",
        "--output=name",
    )
    crd = applied.stdout.strip()
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", crd)
    return crd


def test_kubectl_apply_k_manifests_installs_every_object_and_a_second_apply_changes_nothing(
    control_plane: harness.ControlPlane, kustomized: list[dict[str, Any]]
) -> None:
    before = resource_versions(control_plane, f"--kustomize={MANIFESTS}")
    assert len(before) == len(kustomized)
    assert {"CustomResourceDefinition", "Namespace", "Deployment", "CronJob", "ConfigMap"} <= {
        document["kind"] for document in kustomized
    }

    control_plane.kubectl("apply", f"--kustomize={MANIFESTS}")

    # kubectl's client-side apply may print "configured" for a no-op patch; the server stored nothing new.
    assert resource_versions(control_plane, f"--kustomize={MANIFESTS}") == before


def pod_templates(documents: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every pod template of the workloads among `documents`: workload -> (its namespace, the template)."""
    templates = {}
    for document in documents:
        spec = document.get("spec", {})
        if document["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            workload = f"{document['kind']}/{document['metadata']['name']}"
            templates[workload] = (document["metadata"]["namespace"], spec["template"])
    return templates


def test_every_pod_template_passes_the_restricted_pod_security_level_of_the_controller_namespace(
    control_plane: harness.ControlPlane, kustomized: list[dict[str, Any]]
) -> None:
    templates = pod_templates(kustomized)
    assert sorted(templates) == ["CronJob/etcdstorage-cert-rotation", "Deployment/etcdstorage-hook"]
    for workload, (namespace, template) in templates.items():
        assert namespace == C
        admitted = pod_dry_run(control_plane, template, namespace, "pod-security-check")
        assert admitted.returncode == 0, f"{workload}: {admitted.stderr}"
        assert "Warning" not in admitted.stderr, f"{workload}: {admitted.stderr}"

    # The namespace really enforces the level: the same pod allowed to escalate privileges is refused.
    template = copy.deepcopy(templates["Deployment/etcdstorage-hook"][1])
    template["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = pod_dry_run(control_plane, template, C, "pod-security-check")
    assert refused.returncode != 0
    assert RESTRICTED_REFUSAL in refused.stderr


@pytest.fixture
def example_namespace(control_plane: harness.ControlPlane, etcdstorage_crd: str) -> Iterator[str]:
    """The namespace the examples are written for. Their objects are deleted afterwards: other tests create an
    EtcdStorage named like the example's, and the cert-rotation job would process it in every later run."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": EXAMPLE_NAMESPACE}}
    control_plane.kubectl("apply", "--filename=-", input=json.dumps(namespace))
    yield EXAMPLE_NAMESPACE
    control_plane.kubectl("delete", f"--filename={EXAMPLES}", "--ignore-not-found", "--wait=false")


def test_every_example_applies_once_its_namespace_exists_and_a_second_apply_changes_nothing(
    control_plane: harness.ControlPlane, example_namespace: str
) -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert [path.name for path in files] == ["apiserver-rbac.yaml", "consumer-rbac.yaml", "etcdstorage.yaml"]
    for path in files:
        control_plane.kubectl("apply", f"--filename={path}")
    before = resource_versions(control_plane, f"--filename={EXAMPLES}")
    assert len(before) == sum(len(load(path)) for path in files)

    control_plane.kubectl("apply", f"--filename={EXAMPLES}")

    assert resource_versions(control_plane, f"--filename={EXAMPLES}") == before


def test_the_composite_controller_applies_to_the_pinned_metacontroller_api_and_again_changes_nothing(
    control_plane: harness.ControlPlane, composite_controller_crd: str
) -> None:
    control_plane.kubectl("apply", f"--filename={COMPOSITE_CONTROLLER}")
    before = resource_versions(control_plane, f"--filename={COMPOSITE_CONTROLLER}")
    control_plane.kubectl("apply", f"--filename={COMPOSITE_CONTROLLER}")
    assert resource_versions(control_plane, f"--filename={COMPOSITE_CONTROLLER}") == before

    # Nothing was pruned: every field we wrote is one Metacontroller's API has.
    [written] = load(COMPOSITE_CONTROLLER)
    stored = json.loads(control_plane.kubectl("get", f"--filename={COMPOSITE_CONTROLLER}", "--output=json").stdout)
    assert stored["spec"] == written["spec"]

    # The stand-in CRD is strict enough to catch a misspelt update strategy, which Metacontroller would refuse.
    misspelt = copy.deepcopy(written)
    misspelt["spec"]["childResources"][0]["updateStrategy"]["method"] = "Inplace"
    refused = control_plane.kubectl(
        "apply", "--dry-run=server", "--filename=-", input=json.dumps(misspelt), check=False
    )
    assert refused.returncode != 0
    assert 'Unsupported value: "Inplace"' in refused.stderr


def kind_of(plane: harness.ControlPlane, api_version: str, resource: str) -> str:
    """The kind the API server serves as `resource` in `api_version` (discovery), or fail if it serves none."""
    path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    discovered = json.loads(plane.kubectl("get", "--raw", path).stdout)
    [kind] = [entry["kind"] for entry in discovered["resources"] if entry["name"] == resource]
    return str(kind)


def test_the_composite_controller_names_our_crd_and_every_child_type_the_hook_returns(
    control_plane: harness.ControlPlane,
) -> None:
    [controller] = load(COMPOSITE_CONTROLLER)
    spec = controller["spec"]
    [crd] = load(MANIFESTS / "crd.yaml")
    [storage_version] = [version for version in crd["spec"]["versions"] if version["storage"]]
    assert spec["parentResource"] == {
        "apiVersion": f"{crd['spec']['group']}/{storage_version['name']}",
        "resource": crd["spec"]["names"]["plural"],
    }
    assert spec["parentResource"]["apiVersion"] == names.API_VERSION
    assert storage_version["subresources"]["status"] == {}  # without it Metacontroller never starts the controller
    assert spec["generateSelector"] is True

    request = wire.SyncRequest.model_validate(objects.sync_request(objects.ORIGINAL_EXAMPLE))
    answer = sync.sync(request, Settings(), datetime.now(UTC))
    returned = {(child["apiVersion"], child["kind"]) for child in answer.children}
    listed = {
        (child["apiVersion"], kind_of(control_plane, child["apiVersion"], child["resource"]))
        for child in spec["childResources"]
    }
    assert listed == returned
    assert [child["updateStrategy"] for child in spec["childResources"]] == [{"method": "InPlace"}] * len(listed)
    # Metacontroller sends each type's observed children under "<Kind>.<apiVersion>": the keys the hook reads.
    assert {f"{kind}.{api_version}" for api_version, kind in returned} == {
        wire.DEPLOYMENTS,
        wire.SERVICES,
        wire.DISRUPTION_BUDGETS,
    }


def test_the_composite_controller_calls_the_hooks_through_the_hook_service_on_paths_it_serves() -> None:
    [controller] = load(COMPOSITE_CONTROLLER)
    service = one(MANIFESTS / "hook.yaml", "Service")  # as kustomize installs it, in the controller namespace
    [port] = service["spec"]["ports"]
    app = create_app(Settings())

    hooks = controller["spec"]["hooks"]
    assert sorted(hooks) == ["customize", "finalize", "sync"]
    # finalize is the sync handler: it branches on `finalizing` (hooks/finalize.py for deletionPolicy Delete)
    for hook, path in (("sync", "/sync"), ("finalize", "/sync"), ("customize", "/customize")):
        webhook = hooks[hook]["webhook"]
        assert "url" not in webhook  # a URL would win over the Service
        assert webhook["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "port": port["port"],
        }
        assert webhook["path"] == path
        assert asgi.post(app, path, b"{}").status_code == 422  # served: an empty body is refused, not unknown
        assert timedelta(0) < durations.parse(webhook["timeout"]) <= timedelta(seconds=30)


def test_metacontroller_manifests_and_image_are_pinned_to_the_same_release() -> None:
    kustomization = yaml.safe_load((METACONTROLLER / "kustomization.yaml").read_text())
    [remote] = [resource for resource in kustomization["resources"] if "://" in resource]
    pinned = re.fullmatch(
        r"https://github\.com/metacontroller/metacontroller//manifests/production\?ref=(v\d+\.\d+\.\d+)", remote
    )
    assert pinned, f"not a release tag of Metacontroller's production manifests: {remote}"
    tag = pinned.group(1)
    assert kustomization["images"] == [{"name": "ghcr.io/metacontroller/metacontroller", "newTag": tag}]
    assert COMPOSITE_CONTROLLER.name in kustomization["resources"]
    assert f"pinned to {tag}" in (harness.REPO / "README.md").read_text()


def test_kustomize_sets_both_images_the_hooks_and_the_tenant_proxys(
    control_plane: harness.ControlPlane, tmp_path: Path
) -> None:
    """What `kustomize edit set image etcdstorage=... etcdstorage-proxy=...` writes into an overlay reaches the hook's
    and job's containers and the setting from which the hook writes every tenant's proxy Deployment."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(MANIFESTS, overlay)],  # kustomize takes relative paths only
                "images": [
                    {"name": "etcdstorage", "newName": "registry.example/team/etcdstorage", "newTag": "9.9.9"},
                    {"name": "etcdstorage-proxy", "newName": "registry.example/team/proxy", "newTag": "9.9.9"},
                ],
            }
        )
    )
    built = [doc for doc in yaml.safe_load_all(control_plane.kubectl("kustomize", str(overlay)).stdout) if doc]
    images = {
        container["image"]
        for doc in built
        if doc["kind"] in ("Deployment", "CronJob")
        for container in (
            doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
        )["spec"]["containers"]
    }
    [settings] = [
        doc for doc in built if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "etcdstorage-settings"
    ]

    assert images == {"registry.example/team/etcdstorage:9.9.9"}
    assert settings["data"]["ETCDSTORAGE_PROXY_IMAGE"] == "registry.example/team/proxy:9.9.9"
    assert Settings().proxy_image == "etcdstorage-proxy:0.1.0"  # the default matches the kustomization's tag
