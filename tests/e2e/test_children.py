"""The hook's children in a real API server. For EtcdStorages created there, the requests Metacontroller would send
are built from the live objects and POSTed to the hook served by a real uvicorn process (`python -m hooks`); every
child it answers is applied as Metacontroller applies it (server-side apply, field manager `metacontroller`, with the
parent's controller-uid label and ownerReference) into the controller namespace.

No controller runs here, so Deployments never get pods: the proxy pod template meets Pod admission through a
server-side dry run. Objects are read as Metacontroller's informers hold them, with their managedFields."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest

from etcdstorage import names
from testbed import harness, processes
from tests.e2e.install import C, failures_of, get, load, pod_dry_run, resource_versions, run_job, tenant_from_example

pytestmark = pytest.mark.e2e

FIELD_MANAGER: Final = "metacontroller"  # Metacontroller's with --apply-strategy=server-side-apply
CONTROLLER_UID_LABEL: Final = "controller-uid"  # what generateSelector selects children by
[COMPOSITE_CONTROLLER] = load(harness.REPO / "metacontroller" / "compositecontroller.yaml")
HOOK_START_TIMEOUT: Final = 20.0  # seconds
# The original project's example as it is, and one using every optional field added since.
PARENTS: Final = {
    "the original example": {},
    "the new optional fields": {"renewBefore": "240h", "keyAlgorithm": "RSA2048", "replicas": 2},
}

Body = dict[str, Any]


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """`python -m hooks` on a free port (default settings: the controller namespace of manifests/), as a client."""
    port = processes.free_port()
    argv = [sys.executable, "-m", "hooks", "--port", str(port), "--log-level", "warning"]
    process = processes.start("hook", argv, log_dir=tmp_path_factory.mktemp("hook"), cwd=harness.REPO)
    with processes.running(process), httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        process.wait_until(lambda: processes.accepts_connections(port), what="listening", timeout=HOOK_START_TIMEOUT)
        assert client.get("/healthz").status_code == 200
        yield client


@pytest.fixture(scope="module", params=list(PARENTS.values()), ids=list(PARENTS))
def parent(
    request: pytest.FixtureRequest, installed: harness.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Body]:
    """A live EtcdStorage whose certificates the job has issued, shared by this module's tests (each applies what the
    hook answers, which converges); it and its children are deleted afterwards (nothing garbage-collects here)."""
    name, _ = tenant_from_example(installed, "children", request.param)
    try:
        ran = run_job(installed, tmp_path_factory.mktemp("job"))
        assert failures_of(ran.stderr, name) == [], ran.stderr
        yield get(installed, "etcdstorage", "", name)
    finally:
        for kind in ("deployment", "service", "poddisruptionbudget"):
            installed.kubectl("delete", kind, names.proxy_name(name), f"--namespace={C}", "--ignore-not-found")
        installed.kubectl("delete", "etcdstorage", name, "--ignore-not-found")


def call(hook: httpx.Client, path: str, body: Body) -> Body:
    answer = hook.post(path, json=body)
    assert answer.status_code == 200, answer.text
    parsed: Body = answer.json()
    return parsed


def live(plane: harness.ControlPlane, resource: str, namespace: str, name: str) -> Body | None:
    """The object as Metacontroller's informers hold it (managedFields included), None when there is none."""
    found = plane.kubectl(
        "get",
        resource,
        name,
        f"--namespace={namespace}",
        "--ignore-not-found",
        "--show-managed-fields",
        "--output=json",
    ).stdout
    return json.loads(found) if found.strip() else None


def related_for(plane: harness.ControlPlane, hook: httpx.Client, parent: Body) -> dict[str, dict[str, Body]]:
    """What Metacontroller sends as `related`: the objects the customize hook asks for, as they are live."""
    rules = call(hook, "/customize", {"controller": COMPOSITE_CONTROLLER, "parent": parent})["relatedResources"]
    related: dict[str, dict[str, Body]] = {}
    for rule in rules:
        group = rule["apiVersion"].rpartition("/")[0]
        for name in rule["names"]:
            found = live(plane, f"{rule['resource']}.{group}".rstrip("."), rule["namespace"], name)
            if found is not None:
                kind = f"{found['kind']}.{found['apiVersion']}"
                related.setdefault(kind, {})[f"{rule['namespace']}/{name}"] = found
    return related


def sync_request(plane: harness.ControlPlane, hook: httpx.Client, parent: Body, children: list[Body]) -> Body:
    """The sync request for `parent` with `children` observed, keyed as Metacontroller keys them (for a cluster-scoped
    parent "<Kind>.<apiVersion>", then "<namespace>/<name>"), one entry per child type even when empty."""
    observed: dict[str, dict[str, Body]] = {
        "Deployment.apps/v1": {},
        "Service.v1": {},
        "PodDisruptionBudget.policy/v1": {},
    }
    for child in children:
        key = f"{child['metadata']['namespace']}/{child['metadata']['name']}"
        observed[f"{child['kind']}.{child['apiVersion']}"][key] = child
    return {
        "controller": COMPOSITE_CONTROLLER,
        "parent": parent,
        "children": observed,
        "related": related_for(plane, hook, parent),
        "finalizing": False,
    }


def apply_as_metacontroller(plane: harness.ControlPlane, parent: Body, desired: list[Body]) -> list[Body]:
    """Apply the hook's children as Metacontroller does with generateSelector and server-side apply: its label and a
    controller reference to the parent added, then applied with force. Returns the live objects."""
    documents = []
    for child in desired:
        document = copy.deepcopy(child)
        metadata = document["metadata"]
        metadata["labels"] = {**metadata.get("labels", {}), CONTROLLER_UID_LABEL: parent["metadata"]["uid"]}
        metadata["ownerReferences"] = [
            {
                "apiVersion": parent["apiVersion"],
                "kind": parent["kind"],
                "name": parent["metadata"]["name"],
                "uid": parent["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        documents.append(document)
    applied = plane.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        "--force-conflicts",
        "--filename=-",
        "--output=json",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
    )
    listed = json.loads(applied.stdout)
    items: list[Body] = listed["items"] if listed.get("kind") == "List" else [listed]
    return items


def write_status(plane: harness.ControlPlane, parent: Body, status: Body) -> Body:
    """What Metacontroller does with the hook's status: replace the whole status, with observedGeneration, through
    the status subresource. Returns the parent as stored."""
    current = get(plane, "etcdstorage", "", parent["metadata"]["name"])
    current["status"] = {**status, "observedGeneration": current["metadata"]["generation"]}
    replaced = plane.kubectl("replace", "--subresource=status", "--filename=-", "-o=json", input=json.dumps(current))
    stored: Body = json.loads(replaced.stdout)
    return stored


def test_the_api_server_accepts_every_child_and_applying_the_same_answer_again_changes_nothing(
    installed: harness.ControlPlane, hook: httpx.Client, parent: Body
) -> None:
    answer = call(hook, "/sync", sync_request(installed, hook, parent, []))
    applied = apply_as_metacontroller(installed, parent, answer["children"])

    proxy = names.proxy_name(parent["metadata"]["name"])
    assert sorted((child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]) for child in applied) == [
        ("Deployment", C, proxy),
        ("PodDisruptionBudget", C, proxy),
        ("Service", C, proxy),
    ]
    [deployment] = [child for child in applied if child["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == parent["spec"].get("replicas", 3)
    assert "annotations" not in deployment["spec"]["template"]["metadata"]  # no certificate digest: no rolls
    selection = [f"{child['kind'].lower()}/{child['metadata']['name']}" for child in applied]
    before = resource_versions(installed, f"--namespace={C}", *selection)

    apply_as_metacontroller(installed, parent, answer["children"])

    assert resource_versions(installed, f"--namespace={C}", *selection) == before


def test_the_restricted_pod_security_level_of_the_controller_namespace_admits_the_proxy_pod(
    installed: harness.ControlPlane, hook: httpx.Client, parent: Body
) -> None:
    [namespace] = load(harness.REPO / "manifests" / "namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert get(installed, "namespace", "", C)["metadata"]["labels"] == namespace["metadata"]["labels"] | {
        "kubernetes.io/metadata.name": C
    }
    answer = call(hook, "/sync", sync_request(installed, hook, parent, []))
    [deployment] = apply_as_metacontroller(
        installed, parent, [child for child in answer["children"] if child["kind"] == "Deployment"]
    )
    template = deployment["spec"]["template"]  # as stored, with the API server's defaults

    admitted = pod_dry_run(installed, template, C, f"{deployment['metadata']['name']}-admission")

    assert admitted.returncode == 0, admitted.stderr
    assert "Warning" not in admitted.stderr, admitted.stderr
    # The same check refuses a pod that breaks the level, so the acceptance above means something.
    escalating = copy.deepcopy(template)
    escalating["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = pod_dry_run(installed, escalating, C, f"{deployment['metadata']['name']}-admission")
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr


def test_the_live_children_fed_back_give_the_same_children_and_a_status_that_settles(
    installed: harness.ControlPlane, hook: httpx.Client, parent: Body
) -> None:
    first = call(hook, "/sync", sync_request(installed, hook, parent, []))
    children = apply_as_metacontroller(installed, parent, first["children"])
    stored = write_status(installed, parent, first["status"])
    # The CRD keeps every status field the hook writes: a pruned one would differ on every sync, and each difference
    # is a status write that triggers the next sync.
    assert stored["status"] == {**first["status"], "observedGeneration": stored["metadata"]["generation"]}

    second = call(hook, "/sync", sync_request(installed, hook, stored, children))
    assert second["children"] == first["children"]
    versions = {child["metadata"]["uid"]: child["metadata"]["resourceVersion"] for child in children}
    reapplied = apply_as_metacontroller(installed, parent, second["children"])
    assert {child["metadata"]["uid"]: child["metadata"]["resourceVersion"] for child in reapplied} == versions
    stored = write_status(installed, parent, second["status"])

    third = call(hook, "/sync", sync_request(installed, hook, stored, reapplied))
    assert third["children"] == first["children"]
    assert third["status"] == second["status"]  # a fixed point: Metacontroller has nothing more to write
    assert third["status"]["keyPrefix"] == names.key_prefix(parent["metadata"]["name"])


def live_children(plane: harness.ControlPlane, parent: Body) -> list[Body]:
    proxy = names.proxy_name(parent["metadata"]["name"])
    found = [live(plane, resource, C, proxy) for resource in ("deployments.apps", "services", "poddisruptionbudgets")]
    return [child for child in found if child is not None]


def test_a_refused_spec_changes_no_child_and_kubectl_get_shows_ready_false_with_the_reason(
    installed: harness.ControlPlane, hook: httpx.Client, parent: Body
) -> None:
    """The spec is refused in the request only (`replicas: 0`, which the CRD refuses today): as an object stored
    before the CRD's validation, or one a newer hook refuses, is seen. The children are live and applied as
    Metacontroller applies them; the answer is applied the same way and its status written through /status."""
    first = call(hook, "/sync", sync_request(installed, hook, parent, []))
    apply_as_metacontroller(installed, parent, first["children"])
    stored = write_status(installed, parent, first["status"])
    before = live_children(installed, parent)
    assert len(before) == 3
    refused = copy.deepcopy(stored)
    refused["spec"]["replicas"] = 0

    answer = call(hook, "/sync", sync_request(installed, hook, refused, before))
    apply_as_metacontroller(installed, parent, answer["children"])
    write_status(installed, parent, answer["status"])

    assert live_children(installed, parent) == before  # the same resourceVersions, fields and owners
    assert sorted(child["kind"] for child in answer["children"]) == ["Deployment", "PodDisruptionBudget", "Service"]
    name = parent["metadata"]["name"]
    header, row = installed.kubectl("get", "etcdstorage", name).stdout.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert (columns["NAME"], columns["READY"], columns["REASON"]) == (name, "False", "InvalidSpec")
    [ready] = get(installed, "etcdstorage", "", name)["status"]["conditions"]
    assert "spec.replicas" in ready["message"]
    assert "children are kept" in ready["message"]

    # Fixed, the next answer is the usual one again and Ready follows the children.
    fixed = call(hook, "/sync", sync_request(installed, hook, get(installed, "etcdstorage", "", name), before))
    assert fixed["children"] == first["children"]
    assert {c["type"]: c["reason"] for c in fixed["status"]["conditions"]}["Deployed"] == "Deployed"


def test_the_children_of_an_earlier_object_of_the_same_name_are_named_as_stale(
    installed: harness.ControlPlane, hook: httpx.Client, parent: Body
) -> None:
    """As after deleting an EtcdStorage and creating it again before the garbage collector (none runs here) removed
    the old one's children: Metacontroller hands none of them over, as they are another uid's."""
    answer = call(hook, "/sync", sync_request(installed, hook, parent, []))
    apply_as_metacontroller(installed, parent, answer["children"])
    stranger = {**parent, "metadata": {**parent["metadata"], "uid": "00000000-0000-0000-0000-000000000001"}}

    seen = call(hook, "/sync", sync_request(installed, hook, stranger, []))

    conditions = {c["type"]: c for c in seen["status"]["conditions"]}
    assert conditions["Deployed"]["reason"] == "StaleChild"
    proxy = f"{C}/{names.proxy_name(parent['metadata']['name'])}"
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert (
            f"{kind} {proxy} belongs to EtcdStorage uid {parent['metadata']['uid']}"
            in conditions["Deployed"]["message"]
        )
    assert conditions["ProxyAvailable"]["reason"] == "StaleChild"
    # The job's report on <N>-ca-cert names the other uid as owner: not taken for this object's.
    assert conditions["CertificatesReady"]["reason"] == "StaleCertificateReport"
    assert conditions["Ready"]["status"] == "False"
