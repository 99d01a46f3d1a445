"""The HTTP edge: builds the FastAPI app around the pure hooks, maps errors to status codes, counts requests.

Metacontroller deletes children an answer leaves out, so anything the hook cannot handle becomes a non-200
(422 for input it refuses, 500 for its own bugs), never a 200 with fewer children.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from hooks import spec, sync
from hooks.settings import Settings
from hooks.wire import CustomizeRequest, SyncRequest

log = logging.getLogger("etcdstorage.hook")

JSON: Final = "application/json"
# For `parse_body`: a table that turns every digit into "0" and every other byte into " ", and 19 digits in a row
# (2**63 has 19), which orjson may not read as pydantic does.
_DIGITS: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGITS: Final = b"0" * 19
Clock = Callable[[], datetime]
M = TypeVar("M", bound=BaseModel)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "etcdstorage_hook_requests",
            "Hook requests by path and status code.",
            ["path", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "etcdstorage_hook_request_duration_seconds",
            "Time to answer a hook request.",
            ["path"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.errors = Counter(
            "etcdstorage_hook_errors",
            "Hook requests refused or failed, by reason.",
            ["path", "reason"],
            registry=self.registry,
        )


class HookError(Exception):
    def __init__(self, code: int, reason: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.problems = code, reason, message, problems or []


def create_app(settings: Settings, clock: Clock | None = None) -> FastAPI:
    """The hook server for these settings; `clock` is injectable so that tests pin `now`."""
    now = clock or (lambda: datetime.now(UTC))
    metrics = Metrics()
    app = FastAPI(title="EtcdStorage hooks", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics

    async def sync_hook(request: Request) -> Response:
        return await _answer(request, metrics, "/sync", lambda body: _sync(body, settings, now()))

    async def customize_hook(request: Request) -> Response:
        return await _answer(request, metrics, "/customize", lambda body: _customize(body, settings))

    # Plain routes: the hooks read the raw body themselves, so FastAPI's parameter and dependency machinery (some
    # 70 µs a request, bench/hook.py) has nothing to do for them; 404 and 405 answers are the same.
    app.add_route("/sync", sync_hook, methods=["POST"])
    app.add_route("/customize", customize_hook, methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _sync(body: bytes, settings: Settings, now: datetime) -> BaseModel:
    request = parse_body(SyncRequest, body)
    return sync.sync(request, settings, now)


def _customize(body: bytes, settings: Settings) -> BaseModel:
    return sync.customize(parse_body(CustomizeRequest, body), settings)


def parse_body(model: type[M], body: bytes) -> M:
    """The request as `model`, or `HookError` 422 naming every problem: exactly what `model.model_validate_json` reads
    and refuses, in less than half its time on the bodies Metacontroller sends (tens of kilobytes of children)."""
    # orjson parses faster than pydantic's own parser and accepts no JSON that pydantic refuses, but it turns integers
    # beyond 64 bits into floats: bodies with a run of 19 digits (strings included) are left to pydantic, and so is
    # anything orjson or the validation refuses, so that refusals read as before.
    if _LONG_DIGITS not in body.translate(_DIGITS):
        try:
            return model.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            pass
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors(include_url=False)
        ]
        kind = "json" if any(e["type"] == "json_invalid" for e in error.errors()) else "request"
        message = "body is not JSON" if kind == "json" else "body is not a Metacontroller hook request"
        raise HookError(422, f"invalid_{kind}", message, problems) from None


async def _answer(request: Request, metrics: Metrics, path: str, handle: Callable[[bytes], BaseModel]) -> Response:
    started = time.perf_counter()
    body = await request.body()
    try:
        answer = handle(body)
    except spec.InvalidSpec as error:
        failure = HookError(422, "invalid_spec", str(error), [str(p) for p in error.problems])
        response = _error(failure, metrics, path)
        log.warning("refused EtcdStorage name=%s problems=%s", error.name, "; ".join(failure.problems))
    except HookError as error:
        response = _error(error, metrics, path)
        log.warning("refused request path=%s reason=%s problems=%s", path, error.reason, "; ".join(error.problems))
    except Exception:
        response = _error(HookError(500, "internal", "the hook failed; see its logs"), metrics, path)
        log.exception("hook failed path=%s", path)
    else:
        response = Response(encode_answer(answer), media_type=JSON)
    metrics.requests.labels(path, str(response.status_code)).inc()
    metrics.latency.labels(path).observe(time.perf_counter() - started)
    return response


def encode_answer(answer: BaseModel) -> bytes:
    """The answer as JSON without its None fields, as `model_dump(exclude_none=True)` gives it. Its fields hold plain
    JSON values, checked when the answer was built, so orjson encodes them as they are: model_dump would first copy
    every child. Nested models (customize's rules) are dumped by pydantic."""
    return orjson.dumps({name: value for name, value in answer if value is not None}, default=_dump_nested)


def _dump_nested(value: object) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _error(error: HookError, metrics: Metrics, path: str) -> Response:
    metrics.errors.labels(path, error.reason).inc()
    body = {"error": error.reason, "message": error.message, "problems": error.problems}
    return Response(orjson.dumps(body), status_code=error.code, media_type=JSON)
