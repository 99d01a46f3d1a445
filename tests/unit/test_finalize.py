"""The finalize answer (`finalizing: true`) for each deletionPolicy, from the job's key-deletion report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etcdstorage import deletion, names
from etcdstorage.settings import Settings
from hooks import sync
from hooks.wire import SyncRequest
from tests.support.objects import etcdstorage, sync_request
from tests.support.reports import related

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
UID = "0c7d5f9e-2b1a-4c55-9a3e-6f1d2c3b4a50"  # the example's
PREFIX = "/etcdstorage/sample-apiserver/"


def finalizing(policy: str | None, annotations: dict[str, str] | None) -> dict[str, Any]:
    parent = etcdstorage(**({} if policy is None else {"deletionPolicy": policy}))
    parent["metadata"]["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    extra = {} if annotations is None else {"related": related("sample-apiserver", annotations)}
    request = sync_request(parent, finalizing=True, **extra)
    answer = sync.sync(SyncRequest.model_validate(request), Settings(), NOW)
    return answer.model_dump(exclude_none=True)


def attempt(**fields: Any) -> dict[str, str]:
    written = {"uid": UID, "prefix": PREFIX, "time": NOW - timedelta(minutes=1), **fields}
    return deletion.to_annotations(deletion.KeyDeletion(**written))


def ready(answer: dict[str, Any]) -> dict[str, Any]:
    [condition] = answer["status"]["conditions"]
    assert condition["type"] == "Ready"
    assert condition["status"] == "False"
    return dict(condition)


@pytest.mark.parametrize("policy", [None, "Retain"])
def test_retain_goes_at_once_whatever_was_reported(policy: str | None) -> None:
    assert finalizing(policy, None)["finalized"] is True
    assert finalizing(policy, attempt(remaining=5))["finalized"] is True


def test_delete_waits_for_the_job_with_no_child_and_a_reason() -> None:
    answer = finalizing("Delete", None)
    assert answer["finalized"] is False
    assert answer["children"] == []  # Metacontroller deletes the proxies: the tenant writes nothing more
    assert answer["resyncAfterSeconds"] == Settings().waiting_resync_seconds
    condition = ready(answer)
    assert condition["reason"] == "DeletingKeys"
    assert f"waiting for the cert-rotation job (CronJob {names.DEFAULT_CONTROLLER_NAMESPACE}/" in condition["message"]
    assert PREFIX in condition["message"]
    assert "keysRemaining" not in answer["status"]


def test_delete_shows_the_keys_left_as_the_job_counted_them() -> None:
    answer = finalizing("Delete", attempt(deleted=10, remaining=3))
    assert answer["finalized"] is False
    assert answer["status"]["keysRemaining"] == 3
    assert ready(answer)["message"] == f"deleting the keys under {PREFIX}: 3 left at 2026-12-01T11:59:00Z"


def test_delete_goes_once_the_job_counted_no_key_left_for_this_object() -> None:
    assert finalizing("Delete", attempt(deleted=10, remaining=0))["finalized"] is True


def test_a_deletion_reported_for_an_earlier_object_of_the_same_name_is_not_this_ones() -> None:
    answer = finalizing("Delete", attempt(uid="another-uid", deleted=10, remaining=0))
    assert answer["finalized"] is False
    assert ready(answer)["reason"] == "DeletingKeys"


def test_a_failed_deletion_says_what_it_met_and_the_fix() -> None:
    problem = "tenant-proxy purge-prefix: list keys under /etcdstorage/sample-apiserver/: context deadline exceeded"
    answer = finalizing("Delete", attempt(problem=problem))
    assert answer["finalized"] is False
    condition = ready(answer)
    assert condition["reason"] == "KeyDeletionFailed"
    assert problem in condition["message"]
    assert "ETCDSTORAGE_CORE_ETCD_URLS" in condition["message"]
    assert "set spec.deletionPolicy to Retain" in condition["message"]
    # A run that counted 0 but met a problem on the way (the report write) is not complete either.
    assert finalizing("Delete", attempt(problem=problem, remaining=0))["finalized"] is False


def test_an_unreadable_report_is_a_reason_not_a_crash() -> None:
    answer = finalizing("Delete", {names.ANNOTATION_KEY_DELETION: '{"uid": 1}'})
    assert answer["finalized"] is False
    assert ready(answer)["reason"] == "KeyDeletionFailed"
    assert names.ANNOTATION_KEY_DELETION in ready(answer)["message"]
