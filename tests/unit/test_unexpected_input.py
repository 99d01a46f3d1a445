"""Values of a type or a range Kubernetes never sends, where the hook reads observed objects: in a child's status, the
`<N>-ca-cert` ConfigMap and the job's report in its annotations. Most of them used to answer 500 (null, empty and
negative values, already handled, are kept beside them); the hook must still answer every child, the oddity shown
as a condition, or refuse with a 422 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.times import rfc3339
from hooks.app import create_app
from tests.support.asgi import post
from tests.unit.captured import body, ca_configmap, captured, deployment, expected_children

NOW = datetime(2026, 11, 21, 18, tzinfo=UTC)  # the captured requests' day: their certificates are valid
APP = create_app(Settings(), clock=lambda: NOW)
ODD_TYPES = [
    pytest.param(None, id="null"),
    pytest.param(True, id="a boolean"),
    pytest.param(7, id="a number"),
    pytest.param(1.5, id="a float"),
    pytest.param("Running", id="a string"),
    pytest.param([1, 2], id="a list"),
    pytest.param([], id="an empty list"),
    pytest.param({"x": {"y": []}}, id="an unrelated object"),
]


def answered(request: dict[str, Any]) -> dict[str, Any]:
    """The answer to `request`, after checking that it is a 200 with every child."""
    answer = post(APP, "/sync", body(request))
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert [(c["kind"], c["metadata"]["name"]) for c in found["children"]] == expected_children(request)
    return found  # type: ignore[no-any-return]


def condition(answer: dict[str, Any], kind: str) -> tuple[str, str]:
    (found,) = (c for c in answer["status"]["conditions"] if c["type"] == kind)
    return found["status"], found["reason"]


def report_annotations(request: dict[str, Any]) -> dict[str, Any]:
    found = ca_configmap(request)["metadata"]["annotations"]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize("value", ODD_TYPES)
def test_a_deployment_whose_status_is_not_an_object_counts_no_available_proxy(value: Any) -> None:
    request = captured("existing-children")
    deployment(request)["status"] = value
    answer = answered(request)
    assert answer["status"]["availableReplicas"] == 0
    assert condition(answer, "ProxyAvailable") == ("False", "NoProxyAvailable")


@pytest.mark.parametrize("value", [pytest.param(-1, id="a negative number"), *ODD_TYPES[:2], *ODD_TYPES[3:]])
def test_a_deployment_whose_available_replicas_are_not_a_count_counts_none(value: Any) -> None:
    request = captured("existing-children")
    deployment(request)["status"]["availableReplicas"] = value
    assert answered(request)["status"]["availableReplicas"] == 0


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        pytest.param("Deployment.apps/v1", "etcd-sample-apiserver", id="a child that is a string is refused"),
        pytest.param("Deployment.apps/v1", [], id="a child that is a list is refused"),
        pytest.param("Service.v1", 3, id="a Service that is a number is refused"),
    ],
)
def test_a_child_that_is_not_an_object_is_refused_naming_it(kind: str, value: Any) -> None:
    request = captured("existing-children")
    key = next(iter(request["children"][kind]))
    request["children"][kind][key] = value
    answer = post(APP, "/sync", body(request))
    assert answer.status_code == 422
    assert any(problem.startswith(f"children.{kind}.{key}") for problem in answer.json()["problems"])


@pytest.mark.parametrize("value", [*ODD_TYPES[1:], pytest.param({}, id="an empty object")])
def test_a_ca_configmap_whose_metadata_is_not_an_object_is_no_report_yet(value: Any) -> None:
    request = captured("existing-children")
    ca_configmap(request)["metadata"] = value
    assert condition(answered(request), "CertificatesReady") == ("False", "WaitingForCertificates")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(True, id="a boolean"),
        pytest.param(7, id="a number"),
        pytest.param("etcd.xmudrii.com/certificates", id="a string naming the report"),
        pytest.param([names.ANNOTATION_CERTIFICATES], id="a list naming the report"),
    ],
)
def test_ca_configmap_annotations_that_are_not_a_map_are_an_unreadable_report(value: Any) -> None:
    request = captured("existing-children")
    ca_configmap(request)["metadata"]["annotations"] = value
    assert condition(answered(request), "CertificatesReady") == ("False", "CertificateReportUnreadable")


def nested_report(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        pytest.param(names.ANNOTATION_CERTIFICATES, None, id="a report that is null"),
        pytest.param(names.ANNOTATION_CERTIFICATES, 7, id="a report that is a number"),
        pytest.param(names.ANNOTATION_CERTIFICATES, {"servingCA": {}}, id="a report that is an object, not a string"),
        pytest.param(names.ANNOTATION_CERTIFICATES, ["{}"], id="a report that is a list"),
        pytest.param(names.ANNOTATION_CERTIFICATES, "[1]", id="a report that is a JSON list"),
        pytest.param(names.ANNOTATION_CERTIFICATES, '{"servingCA": 7}', id="times that are a number"),
        pytest.param(names.ANNOTATION_CERTIFICATES, '{"servingCA": {"notAfter": []}}', id="a time that is a list"),
        pytest.param(names.ANNOTATION_CERTIFICATES, nested_report(100_000), id="a report nested 100,000 deep"),
        pytest.param(names.ANNOTATION_CERTIFICATES, "1" * 5000, id="a report that is a 5000-digit number"),
        pytest.param(names.ANNOTATION_CORE_CERT_PROBLEM, 7, id="a core certificate problem that is a number"),
        pytest.param(names.ANNOTATION_CORE_CERT_PROBLEM, ["expired"], id="a core certificate problem that is a list"),
    ],
)
def test_a_report_annotation_of_an_unexpected_type_is_an_unreadable_report(annotation: str, value: Any) -> None:
    request = captured("existing-children")
    report_annotations(request)[annotation] = value
    answer = answered(request)
    assert condition(answer, "CertificatesReady") == ("False", "CertificateReportUnreadable")
    assert len(json.dumps(answer)) < 20_000  # the reason, not the report, is in status


def with_times(**times: str) -> Callable[[dict[str, Any]], None]:
    """Set `times` on every certificate of a request's report."""

    def change(request: dict[str, Any]) -> None:
        certificates = json.loads(report_annotations(request)[names.ANNOTATION_CERTIFICATES])
        for entry in certificates.values():
            entry.update(times)
        report_annotations(request)[names.ANNOTATION_CERTIFICATES] = json.dumps(certificates)

    return change


@pytest.mark.parametrize(
    ("times", "reason", "shown"),
    [
        pytest.param({"notBefore": "0001-01-01T00:00:00Z"}, "Ready", "0001-01-01T00:00:00Z",
                     id="a certificate valid since year 1 is shown with a four-digit year"),
        pytest.param({"notAfter": "9999-12-31T23:59:59Z", "renewalTime": "9999-12-31T23:59:59Z"}, "Ready",
                     "9999-12-31T23:59:59Z", id="a certificate valid until the end of year 9999 is ready"),
        pytest.param({"notBefore": "0001-01-01T00:00:00Z", "notAfter": "0001-01-01T00:00:01Z",
                      "renewalTime": "0001-01-01T00:00:00Z"}, "CertificateExpired", "0001-01-01T00:00:01Z",
                     id="a certificate that expired in year 1 is expired"),
        pytest.param({"notBefore": "0001-01-01T00:00:00+01:00"}, "CertificateReportUnreadable", None,
                     id="a time in year 0 in UTC is an unreadable report"),
        pytest.param({"notAfter": "9999-12-31T23:59:59-01:00"}, "CertificateReportUnreadable", None,
                     id="a time in year 10000 in UTC is an unreadable report"),
        pytest.param({"renewalTime": "0000-12-31T23:00:00Z"}, "CertificateReportUnreadable", None,
                     id="year 0 is an unreadable report"),
    ],
)  # fmt: skip
def test_report_times_at_the_ends_of_the_calendar_are_shown_or_unreadable(
    times: dict[str, str], reason: str, shown: str | None
) -> None:
    request = captured("existing-children")
    with_times(**times)(request)
    answer = answered(request)
    assert condition(answer, "Ready")[1] == reason
    if shown is not None:
        assert shown in json.dumps(answer["status"]["certificates"])
        assert 1 <= answer["resyncAfterSeconds"] <= 3600


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("0001-01-01T00:00:00+00:01", "between years 1 and 9999", id="a minute before year 1 in UTC"),
        pytest.param("9999-12-31T23:59:59-00:01", "between years 1 and 9999", id="a minute after year 9999 in UTC"),
        pytest.param("2030-01-01T00:00:00", "timezone", id="a time without a zone"),
    ],
)
def test_the_report_refuses_a_time_utc_cannot_hold_naming_the_place(value: str, problem: str) -> None:
    times = {"notBefore": "2026-01-01T00:00:00Z", "notAfter": "2030-01-01T00:00:00Z", "renewalTime": value}
    with pytest.raises(report.ReportError) as raised:
        report.from_annotations({names.ANNOTATION_CERTIFICATES: json.dumps({"servingCA": times})})
    assert "certificates.servingCA.renewalTime" in str(raised.value)
    assert problem in str(raised.value)


def test_a_report_with_many_bad_times_names_the_first_and_counts_the_rest() -> None:
    bad = {f"c{i}": {"notBefore": 1e30} for i in range(10_000)}
    with pytest.raises(report.ReportError) as raised:
        report.from_annotations({names.ANNOTATION_CERTIFICATES: json.dumps(bad)})
    assert len(str(raised.value)) < 300
    assert "more)" in str(raised.value)


@pytest.mark.parametrize(
    "when",
    [
        pytest.param(datetime(1, 1, 1, tzinfo=UTC), id="year 1"),
        pytest.param(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC), id="year 999"),
        pytest.param(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), id="year 9999"),
    ],
)
def test_a_time_is_written_in_rfc3339_with_four_digit_years(when: datetime) -> None:
    written = rfc3339(when)
    assert datetime.strptime(written, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) == when
    assert len(written) == len("2026-11-21T18:00:00Z")
