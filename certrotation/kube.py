"""The cert-rotation job's access to Kubernetes: the only module that imports the `kubernetes` client.

Thin: objects go in and come out as plain dicts exactly as the API server serves them (Secret data base64), and every
failure is one of the `KubeError` family below. No retries and no decisions here; `certrotation.apply` and
`certrotation.job` make them. Error messages are redacted so that nothing the API server echoes (it may quote a field
value) reaches a log as is.

Errors, each raised `from` the client's exception it stands for::

    KubeError                   any failure to use the Kubernetes API
    ├── ConnectError            no in-cluster ServiceAccount and no usable kubeconfig: nothing was asked
    ├── TransportError          no answer: connection refused or reset, TLS failure, timeout
    ├── DecodingError           an answer that is not the JSON object the API promises
    └── ApiError                an answer with an error status (`status`, `reason`, redacted `message`)
        ├── ForbiddenError      403: the job's ServiceAccount lacks a permission
        ├── NotFoundError       404: the object or the resource does not exist
        └── ConflictError       409: a stale resourceVersion on update, or AlreadyExists on create

The `kubernetes` package is imported when a connection is made, not with this module: the pure parts of the job
(`certrotation.plan`) use `Kind` and `Ref` from here without paying for the client.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

from etcdstorage import names

if TYPE_CHECKING:
    import kubernetes.client

REQUEST_TIMEOUT: Final = (5.0, 30.0)  # seconds to connect, seconds to read
LIST_PAGE: Final = 250
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{40,}")  # base64 runs, tokens and the like: never echoed
_MAX_MESSAGE: Final = 300


class Kind(enum.StrEnum):
    CONFIGMAP = "ConfigMap"
    SECRET = "Secret"
    EVENT = "Event"  # core v1: what `kubectl describe` lists; the job only creates and counts its own


_PATHS: Final = {Kind.CONFIGMAP: "configmaps", Kind.SECRET: "secrets", Kind.EVENT: "events"}


@dataclasses.dataclass(frozen=True)
class Ref:
    """Where an object of the job lives."""

    kind: Kind
    namespace: str
    name: str
    destination: bool = False  # pre-created by the API server's operator in its namespace: never created by the job

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- Errors -----------------------------------------------------------------------------------------------------------


class KubeError(Exception):
    """Any failure to use the Kubernetes API; the message never carries key material or tokens."""


class ConnectError(KubeError):
    """No in-cluster ServiceAccount and no usable kubeconfig."""


class TransportError(KubeError):
    """The request got no answer: the API server is unreachable, the TLS handshake failed, or it timed out."""


class DecodingError(KubeError):
    """The API server answered with something other than the JSON object the API promises."""


class ApiError(KubeError):
    """The API server refused or failed a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = _redact(message)
        super().__init__(f"{status} {reason}: {self.message}")


class NotFoundError(ApiError):
    """404."""


class ForbiddenError(ApiError):
    """403: the job's ServiceAccount lacks a permission."""


class ConflictError(ApiError):
    """409: a stale resourceVersion on update, or AlreadyExists on create. Re-read and try again."""


_BY_STATUS: Final[Mapping[int, type[ApiError]]] = {403: ForbiddenError, 404: NotFoundError, 409: ConflictError}


class Api(Protocol):
    """What the job needs of Kubernetes. `Kubernetes` implements it; the tests' fake does too."""

    def list_etcdstorages(self) -> list[dict[str, Any]]:
        """Every EtcdStorage object of the cluster."""
        ...

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ...

    def list_page(self, kind: Kind, namespace: str, *, limit: int, token: str = "") -> tuple[list[dict[str, Any]], str]:
        """Up to `limit` objects of the namespace, each as `get` gives it (resourceVersion included), and the token
        that continues the list ("" after the last page). The pages of one list are one consistent snapshot."""
        ...

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create; `ConflictError` when it already exists."""
        ...

    def replace(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Update the whole object; `body` carries the resourceVersion it was read at (`ConflictError` if stale)."""
        ...


class Kubernetes:
    """`Api` over the real API server."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._client = client

    def list_etcdstorages(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = f"?limit={LIST_PAGE}" + (f"&continue={quote(token)}" if token else "")
            page = self._request("GET", f"/apis/{names.GROUP}/{names.VERSION}/{names.PLURAL}{query}")
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", _path(kind, namespace, name))
        except NotFoundError:
            return None

    def list_page(self, kind: Kind, namespace: str, *, limit: int, token: str = "") -> tuple[list[dict[str, Any]], str]:
        query = f"?limit={limit}" + (f"&continue={quote(token, safe='')}" if token else "")
        page = self._request("GET", _path(kind, namespace) + query)
        # A List's items carry no apiVersion and kind; put them back so that an item is what a GET of it serves.
        items = [{"apiVersion": "v1", "kind": str(kind), **item} for item in page.get("items") or []]
        return items, str((page.get("metadata") or {}).get("continue") or "")

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._request("POST", _path(kind, namespace), dict(body))

    def replace(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        metadata = body.get("metadata") or {}
        if not metadata.get("resourceVersion"):
            raise ValueError("replace without a resourceVersion would overwrite blindly")
        return self._request("PUT", _path(kind, namespace, metadata["name"]), dict(body))

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment or StatefulSet (apps/v1), None when it does not exist."""
        try:
            return self._request("GET", _workload_path(kind, namespace, name))
        except NotFoundError:
            return None

    def patch_workload(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a Deployment or StatefulSet: only the fields `patch` names change."""
        path = _workload_path(kind, namespace, name)
        return self._request("PATCH", path, dict(patch), content_type="application/merge-patch+json")

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        import urllib3  # noqa: PLC0415 (already loaded by the client: see the module's docstring)
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        # The generated client's typed methods would turn our dicts into its model classes; serialize them as they are.
        method, url, headers, serialized, _ = self._client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._client.call_api(
                method, url, header_params=headers, body=serialized, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if not error.status:  # the client's way of saying that no answer came (a TLS failure)
                raise TransportError(f"{method} {path}: {_redact(str(error.reason or 'no answer'))}") from error
            raise _error(int(error.status), error.body or "") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise TransportError(f"{method} {path}: {type(error).__name__}") from error
        data = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise _error(response.status, data.decode("utf-8", "replace") if data else "")
        try:
            parsed = json.loads(data)
        except ValueError as error:
            raise DecodingError(f"{method} {path}: the answer is not JSON") from error
        if not isinstance(parsed, dict):
            raise DecodingError(f"{method} {path}: the answer is not a JSON object")
        return parsed


def list_all(api: Api, kind: Kind, namespace: str) -> list[dict[str, Any]]:
    """Every object of `kind` in `namespace`, page by page (`LIST_PAGE` a page)."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        page, token = api.list_page(kind, namespace, limit=LIST_PAGE, token=token)
        items.extend(page)
        if not token:
            return items


def connect(kubeconfig: str | None = None) -> Kubernetes:
    """In the cluster: the pod's ServiceAccount. Elsewhere: `kubeconfig`, or $KUBECONFIG / ~/.kube/config."""
    import kubernetes.client  # noqa: PLC0415 (see the module's docstring)
    import kubernetes.config  # noqa: PLC0415

    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is None and kubernetes.config.incluster_config.SERVICE_HOST_ENV_NAME in os.environ:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException as error:
        raise ConnectError(_redact(str(error))) from error
    return Kubernetes(kubernetes.client.ApiClient(configuration))


def _path(kind: Kind, namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{_PATHS[kind]}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def _workload_path(kind: str, namespace: str, name: str) -> str:
    resource = {"Deployment": "deployments", "StatefulSet": "statefulsets"}[kind]
    return f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/{resource}/{quote(name, safe='')}"


def _error(status: int, body: str) -> ApiError:
    reason, message = "", body
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        reason, message = str(parsed.get("reason", "")), str(parsed.get("message", ""))
    return _BY_STATUS.get(status, ApiError)(status, reason, message)


def _redact(message: str) -> str:
    """The message without long base64-like runs (certificates, keys, tokens a field may have held), cut short."""
    return _LONG_TOKEN.sub("[redacted]", message)[:_MAX_MESSAGE]
