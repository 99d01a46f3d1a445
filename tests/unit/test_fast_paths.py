"""The hook's fast paths read, check and write exactly what the slow ones they replaced did.

Reading a body as Python values before validating it, checking a carried time without strptime and encoding an
answer with orjson instead of model_dump (bench/hook.py measures what each saves) must change nothing a client can
see: the same requests read the same, the same bodies are refused with the same problems (deeply nested ones too),
the same answers come out byte for byte.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from hooks import status
from hooks.app import HookError, encode_answer, parse_body
from hooks.wire import CustomizeRequest, CustomizeResponse, RelatedResourceRule, SyncRequest, SyncResponse
from tests.support.mutations import json_values, mutated_requests
from tests.support.objects import ORIGINAL_EXAMPLE, sync_request


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A real request with places replaced by random JSON or removed, as JSON; or random bytes; or a cut body."""
    request = draw(mutated_requests(min_changes=0))
    body = json.dumps(request).encode()  # Infinity for infinities, integers of any size as they are
    kind = draw(st.sampled_from(["request", "cut", "bytes"]))
    if kind == "cut":
        return body[: draw(st.integers(min_value=0, max_value=len(body)))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return body


def as_pydantic_reads(model: type[BaseModel], body: bytes) -> tuple[str, Any]:
    """What the hook answered before: pydantic's own JSON parser, its errors as the hook words them."""
    try:
        return "read", model.model_validate_json(body).model_dump()
    except ValidationError as error:
        return "refused", [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors(include_url=False)
        ]


def as_hook_reads(model: type[BaseModel], body: bytes) -> tuple[str, Any]:
    try:
        return "read", parse_body(model, body).model_dump()
    except HookError as error:
        return "refused", error.problems


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(bodies(), st.sampled_from([SyncRequest, CustomizeRequest]))
def test_a_body_is_read_or_refused_exactly_as_by_pydantics_json_parser(body: bytes, model: type[BaseModel]) -> None:
    assert as_hook_reads(model, body) == as_pydantic_reads(model, body)


@pytest.mark.parametrize(
    ("depth", "container"),
    [
        pytest.param(190, "[]", id="lists nested 190 deep inside a request are read"),
        pytest.param(199, "{}", id="objects nested at pydantic's depth limit are refused as by pydantic"),
        pytest.param(300, "[]", id="lists nested 300 deep, which orjson reads, are refused as by pydantic"),
        pytest.param(1100, "{}", id="objects nested deeper than orjson reads are refused as by pydantic"),
        pytest.param(60_000, "{}", id="objects nested 60,000 deep (orjson 3.8.3 crashed) are refused as by pydantic"),
        pytest.param(60_000, "[]", id="lists nested 60,000 deep are refused as by pydantic"),
    ],
)
def test_a_deeply_nested_body_is_read_or_refused_exactly_as_by_pydantic(depth: int, container: str) -> None:
    opening, leaf, closing = (b'{"a":', b"1", b"}") if container == "{}" else (b"[", b"", b"]")
    parent = copy.deepcopy(ORIGINAL_EXAMPLE) | {"status": "NESTED"}
    body = json.dumps(sync_request(parent)).encode().replace(b'"NESTED"', opening * depth + leaf + closing * depth)
    for model in (SyncRequest, CustomizeRequest):
        assert as_hook_reads(model, body) == as_pydantic_reads(model, body)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(2**64 + 1, id="an integer beyond 64 bits stays an integer"),
        pytest.param(-(2**63) - 1, id="a negative integer beyond 64 bits stays an integer"),
        pytest.param(float("inf"), id="an infinity is read as pydantic reads it"),
        pytest.param(12345678901234567890123, id="a long integer is not rounded to a float"),
    ],
)
def test_numbers_a_faster_parser_could_read_otherwise_are_read_as_before(value: float) -> None:
    body = json.dumps(sync_request(copy.deepcopy(ORIGINAL_EXAMPLE) | {"status": {"x": value}})).encode()
    read = parse_body(SyncRequest, body).parent.status["x"]
    assert read == value
    assert type(read) is type(value)


times = st.from_regex(r"\A[0-9 ]{1,5}-[0-9 ]{1,3}-[0-9 ]{1,3}[Tt ][0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3}[Zz]?\Z")
canonical_times = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}Z".format,
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 62),
)


def strptime_reads(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


@settings(max_examples=500)
@given(canonical_times | times | st.text(max_size=24))
def test_a_carried_transition_time_is_kept_exactly_when_strptime_reads_it(value: str) -> None:
    assert status._is_rfc3339(value) is strptime_reads(value)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=3), max_size=3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none() | st.booleans(),
)
def test_an_answer_is_encoded_byte_for_byte_as_model_dump_gave_it(
    state: dict[str, Any], children: list[dict[str, Any]], resync: float, finalized: bool | None
) -> None:
    try:
        expected = orjson.dumps(
            SyncResponse(status=state, children=children, resyncAfterSeconds=resync, finalized=finalized).model_dump(
                exclude_none=True
            )
        )
    except orjson.JSONEncodeError:  # integers beyond 64 bits: pydantic writes those, as they were read
        answer = SyncResponse(status=state, children=children, resyncAfterSeconds=resync, finalized=finalized)
        assert json.loads(encode_answer(answer)) == finite(answer.model_dump(exclude_none=True))
        return
    answer = SyncResponse(status=state, children=children, resyncAfterSeconds=resync, finalized=finalized)
    assert encode_answer(answer) == expected


def finite(value: Any) -> Any:
    """`value` as JSON carries it: infinities become null, as orjson and pydantic write them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def test_a_customize_answer_is_encoded_byte_for_byte_as_model_dump_gave_it() -> None:
    rule = RelatedResourceRule(apiVersion="v1", resource="configmaps", namespace="ns", names=["a-ca-cert"])
    answer = CustomizeResponse(relatedResources=[rule])
    assert encode_answer(answer) == orjson.dumps(answer.model_dump(exclude_none=True))
