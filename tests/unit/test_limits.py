"""Every limit on a hook request: refused with a 4xx naming the variable that sets it, before the work it bounds, in
an answer and a log line of bounded size. Driven through the real app in-process (the ASGI calls a server makes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from etcdstorage import settings as settings_module
from etcdstorage.settings import Settings
from hooks.app import create_app
from tests.support.asgi import get, post
from tests.unit.captured import body, captured, expected_children

MiB = 1024 * 1024
LIMIT = Settings().hook_max_body_bytes
APP = create_app(Settings())


class Upload:
    """An ASGI request whose body arrives in `chunks`, counting how many the app pulled; then the end of the body,
    or (`then`) a client that stalls or goes away."""

    def __init__(self, chunks: Iterator[bytes], headers: dict[str, str] | None = None, then: str = "end") -> None:
        self.chunks, self.headers, self.then, self.pulled = chunks, headers or {}, then, 0
        self.status, self.answer = 0, b""

    def send_to(self, app: Any, path: str = "/sync") -> Upload:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("hook", 80),
        }  # fmt: skip

        async def receive() -> dict[str, Any]:
            chunk = next(self.chunks, None)
            self.pulled += chunk is not None
            if chunk is None and self.then == "stall":
                await asyncio.sleep(3600)
            if chunk is None and self.then == "disconnect":
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            else:
                self.answer += message.get("body", b"")

        asyncio.run(app(scope, receive, send))
        return self

    def json(self) -> Any:
        return json.loads(self.answer)


def megabytes(count: int) -> Iterator[bytes]:
    return (b" " * MiB for _ in range(count))


def test_a_body_announced_longer_than_the_limit_is_refused_before_a_byte_is_read() -> None:
    upload = Upload(megabytes(50), {"content-length": str(50 * MiB)}).send_to(APP)
    assert upload.status == 413
    assert upload.pulled == 0
    assert upload.json()["error"] == "body_too_large"
    assert "ETCDSTORAGE_HOOK_MAX_BODY_BYTES" in upload.json()["message"]
    assert str(LIMIT) in upload.json()["message"]


def test_a_chunked_body_over_the_limit_is_refused_once_the_limit_is_passed_not_read_to_its_end() -> None:
    upload = Upload(megabytes(50)).send_to(APP)  # no Content-Length: Transfer-Encoding chunked
    assert upload.status == 413
    assert upload.pulled == LIMIT // MiB + 1  # the limit's worth of chunks, then the one that passes it; no more
    assert "ETCDSTORAGE_HOOK_MAX_BODY_BYTES" in upload.json()["message"]


@pytest.mark.parametrize(
    ("spare", "code"),
    [
        pytest.param(0, 200, id="a body exactly at the limit is answered"),
        pytest.param(-1, 413, id="a body one byte over the limit is refused"),
    ],
)
def test_the_body_limit_is_a_setting(spare: int, code: int) -> None:
    sent = body(captured("existing-children"))
    app = create_app(Settings(hook_max_body_bytes=len(sent) + spare))
    chunks = iter([sent[:1000], sent[1000:]])
    assert Upload(chunks).send_to(app).status == code
    assert post(app, "/sync", sent).status_code == code  # with Content-Length


def test_a_client_that_stalls_mid_body_is_answered_408_and_keeps_no_worker() -> None:
    app = create_app(Settings(hook_read_timeout_seconds=1, hook_workers=1))
    started = time.perf_counter()
    upload = Upload(iter([b'{"parent": ']), then="stall").send_to(app)
    assert upload.status == 408
    assert upload.json()["error"] == "body_timeout"
    assert "ETCDSTORAGE_HOOK_READ_TIMEOUT_SECONDS" in upload.json()["message"]
    assert time.perf_counter() - started < 5
    assert 'etcdstorage_hook_errors_total{path="/sync",reason="body_timeout"} 1.0' in get(app, "/metrics").text
    # The one worker is free again.
    assert post(app, "/sync", body(captured("existing-children"))).status_code == 200


def test_a_client_that_goes_away_mid_body_is_counted_not_a_500() -> None:
    app = create_app(Settings())
    assert Upload(iter([b'{"parent": ']), then="disconnect").send_to(app).status == 400
    metrics = get(app, "/metrics").text
    assert 'etcdstorage_hook_errors_total{path="/sync",reason="client_disconnected"} 1.0' in metrics
    assert 'etcdstorage_hook_requests_total{code="400",path="/sync"} 1.0' in metrics


def test_a_body_that_may_hold_more_values_than_the_limit_is_refused_before_it_is_parsed() -> None:
    sent = b"[" + b"[]," * 1_200_000 + b"[]]"  # 3.6 MB within the size limit, 1.2 million lists: 130 MB parsed
    answer = post(APP, "/sync", sent)
    assert answer.status_code == 413  # not the 422 that parsing it would give
    assert answer.json()["error"] == "too_many_values"
    assert "ETCDSTORAGE_HOOK_MAX_JSON_VALUES" in answer.json()["message"]


def test_real_bodies_are_far_below_the_value_limit() -> None:
    sent = body(captured("existing-children"))
    values = sent.count(b",") + sent.count(b"[") + sent.count(b"{")
    assert values * 50 < Settings().hook_max_json_values
    assert post(create_app(Settings(hook_max_json_values=values)), "/sync", sent).status_code == 200
    assert post(create_app(Settings(hook_max_json_values=values - 1)), "/sync", sent).status_code == 413


def with_objects(field: str, kind: str, count: int) -> dict[str, Any]:
    request = captured("existing-children")
    objects = request[field].setdefault(kind, {})
    for index in range(count - len(objects)):
        objects[f"kube-apiserver-storage/extra-{index}"] = {"metadata": {"name": f"extra-{index}"}}
    return request


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        pytest.param(with_objects("children", "Deployment.apps/v1", 16), 200, id="16 Deployments are answered"),
        pytest.param(with_objects("children", "Deployment.apps/v1", 17), 422, id="17 Deployments are refused"),
        pytest.param(with_objects("related", "ConfigMap.v1", 17), 422, id="17 related ConfigMaps are refused"),
        pytest.param(captured("existing-children") | {"children": {f"Kind{i}.v1": {} for i in range(17)}}, 422,
                     id="17 child kinds are refused"),
        pytest.param(captured("existing-children") | {"related": {f"Kind{i}.v1": {} for i in range(17)}}, 422,
                     id="17 related kinds are refused"),
    ],
)  # fmt: skip
def test_children_and_related_objects_are_bounded_per_kind_and_in_kinds(request_: dict[str, Any], code: int) -> None:
    answer = post(APP, "/sync", body(request_))
    assert answer.status_code == code, answer.text
    if code == 200:
        assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == expected_children(request_)
    else:
        assert answer.json()["error"] == "too_many_objects"
        assert "ETCDSTORAGE_HOOK_MAX_OBJECTS_PER_KIND" in answer.json()["message"]
        assert answer.json()["problems"]


def test_too_many_objects_are_refused_even_while_finalizing() -> None:
    request = with_objects("children", "Service.v1", 17) | {"finalizing": True}
    assert post(APP, "/sync", body(request)).status_code == 422  # never a 200 that lets children go


def destinations(count: int) -> list[dict[str, str]]:
    return [{"name": f"ca-{i}", "namespace": "tenant"} for i in range(count)]


@pytest.mark.parametrize(
    ("items", "code"),
    [
        pytest.param(destinations(32), 200, id="32 destinations, the CRD's maximum, are answered"),
        pytest.param(destinations(33), 200, id="33 destinations are refused as one problem, in Ready"),
        pytest.param([0] * 1_000_000, 413, id="the fuzzer's 2 MB body with a million items is refused unparsed"),
    ],
)
def test_spec_lists_are_bounded_as_the_crd_bounds_them(items: list[Any], code: int) -> None:
    request = captured("existing-children")
    request["parent"]["spec"]["caCertConfigMap"] = items
    answer = post(APP, "/sync", body(request))
    assert answer.status_code == code
    if len(items) == 33:
        [ready] = answer.json()["status"]["conditions"]
        assert ready["message"].count("spec.caCertConfigMap") == 1
        assert "spec.caCertConfigMap: must hold at most 32 items, got 33" in ready["message"]


def huge_list(where: str) -> dict[str, Any]:
    request = captured("existing-children")
    if where == "conditions":  # read item by item by status
        request["parent"]["status"] = {"conditions": [{"type": "Ready"}] * 120_000}
    else:  # refused item by item by validation
        request["children"]["Deployment.apps/v1"] = dict.fromkeys(map(str, range(120_000)), 0)
    return request


@pytest.mark.parametrize(
    ("where", "code"),
    [
        pytest.param("conditions", 200, id="a previous status with 120,000 conditions is answered quickly"),
        pytest.param("children", 422, id="120,000 children that are numbers are refused quickly and briefly"),
    ],
)
def test_a_huge_list_inside_the_limits_is_answered_in_bounded_time_size_and_log(
    where: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The fuzzer's 2 MB body with a million items took 7.3 s, answered 147 MB and logged 73 MB. Lists just within
    the value limit, read or refused item by item, must be answered quickly and briefly."""
    request = huge_list(where)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="etcdstorage.hook"):
        answer = post(APP, "/sync", body(request))
    elapsed = time.perf_counter() - started
    print(f"{where}: {answer.status_code} in {elapsed * 1000:.0f} ms, {len(answer.content)} bytes")
    assert answer.status_code == code
    if code == 200:
        assert [(c["kind"], c["metadata"]["name"]) for c in answer.json()["children"]] == expected_children(request)
    assert len(answer.content) < 20_000
    assert all(len(record.getMessage()) < 400 for record in caplog.records)
    assert elapsed < 10  # generous: a few hundred ms here; this is about not growing with the input, not speed


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(captured("existing-children") | {"children": {"x" * 1_000_000: []}},
                     id="a child kind a megabyte long, refused by validation"),
        pytest.param(captured("existing-children") | {"related": {"x" * 1_000_000: {str(i): {} for i in range(17)}}},
                     id="a related kind a megabyte long, with too many objects"),
        pytest.param({**captured("new-object"), "parent": {"metadata": {"name": "x" * 1_000_000}, "spec": {}}},
                     id="an EtcdStorage name a megabyte long"),
        pytest.param({**captured("new-object"), "parent": {"metadata": {}, "spec": {"replicas": "9" * 1_000_000}}},
                     id="a spec value a megabyte long"),
        pytest.param({**captured("new-object"), "related": {"ConfigMap.v1": {str(i): i for i in range(10_000)}}},
                     id="ten thousand problems"),
        pytest.param(captured("existing-children") | {"children": {"x\n2026-12-01 ERROR forged line": []}},
                     id="a kind with a line break, which must not forge a log line"),
        pytest.param({**captured("new-object"), "parent": {"metadata": {"name": "a\rb\u2028c"}, "spec": {}}},
                     id="a name with line breaks"),
    ],
)  # fmt: skip
def test_a_refusal_is_logged_in_one_short_line_and_answered_briefly(
    request_: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="etcdstorage.hook"):
        answer = post(APP, "/sync", body(request_))
    (record,) = caplog.records
    print(record.getMessage())
    assert len(record.getMessage()) < 400
    assert "\n" not in record.getMessage()
    assert len(answer.content) < 8_000
    if answer.status_code == 200:  # a spec the hook refuses: said in Ready, the (no) children kept
        [ready] = answer.json()["status"]["conditions"]
        assert (ready["reason"], answer.json()["children"]) == ("InvalidSpec", [])
    else:
        assert answer.status_code == 422
        assert answer.json()["problems"]


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        ("HOOK_MAX_BODY_BYTES", "hook_max_body_bytes", 1024),
        ("HOOK_MAX_JSON_VALUES", "hook_max_json_values", 1000),
        ("HOOK_MAX_OBJECTS_PER_KIND", "hook_max_objects_per_kind", 4),
        ("HOOK_MAX_SPEC_LIST_ITEMS", "hook_max_spec_list_items", 64),
        ("HOOK_READ_TIMEOUT_SECONDS", "hook_read_timeout_seconds", 30),
        ("HOOK_WORKERS", "hook_workers", 1),
    ],
)
def test_every_hook_limit_is_read_from_its_variable_and_must_be_positive(variable: str, field: str, value: int) -> None:
    assert getattr(settings_module.from_env({f"ETCDSTORAGE_{variable}": str(value)}), field) == value
    for bad in ("0", "-1", "8Mi", ""):
        with pytest.raises(settings_module.SettingsError, match=f"ETCDSTORAGE_{variable}="):
            settings_module.from_env({f"ETCDSTORAGE_{variable}": bad})
