"""manifests/crd.yaml in a real API server: it installs, accepts the original project's manifests unchanged, and
refuses at admission what the hook would refuse, with a message that names the field and says what is wrong."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from etcdstorage import names
from etcdstorage.spec import parse
from testbed import harness
from tests.support import spec_cases

pytestmark = pytest.mark.e2e

ORIGINAL_EXAMPLE = Path(__file__).parents[1] / "fixtures" / "original" / "example-etcdstorage.yaml"
Body = dict[str, Any]


def original() -> Body:
    body: Body = yaml.safe_load(ORIGINAL_EXAMPLE.read_text())
    return body


def create(api_client: ApiClient, body: Body) -> Body:
    """Create `body` with a server-side dry run: all of admission and validation, nothing stored."""
    created = CustomObjectsApi(api_client).create_cluster_custom_object(
        names.GROUP, names.VERSION, names.PLURAL, body, dry_run="All"
    )
    assert isinstance(created, dict)
    return created


def refusal(api_client: ApiClient, body: Body) -> str:
    """The message with which the API server refuses `body` at admission (422 Invalid)."""
    with pytest.raises(ApiException) as refused:
        create(api_client, body)
    assert refused.value.status == 422, refused.value.body
    status: Body = json.loads(refused.value.body or "{}")
    assert status["reason"] == "Invalid"
    return str(status["message"])


def named(name: str) -> Callable[[Body], None]:
    def change(body: Body) -> None:
        body["metadata"]["name"] = name

    return change


def spec(**fields: Any) -> Callable[[Body], None]:
    def change(body: Body) -> None:
        body["spec"].update(fields)

    return change


def test_the_crd_is_established_with_the_original_names_and_scope(
    control_plane: harness.ControlPlane, etcdstorage_crd: str
) -> None:
    crd = json.loads(control_plane.kubectl("get", "crd", etcdstorage_crd, "--output=json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["status"]["acceptedNames"]["kind"] == names.KIND
    assert crd["status"]["acceptedNames"]["plural"] == names.PLURAL
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == names.VERSION]
    assert version["served"] is True
    assert version["subresources"]["status"] == {}


def test_the_original_projects_example_manifest_applies_unchanged(
    control_plane: harness.ControlPlane, etcdstorage_crd: str
) -> None:
    applied = control_plane.kubectl("apply", f"--filename={ORIGINAL_EXAMPLE}")
    try:
        assert applied.stdout.strip() == f"etcdstorage.{names.GROUP}/sample-apiserver created"
        stored = json.loads(
            control_plane.kubectl("get", f"{names.PLURAL}.{names.GROUP}", "sample-apiserver", "-o=json").stdout
        )
        # Every field the original wrote is kept as written; new fields may only add defaults.
        assert stored["spec"] | original()["spec"] == stored["spec"]
    finally:
        control_plane.kubectl("delete", f"{names.PLURAL}.{names.GROUP}", "sample-apiserver", "--ignore-not-found")


def admission(api_client: ApiClient, body: Body) -> str | None:
    """None when the API server admits `body`, else the message with which it refuses it (422 Invalid)."""
    try:
        create(api_client, body)
    except ApiException as refused:
        status, answer = refused.status, refused.body or "{}"
    else:
        return None
    assert status == 422, answer
    return str(json.loads(answer)["message"])


def as_created(body: Body) -> Body:
    """`body` as a person would create it: the server sets uid and generation."""
    return {**copy.deepcopy(body), "metadata": {"name": body["metadata"]["name"]}}


@pytest.mark.parametrize("case", spec_cases.CASES, ids=[case.id for case in spec_cases.CASES])
def test_the_api_server_gives_the_verdict_the_hook_gives(
    api_client: ApiClient, etcdstorage_crd: str, case: spec_cases.Case
) -> None:
    # tests/unit/test_spec.py holds spec.parse to the same table.
    message = admission(api_client, as_created(case.body))
    if case.refused is None:
        assert message is None
    else:
        assert message is not None
        assert case.refused in message


@settings(max_examples=300, deadline=None)
@given(body=spec_cases.objects)
def test_the_api_server_and_the_hook_agree_on_random_objects(
    api_client: ApiClient, etcdstorage_crd: str, body: Body
) -> None:
    refused_by_parse = spec_cases.parse_verdict(body)
    message = admission(api_client, as_created(body))
    assert (message is None) == (not refused_by_parse), (message, refused_by_parse)


def test_a_destination_listed_twice_is_refused_at_admission_and_merged_by_the_hook(
    api_client: ApiClient, etcdstorage_crd: str
) -> None:
    body = spec_cases.duplicate_destinations()
    message = admission(api_client, as_created(body))
    assert message is not None
    assert "spec.caCertConfigMap[1]: Duplicate value" in message
    assert len(parse(body).ca_cert_configmaps) == 1  # an object stored before the CRD had this rule still works


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            spec(signingCertificateValidity="abc"),
            ["spec.signingCertificateValidity", '"abc"'],
            id="a validity that is not a duration",
        ),
        pytest.param(
            spec(servingCertificateValidity="-1h"),
            ["spec.servingCertificateValidity", '"-1h"'],
            id="a negative validity",
        ),
        pytest.param(
            spec(renewBefore="soon"),
            ["spec.renewBefore", '"soon"'],
            id="a renewBefore that is not a duration",
        ),
        pytest.param(
            spec(renewBefore="730h"),
            ["spec.renewBefore", "must be shorter than every certificate validity"],
            id="a renewBefore as long as a validity",
        ),
        pytest.param(
            spec(clientCertificateValidity="5m"),
            ["spec.clientCertificateValidity", "must be at least 10m"],
            id="a validity shorter than 10m",
        ),
        pytest.param(
            spec(servingCertificateValidity="731h"),
            ["spec.servingCertificateValidity", "must not be longer than signingCertificateValidity"],
            id="a serving certificate that would outlive its CA",
        ),
        pytest.param(
            spec(clientCertificateValidity="8760h"),
            ["spec.clientCertificateValidity", "must not be longer than signingCertificateValidity"],
            id="a client certificate that would outlive its CA",
        ),
        pytest.param(
            named("a" * (names.MAX_NAME_LENGTH + 1)),
            ["metadata.name", "at most 58 characters"],
            id="a name of 59 characters",
        ),
        pytest.param(named("sample.apiserver"), ["metadata.name", "DNS label", "no dots"], id="a name with a dot"),
        pytest.param(
            spec(signingCertificateValidity=730),
            ["spec.signingCertificateValidity", "must be of type string"],
            id="a number for a validity",
        ),
        pytest.param(
            spec(caCertConfigMap="etcd-serving-ca"),
            ["spec.caCertConfigMap", "must be of type array"],
            id="a string for the list of ConfigMaps",
        ),
        pytest.param(
            spec(clientCertSecret=[{"name": "etcd-client-cert"}]),
            ["spec.clientCertSecret[0].namespace", "Required value"],
            id="a destination without a namespace",
        ),
    ],
)
def test_the_api_server_refuses_invalid_objects_naming_the_field_and_the_reason(
    api_client: ApiClient, etcdstorage_crd: str, change: Callable[[Body], None], expected: list[str]
) -> None:
    body = original()
    change(body)
    message = refusal(api_client, body)
    for fragment in expected:
        assert fragment in message
    # CEL's own failure (e.g. duration() of a string that is no duration) tells a person nothing: the schema must
    # refuse such values before a rule trips over them.
    assert "type conversion error" not in message
    assert "evaluating rule" not in message


@pytest.mark.parametrize("reserved", sorted(names.RESERVED_NAMES))
def test_the_api_server_refuses_every_name_the_hook_reserves(
    api_client: ApiClient, etcdstorage_crd: str, reserved: str
) -> None:
    body = original()
    body["metadata"]["name"] = reserved
    assert "metadata.name is reserved" in refusal(api_client, body)
