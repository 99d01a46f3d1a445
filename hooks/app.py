"""The HTTP edge: reads a bounded body, runs the pure hooks in worker threads, maps errors to codes, counts requests.

Metacontroller deletes children an answer leaves out, so anything the hook cannot handle becomes a non-200
(413 for a body over a limit, 422 for input it refuses, 500 for its own bugs), never a 200 with fewer children. (A
spec the hook refuses is answered by the sync itself: Ready False, the children handed back as they are.)
The event loop only moves bytes: parsing, the sync and encoding run in worker threads, so that a large request holds
up neither /healthz nor the other requests. Every limit is a setting, and a refusal names its variable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import anyio
import orjson
import pydantic_core
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from etcdstorage import names, spec
from etcdstorage.settings import Settings, variable
from hooks import metrics as tenant_metrics
from hooks import status, sync
from hooks.wire import CONFIGMAPS, CustomizeRequest, SyncRequest, SyncResponse

log = logging.getLogger("etcdstorage.hook")

JSON: Final = "application/json"
# A refusal lists its first problems, each cut short, and counts the rest: answers and log lines stay small whatever
# the body holds (a list of a million bad items gave a 147 MB answer and a 73 MB log line).
MAX_PROBLEMS: Final = 20
MAX_PROBLEM_CHARS: Final = 240
MAX_MESSAGE_CHARS: Final = 1000
LOGGED_PROBLEMS: Final = 3
LOGGED_CHARS: Final = 80  # of each problem and name in a log line
LOGGED_FRAMES: Final = 12  # of a hook failure's traceback
_CONTROLS: Final = dict.fromkeys((*range(0x20), 0x7F, 0x85, 0x2028, 0x2029), "?")  # line breaks, escapes: one line
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
        self.tenants = tenant_metrics.TenantMetrics(self.registry)


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
    hooks = {
        "/sync": lambda body: _sync(body, settings, now(), metrics.tenants),
        "/customize": lambda body: _customize(body, settings),
    }
    workers = _Workers(anyio.Semaphore(settings.hook_workers), anyio.CapacityLimiter(settings.hook_workers))
    # Plain ASGI routes: the hooks read the raw body themselves, so FastAPI's parameter and dependency machinery (some
    # 70 µs a request, bench/hook.py) has nothing to do for them; 404 and 405 answers are the same.
    for path, handle in hooks.items():
        hook = _Hook(path, handle, settings, workers, metrics)
        app.router.routes.append(Route(path, hook, methods=["POST"]))

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.tenants.expire(now())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


@dataclasses.dataclass(frozen=True)
class _Workers:
    """`settings.hook_workers` places for requests, and as many threads to work in.

    A request takes a place before it reads its body and leaves it once its answer is sent: the places bound memory
    (the worst body costs 8 times its size), the others wait with their bytes unread in the kernel. The
    threads keep the work off the event loop, which answers /healthz meanwhile.
    """

    places: anyio.Semaphore
    threads: anyio.CapacityLimiter  # a limiter of its own: the place's task cannot lend its token to a thread


@dataclasses.dataclass(frozen=True)
class _Hook:
    """One hook path, as an ASGI app: a bounded body, the work in a worker thread, every outcome counted."""

    path: str
    handle: Callable[[bytearray], BaseModel]
    settings: Settings
    workers: _Workers
    metrics: Metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        timeout = self.settings.hook_read_timeout_seconds
        outcome: bytes | HookError
        async with self.workers.places:
            try:
                body = await read_body(Request(scope, receive), self.settings.hook_max_body_bytes, timeout)
            except Exception as error:  # every failure becomes a counted answer, none a bare 500
                outcome = _failure(error, self.path)
            else:
                outcome = await anyio.to_thread.run_sync(
                    _outcome, self.handle, body, self.path, limiter=self.workers.threads
                )
                del body  # not needed while the answer is sent
            if isinstance(outcome, HookError):
                response = _error(outcome, self.metrics, self.path)
            else:
                response = Response(outcome, media_type=JSON)
            self.metrics.requests.labels(self.path, str(response.status_code)).inc()
            self.metrics.latency.labels(self.path).observe(time.perf_counter() - started)
            # The answer too is sent in the place (it may be megabytes), within the timeout: a client that does not
            # read it loses its connection rather than keep a place.
            with anyio.move_on_after(timeout):
                await response(scope, receive, send)


def _sync(
    body: bytes | bytearray, settings: Settings, now: datetime, tenants: tenant_metrics.TenantMetrics
) -> BaseModel:
    check_values(body, settings.hook_max_json_values)
    request = parse_body(SyncRequest, body)
    answer = sync.sync(request, settings, now)
    _observed(request, answer, tenants, now)
    tenants.job_runs(request.related.get(CONFIGMAPS, {}).get(f"{settings.namespace}/{names.JOB_STATUS_CONFIGMAP}"))
    return answer


def _observed(request: SyncRequest, answer: SyncResponse, tenants: tenant_metrics.TenantMetrics, now: datetime) -> None:
    """What the sync observed, into the per-EtcdStorage gauges (and a refused spec into the log, as the 422 was)."""
    name = tenant_metrics.label(request.parent.metadata.get("name"))
    ready = status.ready_condition(answer.status)
    if ready.get("reason") == status.INVALID_SPEC:
        log.warning("refused EtcdStorage name=%s problems=%s", _logged([name]), _logged([ready.get("message")]))
    if name is None:
        return
    if answer.finalized:
        tenants.forget(name)
    else:
        tenants.record(name, answer.status, now, tenant_metrics.interval(request.controller, answer.resyncAfterSeconds))
    tenants.expire(now)


def _customize(body: bytes | bytearray, settings: Settings) -> BaseModel:
    check_values(body, settings.hook_max_json_values)
    return sync.customize(parse_body(CustomizeRequest, body), settings)


async def read_body(request: Request, limit: int, timeout: float) -> bytearray:
    """The body, or `HookError` 413 as soon as it is known to be longer than `limit` bytes: from Content-Length
    before reading anything, else while reading (a chunked body announces no length). Holds at most `limit` bytes.
    `HookError` 408 when it has not all arrived after `timeout` seconds."""
    length = request.headers.get("content-length", "").lstrip("0")
    if length.isascii() and length.isdigit() and (len(length) > len(str(limit)) or int(length) > limit):
        raise _body_too_large(limit, f"Content-Length is {length[:20]}")
    body = bytearray()
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise _body_too_large(limit, f"more than {limit} bytes arrived")
                body += chunk
    except TimeoutError:
        raise HookError(
            408, "body_timeout",
            f"the body did not arrive within {timeout:g} seconds ({variable('hook_read_timeout_seconds')})",
            [f"body: {len(body)} bytes arrived in {timeout:g} seconds"],
        ) from None  # fmt: skip
    return body


def _body_too_large(limit: int, problem: str) -> HookError:
    return HookError(
        413, "body_too_large",
        f"the body is larger than the limit of {limit} bytes ({variable('hook_max_body_bytes')})",
        [f"body: {problem}"],
    )  # fmt: skip


def check_values(body: bytes | bytearray, limit: int) -> None:
    """`HookError` 413 when the body may hold more than `limit` JSON values, before anything parses it: its commas
    and opening brackets bound the values (strings' own count too, which only errs on the safe side)."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > limit:
        raise HookError(
            413, "too_many_values",
            f"the body may hold more JSON values than the limit of {limit} ({variable('hook_max_json_values')})",
            [f"body: {values} commas and opening brackets, more than {limit}"],
        )  # fmt: skip


def parse_body(model: type[M], body: bytes | bytearray) -> M:
    """The request as `model`, or `HookError` 422 naming every problem: exactly what `model.model_validate_json`
    reads and refuses, in some 70 % of its time on the bodies Metacontroller sends (tens of kilobytes of children)."""
    # pydantic's own JSON parser (jiter), then validation of the Python values, is faster than validating the JSON
    # directly and reads the same: the same numbers, the same depth limit (200, where orjson 3.13 reads 1024 and
    # orjson 3.8 crashed the process on 60,000). Anything it or the validation refuses is left to pydantic, so that
    # refusals read as before.
    try:
        return model.model_validate(pydantic_core.from_json(body))
    except ValueError:  # ValidationError is one too
        pass
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        # One call of errors(), the costly part with many problems (0.4 s for 240,000), and only what is shown.
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors]
        kind = "json" if any(e["type"] == "json_invalid" for e in errors) else "request"
        message = "body is not JSON" if kind == "json" else "body is not a Metacontroller hook request"
        raise HookError(422, f"invalid_{kind}", message, problems) from None


def _outcome(handle: Callable[[bytearray], BaseModel], body: bytearray, path: str) -> bytes | HookError:
    """The encoded answer or the refusal, in a worker thread. Errors become values here: raised back into the event
    loop, an error's traceback keeps the parsed request alive in a reference cycle until a full garbage collection
    (8 refused bodies of 8 MiB at once held 380 MB)."""
    try:
        return encode_answer(handle(body))
    except Exception as error:  # every failure becomes a counted answer, none a bare 500
        return _failure(error, path)


def _failure(error: Exception, path: str) -> HookError:
    """The answer for `error`, logged in one line of bounded length; a new error, without the traceback (and the
    request in its frames) of the one raised."""
    if isinstance(error, spec.InvalidSpec):
        log.warning("refused EtcdStorage name=%s problems=%s", _logged([error.name]), _logged(error.problems))
        return HookError(422, "invalid_spec", str(error), [str(p) for p in error.problems])
    if isinstance(error, sync.TooManyObjects):
        failure = HookError(
            422, "too_many_objects", f"{error} ({variable('hook_max_objects_per_kind')})", error.problems
        )
    elif isinstance(error, ClientDisconnect):
        failure = HookError(400, "client_disconnected", "the client went away before the body was read")
    elif isinstance(error, HookError):
        failure = HookError(error.code, error.reason, error.message, error.problems)
    else:
        # Bounded too: the frames (code, not input), and the error's own text cut short.
        frames = "".join(traceback.format_tb(error.__traceback__)[-LOGGED_FRAMES:])
        log.error("hook failed path=%s error=%s traceback:\n%s", path, _clip(repr(error), 200), frames)
        return HookError(500, "internal", "the hook failed; see its logs")
    log.warning("refused request path=%s reason=%s problems=%s", path, failure.reason, _logged(failure.problems))
    return failure


def _clip(text: str, limit: int = LOGGED_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _logged(problems: list[Any]) -> str:
    """The first problems, cut short, on one line whatever they quote (a name or a key may hold a newline)."""
    shown = "; ".join(_clip(str(p)) for p in problems[:LOGGED_PROBLEMS]).translate(_CONTROLS)
    return shown + (f" (and {len(problems) - LOGGED_PROBLEMS} more)" if len(problems) > LOGGED_PROBLEMS else "")


def encode_answer(answer: BaseModel) -> bytes:
    """The answer as JSON without its None fields, as `model_dump(exclude_none=True)` gives it. Its fields hold plain
    JSON values, checked when the answer was built, so orjson encodes them as they are: model_dump would first copy
    every child. Nested models (customize's rules) are dumped by pydantic."""
    try:
        return orjson.dumps({name: value for name, value in answer if value is not None}, default=_dump_nested)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits (a previous status, echoed while finalizing): pydantic writes it as read.
        return answer.model_dump_json(exclude_none=True).encode()


def _dump_nested(value: object) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _error(error: HookError, metrics: Metrics, path: str) -> Response:
    metrics.errors.labels(path, error.reason).inc()
    problems = [_clip(problem, MAX_PROBLEM_CHARS) for problem in error.problems[:MAX_PROBLEMS]]
    if len(error.problems) > MAX_PROBLEMS:
        problems.append(f"... and {len(error.problems) - MAX_PROBLEMS} more")
    body = {"error": error.reason, "message": _clip(error.message, MAX_MESSAGE_CHARS), "problems": problems}
    return Response(orjson.dumps(body), status_code=error.code, media_type=JSON)
