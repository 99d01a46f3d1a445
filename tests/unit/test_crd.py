"""manifests/crd.yaml is what etcdstorage/crd.py generates, and its OpenAPI schema refuses what `spec.parse` refuses.

The schema's types, patterns, lengths, enums and bounds are checked here by a small validator of the OpenAPI subset
the CRD uses, with Kubernetes' semantics; its CEL rules only a real API server evaluates (tests/e2e/test_crd.py).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from etcdstorage import crd, spec
from testbed import harness
from tests.support import spec_cases
from tests.support.objects import etcdstorage

CRD = crd.definition()
[_VERSION] = CRD["spec"]["versions"]
SCHEMA: dict[str, Any] = _VERSION["schema"]["openAPIV3Schema"]


def test_the_committed_crd_is_the_generated_one() -> None:
    committed = (harness.REPO / crd.PATH).read_text()
    generated = crd.render(CRD)
    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), crd.PATH, "generated"))
    assert committed == generated, (
        f"{crd.PATH} is not what etcdstorage/crd.py generates; run\n    {crd.COMMAND}\n{diff}"
    )


def test_the_rendered_yaml_reads_back_as_the_definition() -> None:
    # Folded prose and CEL rules written line by line must not change a character of what the API server reads.
    assert yaml.safe_load(crd.render(CRD)) == CRD


def test_one_constant_bounds_both_admission_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "MAX_DESTINATIONS", 2)
    items = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert items["caCertConfigMap"]["maxItems"] == items["clientCertSecret"]["maxItems"] == 2
    with pytest.raises(spec.InvalidSpec, match="at most 2 items"):
        spec.parse(etcdstorage(caCertConfigMap=spec_cases.destinations(3)), max_list_items=2)


@pytest.mark.parametrize("case", spec_cases.CASES, ids=[case.id for case in spec_cases.CASES])
def test_the_schema_refuses_only_what_parse_refuses(case: spec_cases.Case) -> None:
    refused_by_schema = schema_problems(SCHEMA, case.body)
    if case.refused is None:
        assert refused_by_schema == []
    else:
        assert all(within(path, case.refused) for path in refused_by_schema)


@settings(max_examples=500)
@given(spec_cases.objects)
def test_parse_and_the_schema_agree_on_random_objects(body: dict[str, Any]) -> None:
    """Where the schema refuses, parse refuses the same field (or the list holding it); where parse refuses a field
    the schema accepts, a CEL rule of the CRD covers that field."""
    by_parse = spec_cases.parse_verdict(body)
    by_schema = schema_problems(SCHEMA, body)
    for path in by_schema:
        assert any(within(path, field) for field in by_parse), (path, by_parse)
    for field in by_parse:
        assert field in CEL_FIELDS or any(within(path, field) for path in by_schema), (field, by_schema)


def within(path: str, field: str) -> bool:
    """Whether `path` is `field` or lies inside it (`spec.a[0].name` lies inside `spec.a`, not inside `spec.a[0].n`)."""
    return path == field or path.startswith((f"{field}.", f"{field}["))


def cel_fields(schema: dict[str, Any]) -> set[str]:
    """The fields that a CEL rule of the CRD checks: where rules sit, where they point, and metadata.name."""
    found = set()
    if any("self.metadata.name" in rule["rule"] for rule in schema.get("x-kubernetes-validations", [])):
        found.add("metadata.name")
    spec_schema = schema["properties"]["spec"]
    for rule in spec_schema.get("x-kubernetes-validations", []):
        found.add("spec" + rule["fieldPath"])
    for field, field_schema in spec_schema["properties"].items():
        if "x-kubernetes-validations" in field_schema:
            found.add(f"spec.{field}")
    return found


CEL_FIELDS = cel_fields(SCHEMA)


def test_the_cel_rules_cover_the_name_and_the_durations_only() -> None:
    # Everything else is plain OpenAPI, checked above without an API server.
    assert cel_fields(SCHEMA) == {
        "metadata.name",
        "spec.signingCertificateValidity",
        "spec.servingCertificateValidity",
        "spec.clientCertificateValidity",
        "spec.renewBefore",
    }


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "integer": (int,)}


def schema_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """The paths at which a Kubernetes API server's OpenAPI validation refuses `value` (CEL rules aside).

    Only what the CRD uses: type, nullable, required, properties, items, enum, pattern, maxLength, maxItems, minimum,
    maximum. As Kubernetes does, a null where the schema is not nullable is dropped (then defaulted), not refused.
    """
    expected = _TYPES[schema["type"]]
    if not isinstance(value, expected) or isinstance(value, bool):
        return [path]
    problems: list[str] = []
    if isinstance(value, dict):
        for field in schema.get("required", []):
            if value.get(field) is None:
                problems.append(_join(path, field))
        for field, field_schema in schema.get("properties", {}).items():
            item = value.get(field)
            if item is not None:
                problems += schema_problems(field_schema, item, _join(path, field))
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            problems.append(path)
        for index, item in enumerate(value):
            problems += schema_problems(schema["items"], item, f"{path}[{index}]")
    else:
        problems += [path] if not _scalar_allowed(schema, value) else []
    return problems


def _scalar_allowed(schema: dict[str, Any], value: Any) -> bool:
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, int):
        return bool(schema.get("minimum", value) <= value <= schema.get("maximum", value))
    # Kubernetes matches patterns with Go's RE2, where `$` is the end of the text; Python's `$` also matches before a
    # final line break, so a pattern's final `$` becomes `\Z`.
    pattern = schema.get("pattern")
    if pattern is not None and not re.search(re.sub(r"\$$", r"\\Z", pattern), value):
        return False
    longest: int = schema.get("maxLength", len(value))
    return len(value) <= longest


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field
