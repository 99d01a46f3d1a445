"""Consumers: when the job counts a workload as running its current template, and what the hook shows of them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from certrotation.consumers import rolled_out
from etcdstorage import consumers, names
from etcdstorage.settings import Settings
from hooks import sync
from hooks.wire import SyncRequest
from tests.support.objects import etcdstorage, sync_request
from tests.support.reports import related

NOW = datetime(2026, 12, 1, tzinfo=UTC)
API = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "tenant", "name": "api"}


@pytest.mark.parametrize(
    ("workload", "current"),
    [
        ({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
          "status": {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2}}, True),
        ({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
          "status": {"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2}}, False),  # not seen yet
        ({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 2},
          "status": {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3}}, False),  # an old pod left
        ({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {},
          "status": {"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1}}, True),  # replicas default 1
        ({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 1}}, False),  # no status yet
        ({"kind": "StatefulSet", "metadata": {"generation": 3}, "spec": {"replicas": 3},
          "status": {"observedGeneration": 3, "updatedReplicas": 3, "updateRevision": "r2",
                     "currentRevision": "r2"}}, True),
        ({"kind": "StatefulSet", "metadata": {"generation": 3}, "spec": {"replicas": 3},
          "status": {"observedGeneration": 3, "updatedReplicas": 3, "updateRevision": "r2",
                     "currentRevision": "r1"}}, False),
    ],
)  # fmt: skip
def test_a_workload_is_current_when_its_controller_reports_every_pod_on_the_template(
    workload: dict[str, Any], current: bool
) -> None:
    assert rolled_out(workload) is current


def shown(annotations: dict[str, str] | None, spec_consumers: list[dict[str, str]]) -> list[dict[str, Any]]:
    parent = etcdstorage(consumers=spec_consumers)
    extra = {} if annotations is None else {"related": related("sample-apiserver", annotations)}
    answer = sync.sync(SyncRequest.model_validate(sync_request(parent, **extra)), Settings(), NOW)
    return list(answer.status["consumers"])


def test_status_shows_each_consumer_of_the_spec_as_the_job_last_found_it() -> None:
    state = consumers.ConsumerState(kind="Deployment", namespace="tenant", name="api", certificatesHash="ab",
                                    restarted=True, current=True)  # fmt: skip
    gone = consumers.ConsumerState(kind="Deployment", namespace="tenant", name="removed-from-spec")
    assert shown(consumers.to_annotations([state, gone]), [API]) == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "tenant", "name": "api",
         "certificatesHash": "ab", "restarted": True, "current": True, "problem": ""},
    ]  # fmt: skip


def test_a_consumer_the_job_has_not_looked_at_yet_says_so() -> None:
    [waiting] = shown(None, [API])
    assert (waiting["restarted"], waiting["problem"]) == (False, "not looked at by the cert-rotation job yet")


def test_an_unreadable_consumers_report_is_shown_as_the_problem_not_a_crash() -> None:
    [item] = shown({names.ANNOTATION_CONSUMERS: "[1]"}, [API])
    assert names.ANNOTATION_CONSUMERS in item["problem"]


def test_without_consumers_the_status_has_no_such_field() -> None:
    answer = sync.sync(SyncRequest.model_validate(sync_request(etcdstorage())), Settings(), NOW)
    assert "consumers" not in answer.status
