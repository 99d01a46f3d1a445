"""The per-EtcdStorage metrics on the hook's /metrics, scraped after real syncs, and the example PrometheusRule."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client.parser import text_string_to_metric_families

from etcdstorage import names, report
from etcdstorage.settings import Settings
from hooks import metrics
from hooks.app import create_app
from tests.support.asgi import get, post
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage, sync_request
from tests.support.reports import related, report_for

NOW: Final = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
RULE: Final = Path(__file__).parents[2] / "manifests" / "examples" / "monitoring" / "prometheusrule.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def samples(app: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every per-EtcdStorage sample of /metrics (the hook's request metrics and the job's run times aside)."""
    found = {}
    for family in text_string_to_metric_families(get(app, "/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("etcdstorage_") and not sample.name.startswith(
                ("etcdstorage_hook_", "etcdstorage_job_")
            ):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(app: Any, name: str, **labels: str) -> float | None:
    return samples(app).get((name, frozenset(labels.items())))


def sync(app: Any, request: dict[str, Any]) -> dict[str, Any]:
    answer = post(app, "/sync", json.dumps(request).encode())
    assert answer.status_code == 200, answer.text
    parsed: dict[str, Any] = answer.json()
    return parsed


def reported(name: str = "sample-apiserver", **overrides: Any) -> dict[str, Any]:
    request = sync_request(etcdstorage(name), related=related(name, report.to_annotations(report_for(NOW))))
    request.update(overrides)
    return request


def test_certificate_times_are_exported_per_etcdstorage_and_certificate_as_the_sync_observed_them() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, reported())
    times = report_for(NOW).certificates["clientCertificate"]
    labels = {"etcdstorage": "sample-apiserver", "certificate": "clientCertificate"}
    assert value(app, "etcdstorage_certificate_not_after_timestamp_seconds", **labels) == times.notAfter.timestamp()
    assert value(app, "etcdstorage_certificate_not_before_timestamp_seconds", **labels) == times.notBefore.timestamp()
    assert value(app, "etcdstorage_certificate_renewal_timestamp_seconds", **labels) == int(
        times.renewalTime.timestamp()  # status holds whole seconds
    )
    exported = {
        dict(labels)["certificate"] for name, labels in samples(app) if name.endswith("not_after_timestamp_seconds")
    }
    assert exported == set(report.CERTIFICATES)


def test_ready_status_is_one_for_the_current_condition_value_as_cert_manager_exports_it() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, sync_request(ORIGINAL_EXAMPLE))  # no report yet: waiting, not ready
    ready = {c: value(app, "etcdstorage_ready_status", etcdstorage="sample-apiserver", condition=c) for c in
             ("True", "False", "Unknown")}  # fmt: skip
    assert ready == {"True": 0, "False": 1, "Unknown": 0}


def test_a_refused_spec_is_exported_as_not_ready_and_without_certificates() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, reported())
    sync(app, reported(parent=etcdstorage("sample-apiserver", replicas=0)))
    assert value(app, "etcdstorage_ready_status", etcdstorage="sample-apiserver", condition="False") == 1
    assert not [name for name, _ in samples(app) if name.startswith("etcdstorage_certificate_")]


def test_a_finalized_etcdstorage_loses_its_series_at_once_and_others_keep_theirs() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, reported("a"))
    sync(app, reported("b"))
    assert sync(app, reported("a", finalizing=True))["finalized"] is True
    assert {dict(labels)["etcdstorage"] for _, labels in samples(app)} == {"b"}


def test_series_no_sync_refreshed_for_three_resync_periods_expire_as_a_deleted_object_leaves_no_call() -> None:
    clock = Clock()
    app = create_app(Settings(), clock=clock)
    # Sooner than the 15 s resync the hook asks for while waiting: the CompositeController's period counts.
    controller = {"metadata": {"name": "etcdstorage-controller"}, "spec": {"resyncPeriodSeconds": 10}}
    sync(app, reported("gone", controller=controller))
    clock.now = NOW + timedelta(seconds=3 * 10 - 1)
    sync(app, reported("kept", controller=controller))
    assert value(app, "etcdstorage_sync_timestamp_seconds", etcdstorage="gone") == NOW.timestamp()

    clock.now = NOW + timedelta(seconds=3 * 10)

    assert {dict(labels)["etcdstorage"] for _, labels in samples(app)} == {"kept"}


def test_without_a_resync_period_series_live_for_three_of_the_resyncs_the_hook_asked_for() -> None:
    clock = Clock()
    app = create_app(Settings(), clock=clock)
    waiting = sync(app, sync_request(ORIGINAL_EXAMPLE))["resyncAfterSeconds"]
    clock.now = NOW + timedelta(seconds=3 * waiting - 1)
    assert value(app, "etcdstorage_sync_timestamp_seconds", etcdstorage="sample-apiserver") == NOW.timestamp()
    clock.now = NOW + timedelta(seconds=3 * waiting)
    assert value(app, "etcdstorage_sync_timestamp_seconds", etcdstorage="sample-apiserver") is None


def test_a_renewal_replaces_the_times_and_a_certificate_no_longer_reported_goes() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, reported())
    later = report_for(NOW + timedelta(days=20))
    renewed = report.Report(certificates={"servingCA": later.certificates["servingCA"]})
    sync(app, sync_request(ORIGINAL_EXAMPLE, related=related("sample-apiserver", report.to_annotations(renewed))))
    after = {
        dict(labels)["certificate"]: number
        for (name, labels), number in samples(app).items()
        if name == "etcdstorage_certificate_not_after_timestamp_seconds"
    }
    assert after == {"servingCA": later.certificates["servingCA"].notAfter.timestamp()}


def test_a_name_no_object_can_have_is_not_made_a_label() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, sync_request(etcdstorage("x" * 300)))
    assert samples(app) == {}


def rule_expressions() -> list[str]:
    [document] = [d for d in yaml.safe_load_all(RULE.read_text()) if d]
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    rules = [rule for group in document["spec"]["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "EtcdStorageCertificateExpiresSoon",
        "EtcdStorageNotReady",
        "EtcdStorageCertificateRenewalOverdue",
        "EtcdStorageCertRotationJobNotSucceeding",
    }
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"])
    return [rule["expr"] for rule in rules]


# What a rule's expression may name besides metrics: PromQL's operators, aggregations and functions used here.
PROMQL_WORDS: Final = frozenset(
    {"and", "or", "unless", "by", "on", "without", "group_left", "group_right", "max", "min", "sum", "time", "absent"}
)


def named_metrics(expression: str) -> set[str]:
    """The metric names an expression reads: identifiers outside label matchers, grouping lists and strings."""
    bare = re.sub(r'"[^"]*"', "", expression)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\b(by|on|without|group_left|group_right)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS


def test_the_example_prometheus_rule_parses_and_names_only_metrics_that_exist() -> None:
    app = create_app(Settings(), clock=Clock())
    sync(app, reported())
    exported = {name for name, _ in samples(app)} | set(job_gauges(app))
    assert exported >= {
        f"etcdstorage_certificate_{t}_timestamp_seconds" for t in ("not_after", "not_before", "renewal")
    }
    named = set().union(*(named_metrics(expression) for expression in rule_expressions()))
    assert named <= exported, named - exported  # the hook's own metrics only
    assert "etcdstorage_ready_status" in named
    assert "etcdstorage_job_last_success_timestamp_seconds" in named
    assert "etcdstorage_sync_timestamp_seconds" in named


def test_the_metric_name_check_catches_a_misspelt_metric() -> None:
    assert named_metrics('max by (etcdstorage) (etcdstorage_ready_state{condition="False"}) == 1') == {
        "etcdstorage_ready_state"
    }
    assert metrics.EXPIRY_INTERVALS == 3  # the rule's comment says three resync periods


def job_gauges(app: Any) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(get(app, "/metrics").text)
        for sample in family.samples
        if sample.name.startswith("etcdstorage_job_")
    }


def test_the_jobs_last_run_and_last_success_come_from_its_record_as_a_sync_sees_it() -> None:
    app = create_app(Settings(), clock=Clock())
    assert set(job_gauges(app).values()) == {0.0}  # no record seen yet
    record = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": names.JOB_STATUS_CONFIGMAP, "namespace": names.DEFAULT_CONTROLLER_NAMESPACE},
        "data": {names.JOB_LAST_RUN_KEY: "2026-12-01T12:05:00Z", names.JOB_LAST_EXIT_KEY: "1",
                 names.JOB_LAST_SUCCESS_KEY: "2026-12-01T12:00:00Z"},
    }  # fmt: skip
    key = f"{names.DEFAULT_CONTROLLER_NAMESPACE}/{names.JOB_STATUS_CONFIGMAP}"
    sync(app, sync_request(etcdstorage("a"), related={"ConfigMap.v1": {key: record}}))
    assert job_gauges(app) == {
        "etcdstorage_job_last_run_timestamp_seconds": datetime(2026, 12, 1, 12, 5, tzinfo=UTC).timestamp(),
        "etcdstorage_job_last_success_timestamp_seconds": datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp(),
    }
    # A record that does not parse changes nothing: the gauges keep what they had.
    record["data"] = {names.JOB_LAST_RUN_KEY: "yesterday"}
    sync(app, sync_request(etcdstorage("a"), related={"ConfigMap.v1": {key: record}}))
    assert job_gauges(app)["etcdstorage_job_last_run_timestamp_seconds"] == datetime(
        2026, 12, 1, 12, 5, tzinfo=UTC).timestamp()  # fmt: skip
