"""What Metacontroller last applied to a child, read back from either apply strategy's record (tests/e2e/test_children
shows with the real API server that re-applying it changes nothing)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hooks import applied
from tests.unit.captured import captured

OWNER = {
    "apiVersion": "etcd.xmudrii.com/v1alpha1",
    "kind": "EtcdStorage",
    "name": "a",
    "uid": "u-1",
    "controller": True,
}
# A Service as the API server holds it after Metacontroller's server-side apply and a kubectl edit of its own field.
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "etcd-a",
        "namespace": "storage",
        "uid": "s-1",
        "resourceVersion": "42",
        "labels": {"app": "etcd", "controller-uid": "u-1", "team": "edited-by-hand"},
        "ownerReferences": [OWNER],
        "managedFields": [
            {
                "manager": "metacontroller",
                "operation": "Apply",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:labels": {"f:app": {}, "f:controller-uid": {}},
                        "f:ownerReferences": {'k:{"uid":"u-1"}': {}},
                    },
                    "f:spec": {
                        "f:ports": {'k:{"port":2379,"protocol":"TCP"}': {".": {}, "f:name": {}, "f:targetPort": {}}},
                        "f:selector": {},
                    },
                },
            },
            {
                "manager": "kubectl-edit",
                "operation": "Update",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}},
            },
        ],
    },
    "spec": {
        "clusterIP": "10.0.0.7",
        "ports": [{"name": "etcd", "port": 2379, "protocol": "TCP", "targetPort": "etcd"}],
        "selector": {"apiserver": "a"},
        "sessionAffinity": "None",
    },
    "status": {"loadBalancer": {}},
}


def test_under_server_side_apply_only_the_fields_metacontroller_applied_are_named_with_their_live_values() -> None:
    assert applied.last_applied(SERVICE) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "etcd-a",
            "namespace": "storage",
            "labels": {"app": "etcd", "controller-uid": "u-1"},  # not the hand-edited label: kubectl-edit's
            "ownerReferences": [OWNER],
        },
        # No clusterIP or sessionAffinity (defaults, nobody applied them) and no status.
        "spec": {"ports": [{"name": "etcd", "port": 2379, "protocol": "TCP", "targetPort": "etcd"}],
                 "selector": {"apiserver": "a"}},
    }  # fmt: skip


def test_under_dynamic_apply_the_annotation_metacontroller_wrote_is_the_record() -> None:
    request = captured("existing-children")
    for kind, children in request["children"].items():
        for child in children.values():
            record = json.loads(child["metadata"]["annotations"][applied.LAST_APPLIED_ANNOTATION])
            assert applied.last_applied(child) == record, kind


def test_every_child_is_kept_in_a_fixed_order_or_none_when_one_has_no_record() -> None:
    children = captured("existing-children")["children"]
    kept = applied.kept_children(children)
    assert kept is not None
    assert [child["kind"] for child in kept] == ["Deployment", "PodDisruptionBudget", "Service"]
    [service] = children["Service.v1"].values()
    del service["metadata"]["annotations"][applied.LAST_APPLIED_ANNOTATION]
    assert applied.kept_children(children) is None


def broken(change: str) -> dict[str, Any]:
    service = copy.deepcopy(SERVICE)
    entry = service["metadata"]["managedFields"][0]
    if change == "fields":
        entry["fieldsV1"]["f:spec"]["f:ports"] = {"k:not json": {}}
    elif change == "manager":
        entry["manager"] = "my-controller"
    elif change == "annotation":
        service["metadata"]["managedFields"] = []
        service["metadata"]["annotations"] = {applied.LAST_APPLIED_ANNOTATION: "{"}
    return service


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("fields", id="a field set that does not parse"),
        pytest.param("manager", id="applied under another field manager's name"),
        pytest.param("annotation", id="an annotation that is not JSON"),
    ],
)
def test_a_child_without_a_readable_record_has_none(change: str) -> None:
    assert applied.last_applied(broken(change)) is None
