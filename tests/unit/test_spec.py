"""What makes a valid EtcdStorage: the hook's own check, the same rules as the CRD's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdstorage import names, spec
from tests.support import spec_cases
from tests.support.objects import ORIGINAL_EXAMPLE, etcdstorage


def test_the_original_projects_example_is_accepted_unchanged() -> None:
    tenant = spec.parse(ORIGINAL_EXAMPLE)
    assert tenant.name == "sample-apiserver"
    assert tenant.signing_validity == tenant.serving_validity == tenant.client_validity == timedelta(hours=730)
    assert tenant.ca_cert_configmaps == (spec.Destination("k8s-sample-apiserver", "etcd-serving-ca"),)
    assert tenant.client_cert_secrets == (spec.Destination("k8s-sample-apiserver", "etcd-client-cert"),)
    assert tenant.key_algorithm is spec.KeyAlgorithm.ECDSA_P256
    assert tenant.replicas is None


def test_validities_left_out_take_the_documented_defaults() -> None:
    tenant = spec.parse({"metadata": {"name": "wardle"}, "spec": {}})
    assert tenant.signing_validity == timedelta(hours=8760)
    assert tenant.serving_validity == tenant.client_validity == timedelta(hours=730)


def test_null_lists_as_sent_by_the_originals_go_clients_mean_no_destinations() -> None:
    tenant = spec.parse(etcdstorage(caCertConfigMap=None, clientCertSecret=None))
    assert tenant.ca_cert_configmaps == tenant.client_cert_secrets == ()


def test_duplicate_destinations_are_delivered_once_in_a_stable_order() -> None:
    a = {"name": "ca", "namespace": "b-ns"}
    b = {"name": "ca", "namespace": "a-ns"}
    tenant = spec.parse(etcdstorage(caCertConfigMap=[a, b, a]))
    assert [str(d) for d in tenant.ca_cert_configmaps] == ["a-ns/ca", "b-ns/ca"]


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("a name with a dot", {"name": "sample.apiserver"}, "metadata.name", "DNS label"),
    ("an upper-case name", {"name": "Sample"}, "metadata.name", "DNS label"),
    ("a name too long for etcd-<name>", {"name": "a" * 59}, "metadata.name", "at most 58"),
    ("the core API server's prefix", {"name": "registry"}, "metadata.name", "reserved"),
    ("calico's prefix", {"name": "calico"}, "metadata.name", "reserved"),
    ("a duration without unit", {"signingCertificateValidity": "730"}, "spec.signingCertificateValidity", "invalid"),
    ("a duration in days", {"servingCertificateValidity": "30d"}, "spec.servingCertificateValidity", "invalid"),
    (
        "a validity under 10 minutes",
        {"clientCertificateValidity": "5m"},
        "spec.clientCertificateValidity",
        "at least 10m",
    ),
    ("a negative validity", {"clientCertificateValidity": "-1h"}, "spec.clientCertificateValidity", "unsigned"),
    ("a number for a validity", {"signingCertificateValidity": 730}, "spec.signingCertificateValidity", "got int"),
    ("a leaf outliving its CA", {"servingCertificateValidity": "800h"}, "spec.servingCertificateValidity", "outlives"),
    (
        "a client cert outliving its CA",
        {"clientCertificateValidity": "731h"},
        "spec.clientCertificateValidity",
        "longer",
    ),
    ("a string for a destination list", {"caCertConfigMap": "etcd-serving-ca"}, "spec.caCertConfigMap", "list"),
    (
        "a destination without namespace",
        {"clientCertSecret": [{"name": "x"}]},
        "spec.clientCertSecret[0].namespace",
        "namespace",
    ),
    (
        "a destination with a bad name",
        {"clientCertSecret": [{"name": "X_Y", "namespace": "a"}]},
        "spec.clientCertSecret[0].name",
        "DNS subdomain",
    ),
    ("an unknown key algorithm", {"keyAlgorithm": "DSA"}, "spec.keyAlgorithm", "ECDSAP256"),
    ("zero replicas", {"replicas": 0}, "spec.replicas", "1 to 50"),
    ("replicas as a string", {"replicas": "3"}, "spec.replicas", "integer"),
    ("renewBefore as long as a validity", {"renewBefore": "730h"}, "spec.renewBefore", "shorter"),
    ("renewBefore of seconds", {"renewBefore": "30s"}, "spec.renewBefore", "at least 1m"),
]


@pytest.mark.parametrize(("case", "change", "field", "words"), REFUSED, ids=[f"refuses {c[0]}" for c in REFUSED])
def test_invalid_objects_are_refused_naming_the_field_and_the_reason(
    case: str, change: dict[str, Any], field: str, words: str
) -> None:
    name = change.pop("name", "sample-apiserver")
    with pytest.raises(spec.InvalidSpec) as refused:
        spec.parse(etcdstorage(name, **change))
    assert [p.field for p in refused.value.problems] == [field]
    assert words in refused.value.problems[0].message
    assert field in str(refused.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(spec.InvalidSpec) as refused:
        spec.parse(etcdstorage("registry", servingCertificateValidity="x", replicas=-1))
    assert {p.field for p in refused.value.problems} == {
        "metadata.name",
        "spec.servingCertificateValidity",
        "spec.replicas",
    }


def test_a_spec_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(spec.InvalidSpec, match="spec: must be an object"):
        spec.parse({"metadata": {"name": "a"}, "spec": ["x"]})


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=80))
def test_an_accepted_name_always_gives_dns_label_names_that_fit_63_characters(name: str) -> None:
    if spec.name_problems(name):
        return
    for derived in (names.proxy_name(name),):
        assert len(derived) <= 63
        assert names.DNS_LABEL.match(derived)
    assert names.key_prefix(name).endswith(f"/{name}/")


def test_durations_are_compared_to_the_nanosecond_as_admission_compares_them() -> None:
    # timedelta would round both to 730h and refuse what the CRD's CEL rules (in nanoseconds) accepted.
    tenant = spec.parse(
        etcdstorage(
            renewBefore="730h0.0000001s",
            signingCertificateValidity="730h0.0000002s",
            servingCertificateValidity="730h0.0000002s",
            clientCertificateValidity="730h0.0000002s",
        )
    )
    assert tenant.renew_before == timedelta(hours=730)
    with pytest.raises(spec.InvalidSpec, match=r"spec\.servingCertificateValidity"):
        spec.parse(etcdstorage(signingCertificateValidity="730h", servingCertificateValidity="730h0.000000001s"))


@pytest.mark.parametrize("case", spec_cases.CASES, ids=[case.id for case in spec_cases.CASES])
def test_parse_gives_the_verdict_admission_gives(case: spec_cases.Case) -> None:
    # tests/e2e/test_crd.py holds a real API server to the same table.
    refused = spec_cases.parse_verdict(case.body)
    assert refused == ([] if case.refused is None else [case.refused])


def test_a_destination_list_over_the_limit_is_one_problem_whatever_its_items() -> None:
    with pytest.raises(spec.InvalidSpec) as refused:
        spec.parse(etcdstorage(clientCertSecret=[0] * 100_000))
    assert [str(p) for p in refused.value.problems] == [
        f"spec.clientCertSecret: must hold at most {spec.MAX_DESTINATIONS} items, got 100000"
    ]


def test_the_limit_on_destinations_is_a_parameter_that_defaults_to_the_crds() -> None:
    body = etcdstorage(caCertConfigMap=spec_cases.destinations(3))
    assert len(spec.parse(body).ca_cert_configmaps) == 3
    with pytest.raises(spec.InvalidSpec, match="at most 2 items, got 3"):
        spec.parse(body, max_list_items=2)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"replicas": [0] * 100_000}, id="replicas"),
        pytest.param({"keyAlgorithm": "x" * 100_000}, id="keyAlgorithm"),
        pytest.param({"caCertConfigMap": [{"name": "x" * 100_000, "namespace": "a"}]}, id="a destination name"),
        pytest.param({"renewBefore": "1" * 100_000 + "h"}, id="renewBefore"),
    ],
)
def test_a_problem_quotes_a_huge_value_briefly(change: dict[str, Any]) -> None:
    with pytest.raises(spec.InvalidSpec) as refused:
        spec.parse(etcdstorage(**change))
    assert len(str(refused.value)) < 300


def test_the_deletion_policy_is_retain_unless_delete_is_asked_for_and_deletion_is_read_from_metadata() -> None:
    assert spec.parse(etcdstorage("a")).deletion_policy is spec.DeletionPolicy.RETAIN
    assert spec.parse(etcdstorage("a", deletionPolicy="Delete")).deletion_policy is spec.DeletionPolicy.DELETE
    assert not spec.parse(etcdstorage("a")).deleting
    going = etcdstorage("a", deletionPolicy="Delete")
    going["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert spec.parse(going).deleting


def annotated(**annotations: Any) -> dict[str, Any]:
    obj = etcdstorage()
    obj["metadata"]["annotations"] = annotations
    return obj


def test_the_manual_rotation_annotations_are_read_and_absent_or_empty_ones_ask_for_nothing() -> None:
    parsed = spec.parse(annotated(**{names.ANNOTATION_RENEW: "2030-01-01T00:00:00Z", names.ANNOTATION_ROTATE_CA: ""}))
    assert (parsed.renew, parsed.rotate_ca, parsed.request_problems) == ("2030-01-01T00:00:00Z", "", ())
    plain = spec.parse(etcdstorage())
    assert (plain.renew, plain.rotate_ca) == ("", "")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * (spec.MAX_REQUEST_LENGTH + 1), id="too long"),
        pytest.param("line\nbreak", id="not printable"),
        pytest.param(12, id="not a string"),
    ],
)
def test_a_bad_request_value_is_a_problem_that_asks_for_nothing_and_refuses_nothing(value: Any) -> None:
    parsed = spec.parse(annotated(**{names.ANNOTATION_ROTATE_CA: value, names.ANNOTATION_RENEW: "ok"}))
    assert (parsed.renew, parsed.rotate_ca) == ("ok", "")  # the other request stands
    [problem] = parsed.request_problems
    assert problem.field == f"metadata.annotations[{names.ANNOTATION_ROTATE_CA}]"
    assert f"at most {spec.MAX_REQUEST_LENGTH} printable characters" in problem.message
    assert len(str(problem)) < 300  # a huge value is quoted briefly


def test_a_request_value_of_the_longest_length_is_taken() -> None:
    longest = "7" * spec.MAX_REQUEST_LENGTH
    assert spec.parse(annotated(**{names.ANNOTATION_RENEW: longest})).renew == longest
