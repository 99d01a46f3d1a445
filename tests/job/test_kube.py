"""`certrotation.kube`'s error family, through the real `kubernetes` client against a local HTTP server that answers
as an API server would (tests/e2e/test_cert_rotation_job.py talks to a real kube-apiserver), and the redaction of
what an API server echoes, judged in the job's log."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import kubernetes.client
import pytest

from certrotation import job, kube, pki
from etcdstorage import names
from tests.job.world import APISERVER_NAMESPACE, CLIENT_CERT, T0, TENANT, C, captured_logs, lines, new_world

TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ"  # a JWT's shape


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers each path with the status and body of `ANSWERS`."""

    ANSWERS: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.ANSWERS[self.path.split("?")[0]]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, _format: str, *args: Any) -> None:
        pass  # quiet: pytest shows what the test asserts


def status(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message}
    ).encode()


@pytest.fixture
def api() -> Iterator[kube.Kubernetes]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    configuration.proxy = None
    try:
        yield kube.Kubernetes(kubernetes.client.ApiClient(configuration))
    finally:
        server.shutdown()
        server.server_close()


def secret_path(name: str) -> str:
    return f"/api/v1/namespaces/ns/secrets/{name}"


@pytest.mark.parametrize(
    ("answer", "error_type", "reason"),
    [
        pytest.param((403, status(403, "Forbidden", "no")), kube.ForbiddenError, "Forbidden", id="403 is forbidden"),
        pytest.param((409, status(409, "Conflict", "stale")), kube.ConflictError, "Conflict", id="409 is a conflict"),
        pytest.param((500, b"upstream died"), kube.ApiError, "", id="a 500 that is not a Status is an API error"),
        pytest.param((200, b"<html>"), kube.DecodingError, None, id="an answer that is not JSON"),
        pytest.param((200, b"[1, 2]"), kube.DecodingError, None, id="JSON that is not an object"),
    ],
)
def test_each_answer_becomes_its_error_of_the_family(
    api: kube.Kubernetes, answer: tuple[int, bytes], error_type: type[kube.KubeError], reason: str | None
) -> None:
    Answers.ANSWERS = {secret_path("s"): answer}
    with pytest.raises(kube.KubeError) as raised:
        api.get(kube.Kind.SECRET, "ns", "s")
    assert type(raised.value) is error_type
    if reason is not None:
        assert isinstance(raised.value, kube.ApiError)
        assert (raised.value.status, raised.value.reason) == (answer[0], reason)


def test_a_missing_object_is_none(api: kube.Kubernetes) -> None:
    Answers.ANSWERS = {secret_path("gone"): (404, status(404, "NotFound", 'secrets "gone" not found'))}
    assert api.get(kube.Kind.SECRET, "ns", "gone") is None


def test_a_refused_connection_is_a_transport_error_not_an_http_status() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.proxy = None
    configuration.retries = 0
    api = kube.Kubernetes(kubernetes.client.ApiClient(configuration))
    with pytest.raises(kube.TransportError) as raised:
        api.get(kube.Kind.SECRET, "ns", "s")
    assert not isinstance(raised.value, kube.ApiError)  # no "HTTP status 0"
    assert raised.value.__cause__ is not None
    assert "GET /api/v1/namespaces/ns/secrets/s" in str(raised.value)


def test_what_the_api_server_echoes_is_redacted(api: kube.Kubernetes) -> None:
    key = base64.b64encode(b"-----BEGIN PRIVATE KEY----- " + bytes(range(48))).decode()
    message = f'Secret "s" is invalid: data[tls.key]: Invalid value: "{key}"; token {TOKEN}'
    Answers.ANSWERS = {secret_path("s"): (422, status(422, "Invalid", message))}
    with pytest.raises(kube.ApiError) as raised:
        api.get(kube.Kind.SECRET, "ns", "s")
    assert raised.value.reason == "Invalid"
    for text in (raised.value.message, str(raised.value)):
        assert key not in text
        assert TOKEN not in text
        assert key[:40] not in text
        assert 'Secret "s" is invalid: data[tls.key]: Invalid value' in text  # the useful part stays


def test_an_api_error_that_echoes_key_material_reaches_the_log_redacted() -> None:
    """The API server may quote the value it refuses: the job logs its message, never the value."""
    world = new_world()
    replace = world.api.replace
    echoed: list[str] = []

    def refuse_the_client_certificate(kind: kube.Kind, namespace: str, body: Any) -> dict[str, Any]:
        if body["metadata"]["name"] == CLIENT_CERT:
            value = body["data"][names.TLS_KEY]
            echoed.append(value)
            raise kube.ApiError(422, "Invalid", f"data[tls.key]: Invalid value: {value!r}; bearer {TOKEN}")
        return replace(kind, namespace, body)

    world.api.replace = refuse_the_client_certificate  # type: ignore[method-assign]
    with captured_logs() as logs:
        assert world.run(T0) == job.EXIT_FAILURES
    [line] = lines(logs, "tenant object failed")
    assert f"object={APISERVER_NAMESPACE}/{CLIENT_CERT}" in line
    assert "update refused: 422 Invalid: data[tls.key]: Invalid value" in line
    [value] = echoed
    assert pki.parse_key(base64.b64decode(value))  # what was echoed is a real private key...
    told = str(world.api.object(kube.Kind.CONFIGMAP, C, names.client_ca_configmap(TENANT))) + str(world.events())
    assert "data[tls.key]: Invalid value" in told  # the report and the Event say what was refused...
    for text in (logs.getvalue(), told):
        for secret in (value, value[:40], TOKEN, TOKEN[:40]):
            assert secret not in text  # ...and neither they nor the log carry the key
