"""The HTTP edge: bad input becomes a 422 naming the problem, never a 500 and never a 200 with fewer children; a spec
the hook refuses is a 200 that says why in status and hands every child back as Metacontroller last applied it."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdstorage.settings import Settings
from hooks import app as app_module
from hooks import applied, status
from hooks import sync as sync_hooks
from hooks.app import create_app
from tests.support.asgi import get, post
from tests.support.mutations import json_values, mutated_requests
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage, sync_request
from tests.unit.captured import Mutated, body, captured, expected_children, mutated_captured

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


def test_an_invalid_spec_is_answered_ready_false_naming_every_problem_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="etcdstorage.hook"):
        answer = sync(sync_request(etcdstorage("calico", servingCertificateValidity="1d")))
    assert answer.status_code == 200
    [ready] = answer.json()["status"]["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert "metadata.name: 'calico' is reserved" in ready["message"]
    assert "spec.servingCertificateValidity" in ready["message"]
    assert answer.json()["children"] == []  # it had none, and none is created for a spec the hook cannot read
    assert "refused EtcdStorage name=calico" in caplog.text


def test_an_invalid_spec_whose_children_carry_no_record_of_what_was_applied_is_refused_with_a_422() -> None:
    request = captured("existing-children")
    request["parent"]["spec"]["replicas"] = 0
    [deployment] = request["children"]["Deployment.apps/v1"].values()
    del deployment["metadata"]["annotations"][applied.LAST_APPLIED_ANNOTATION]  # adopted, never applied
    answer = sync(request)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_spec"
    assert any("spec.replicas" in problem for problem in answer.json()["problems"])


def test_customize_answers_nothing_for_a_parent_without_a_usable_name_so_that_its_sync_can_say_why() -> None:
    answer = post(APP, "/customize", json.dumps({"parent": {"metadata": {"name": "Bad.Name"}}}).encode())
    assert answer.status_code == 200
    assert answer.json() == {"relatedResources": []}
    refused = sync(sync_request(etcdstorage("Bad.Name")))
    assert status.ready_condition(refused.json()["status"])["reason"] == "InvalidSpec"


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
    if answer.status_code == 200 and refused(answer.json()):
        assert answer.json()["children"] == kept(request)
    elif answer.status_code == 200 and answer.json()["children"] == []:
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


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated_captured())
def test_a_captured_request_broken_in_places_gets_every_child_or_a_4xx_never_a_500(mutated: Mutated) -> None:
    """The same property on the bodies Metacontroller really sends: children with status, the report annotation
    (mutated inside its JSON too, times near years 1 and 9999 included), managedFields."""
    request = mutated.request
    answer = sync(body(request))
    assert answer.status_code in (200, 422), answer.text
    assert len(answer.content) < 100_000  # an answer is never a copy of what it refuses
    if answer.status_code == 422:
        assert answer.json()["problems"], "a refusal must say what is wrong"
    elif refused(answer.json()):
        assert answer.json()["children"] == kept(request)
    elif answer.json()["children"] == []:
        assert request["finalizing"] is True
        assert answer.json()["finalized"] is True
    else:
        assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == expected_children(request)


def refused(answer: dict[str, Any]) -> bool:
    """Whether the answer refuses the spec; a refusal says why in the one condition it holds."""
    ready = status.ready_condition(answer["status"])
    if ready.get("reason") != status.INVALID_SPEC:
        return False
    assert answer["status"] == {"conditions": [ready]}
    assert ready["status"] == "False"
    assert "is invalid" in ready["message"]
    return True


def kept(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every observed child as Metacontroller last applied it: none dropped, none changed."""
    children = [child for kind in sorted(request["children"]) for _, child in sorted(request["children"][kind].items())]
    records = [applied.last_applied(child) for child in children]
    assert None not in records
    return [record for record in records if record is not None]


limits = st.builds(
    Settings,
    hook_max_body_bytes=st.integers(min_value=1, max_value=100_000),
    hook_max_json_values=st.integers(min_value=1, max_value=10_000),
    hook_max_objects_per_kind=st.integers(min_value=1, max_value=4),
    hook_max_spec_list_items=st.integers(min_value=1, max_value=3),
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated_captured(min_changes=0, max_changes=1), limits)
def test_under_any_limits_a_request_gets_every_child_or_a_4xx(mutated: Mutated, chosen: Settings) -> None:
    """Limits refuse, they never trim: whichever limit a request passes, it is answered whole or refused."""
    request = mutated.request
    answer = post(create_app(chosen, clock=lambda: datetime(2026, 11, 21, tzinfo=UTC)), "/sync", body(request))
    assert answer.status_code in (200, 413, 422), answer.text
    if answer.status_code != 200:
        assert answer.json()["problems"]
    elif refused(answer.json()):
        assert answer.json()["children"] == kept(request)
    elif answer.json()["children"] != [] or not request["finalizing"]:
        assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == expected_children(request)


def metric(app: Any, line: str) -> float:
    """The value of one sample of the app's /metrics, 0 when it has none yet."""
    for sample in get(app, "/metrics").text.splitlines():
        if sample.startswith(line + " "):
            return float(sample.rsplit(" ", 1)[1])
    return 0.0


def invalid_spec_with_unrecorded_children() -> bytes:
    request = captured("existing-children")
    request["parent"]["metadata"]["name"] = "Bad.Name"
    for child in request["children"]["Service.v1"].values():
        child["metadata"]["annotations"] = {}
    return body(request)


def too_many_deployments() -> bytes:
    request = captured("existing-children")
    request["children"]["Deployment.apps/v1"] |= {f"kube-apiserver-storage/extra-{i}": {} for i in range(17)}
    return body(request)


@pytest.mark.parametrize(
    ("path", "sent", "code", "reason"),
    [
        pytest.param("/sync", b"{", 422, "invalid_json", id="a body that is not JSON"),
        pytest.param("/sync", b'{"a":' * 60_000 + b"1" + b"}" * 60_000, 422, "invalid_json",
                     id="a body nested 60,000 objects deep"),
        pytest.param("/sync", b"{}", 422, "invalid_request", id="JSON that is no hook request"),
        pytest.param("/sync", invalid_spec_with_unrecorded_children(), 422, "invalid_spec",
                     id="an invalid EtcdStorage whose children cannot be handed back as applied"),
        pytest.param("/sync", too_many_deployments(), 422, "too_many_objects", id="more children than a kind may have"),
        pytest.param("/sync", b" " * (Settings().hook_max_body_bytes + 1), 413, "body_too_large",
                     id="a body over the size limit"),
        pytest.param("/sync", b"[" + b"0," * 300_000 + b"0]", 413, "too_many_values",
                     id="a body with more values than the limit"),
        pytest.param("/customize", b"[", 422, "invalid_json", id="a customize body that is not JSON"),
        pytest.param("/customize", b" " * (Settings().hook_max_body_bytes + 1), 413, "body_too_large",
                     id="a customize body over the size limit"),
    ],
)  # fmt: skip
def test_every_refusal_is_counted_by_reason_and_code(path: str, sent: bytes, code: int, reason: str) -> None:
    app = create_app(Settings())
    answer = post(app, path, sent)
    assert (answer.status_code, answer.json()["error"]) == (code, reason)
    assert metric(app, f'etcdstorage_hook_errors_total{{path="{path}",reason="{reason}"}}') == 1
    assert metric(app, f'etcdstorage_hook_requests_total{{code="{code}",path="{path}"}}') == 1
    assert metric(app, f'etcdstorage_hook_request_duration_seconds_count{{path="{path}"}}') == 1


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("sync", id="a failure of the sync itself"),
        pytest.param("encode_answer", id="a failure to encode the answer, which used to escape as a bare 500"),
    ],
)
def test_a_failure_of_the_hook_is_a_counted_json_500_and_one_bounded_log_line(
    broken: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("boom " + "x" * 10_000)

    monkeypatch.setattr(sync_hooks if broken == "sync" else app_module, broken, fail)
    app = create_app(Settings())
    with caplog.at_level(logging.ERROR, logger="etcdstorage.hook"):
        answer = post(app, "/sync", body(captured("existing-children")))
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal"
    assert metric(app, 'etcdstorage_hook_errors_total{path="/sync",reason="internal"}') == 1
    assert metric(app, 'etcdstorage_hook_requests_total{code="500",path="/sync"}') == 1
    (record,) = caplog.records
    assert "boom" in record.getMessage()
    assert len(record.getMessage()) < 5_000  # the frames, and the error's text cut short
