"""The HTTP edge: bad input becomes a 422 naming the problem, never a 500 and never a 200 with fewer children."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from hooks.app import create_app
from hooks.settings import Settings
from tests.support.asgi import get, post
from tests.support.mutations import json_values, mutated_requests
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage, sync_request

APP = create_app(Settings(), clock=lambda: datetime(2026, 11, 21, tzinfo=UTC))
EXPECTED_CHILDREN = [
    ("Deployment", "etcd-sample-apiserver"),
    ("Service", "etcd-sample-apiserver"),
    ("PodDisruptionBudget", "etcd-sample-apiserver"),
]


def sync(body: Any) -> Any:
    return post(APP, "/sync", body if isinstance(body, bytes) else json.dumps(body).encode())


def test_a_valid_request_gets_every_child() -> None:
    answer = sync(sync_request(ORIGINAL_EXAMPLE))
    assert answer.status_code == 200
    assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == EXPECTED_CHILDREN


def test_fields_metacontroller_adds_later_are_ignored() -> None:
    answer = sync({**sync_request(ORIGINAL_EXAMPLE), "someFutureField": {"x": 1}})
    assert answer.status_code == 200


def test_a_body_that_is_not_json_is_refused_as_such() -> None:
    answer = sync(b"<html>")
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_json"


def test_a_request_without_children_is_refused_naming_the_field() -> None:
    request = sync_request(ORIGINAL_EXAMPLE)
    del request["children"]
    answer = sync(request)
    assert answer.status_code == 422
    assert answer.json()["problems"] == ["children: Field required"]


def test_an_invalid_spec_is_refused_with_every_problem(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="etcdstorage.hook"):
        answer = sync(sync_request(etcdstorage("calico", servingCertificateValidity="1d")))
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_spec"
    assert len(body["problems"]) == 2
    assert "spec.servingCertificateValidity" in body["message"]
    assert "name=calico" in caplog.text


def test_customize_refuses_a_parent_without_a_usable_name() -> None:
    answer = post(APP, "/customize", json.dumps({"parent": {"metadata": {"name": "Bad.Name"}}}).encode())
    assert answer.status_code == 422


def test_health_and_metrics_are_served_and_errors_are_counted_by_reason() -> None:
    app = create_app(Settings())
    post(app, "/sync", b"{")
    post(app, "/sync", json.dumps(sync_request(ORIGINAL_EXAMPLE)).encode())
    assert get(app, "/healthz").json() == {"status": "ok"}
    metrics = get(app, "/metrics").text
    assert 'etcdstorage_hook_errors_total{path="/sync",reason="invalid_json"} 1.0' in metrics
    assert 'etcdstorage_hook_requests_total{code="200",path="/sync"} 1.0' in metrics
    assert 'etcdstorage_hook_request_duration_seconds_count{path="/sync"} 2.0' in metrics


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated_requests())
def test_a_mutated_request_gets_every_child_or_a_422_never_a_500(request: dict[str, Any]) -> None:
    answer = sync(request)
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 200 and answer.json()["children"] == []:
        # Only a parent being deleted may lose its children (a refused one is let go: see test_sync).
        assert request["finalizing"] is True
        assert answer.json()["finalized"] is True
    elif answer.status_code == 200:
        name = "etcd-" + request["parent"]["metadata"]["name"]
        assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == [
            (kind, name) for kind, _ in EXPECTED_CHILDREN
        ]
    else:
        assert answer.json()["problems"], "a refusal must say what is wrong"


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_json_is_refused_never_a_500(body: Any) -> None:
    answer = sync(body)
    assert answer.status_code == 422
