"""A FAKE of the few Kubernetes API calls the cert-rotation job makes (`certrotation.kube.Api`), in memory.

What it does like the API server: objects as plain dicts, deep-copied in and out; a resourceVersion per object that
changes on every write; a paged list of a namespace's objects by name, `limit` a page and a `continue` token, every
page from the snapshot taken at the first (an unknown token is a 410 Expired); `replace` with a stale or missing
resourceVersion is a 409 Conflict, `create` of an existing object a 409 AlreadyExists, `replace` of a missing one a
404; uid, creationTimestamp and generation set on create; Secret `data` must be base64 and ConfigMap `data` strings
(422 otherwise); ownerReferences must name a uid. Every get and list request is recorded in `reads`, every write in
`writes`.
Test hooks: RBAC refusals per (verb, kind, namespace, name) as 403 (name "*" for list), or grants by name as a Role's
resourceNames; a crash after N writes (`Crash`, which the job must not catch, like a killed pod); a concurrent writer
that bumps an object just before the job's next write to it.

What it does NOT cover: authentication and real RBAC evaluation, admission (the CRD's schema and CEL rules),
defaulting, field managers, server-side apply, watches, garbage collection of owned objects, the type immutability
of Secrets, size limits, and HTTP itself. A real kube-apiserver covers those in tests/e2e.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from certrotation import kube
from etcdstorage import names

Key = tuple[kube.Kind, str, str]


class Crash(BaseException):
    """The job's process was killed: raised after the configured number of writes, through every handler."""


@dataclasses.dataclass
class Write:
    verb: str  # create | update
    kind: kube.Kind
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True)
class Read:
    verb: str  # get | list (one per page)
    kind: kube.Kind
    namespace: str
    name: str  # "" for a list


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.etcdstorages: dict[str, dict[str, Any]] = {}
        self.writes: list[Write] = []
        self.reads: list[Read] = []
        self.etcdstorage_verbs: set[str] = set()  # what the job asked of the EtcdStorage resource
        self.forbidden: set[tuple[str, kube.Kind, str, str]] = set()  # (verb, kind, namespace, name); name "*": all
        self.allowed_only: dict[tuple[str, kube.Kind, str], set[str]] = {}  # (verb, kind, namespace) -> names
        self.list_forbidden = False
        self.crash_after: int | None = None  # writes that succeed before `Crash`
        self.interfere: dict[Key, int] = {}  # per object: how many of the job's next updates another writer beats
        self._versions = itertools.count(1)
        self._tokens = itertools.count(1)
        self._lists: dict[str, list[dict[str, Any]]] = {}  # continue token -> the rest of that list's snapshot

    # --- setting up ---

    def add_etcdstorage(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(obj))
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = str(next(self._versions))
        self.etcdstorages[metadata["name"]] = stored
        return copy.deepcopy(stored)

    def put(self, kind: kube.Kind, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> None:
        """Create or overwrite an object as an operator would (not counted as the job's write)."""
        obj = copy.deepcopy(dict(body or {}))
        obj.setdefault("apiVersion", "v1")
        obj["kind"] = str(kind)
        metadata = obj.setdefault("metadata", {})
        metadata.update(name=name, namespace=namespace)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata["resourceVersion"] = str(next(self._versions))
        self.objects[(kind, namespace, name)] = obj

    def forbid(self, verb: str, kind: kube.Kind, namespace: str, name: str = "*") -> None:
        self.forbidden.add((verb, kind, namespace, name))

    def forbid_except(self, verb: str, kind: kube.Kind, namespace: str, allowed: set[str]) -> None:
        """Like a Role with resourceNames: `verb` on `kind` in `namespace` only for the `allowed` names."""
        self.allowed_only[(verb, kind, namespace)] = set(allowed)

    # --- reading the state in tests ---

    def object(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        data = self.objects[(kube.Kind.SECRET, namespace, name)].get("data") or {}
        return {key: base64.b64decode(value) for key, value in data.items()}

    def configmap_data(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.objects[(kube.Kind.CONFIGMAP, namespace, name)].get("data") or {})

    def snapshot(self) -> dict[Key, dict[str, Any]]:
        return copy.deepcopy(self.objects)

    # --- kube.Api ---

    def list_etcdstorages(self) -> list[dict[str, Any]]:
        self.etcdstorage_verbs.add("list")
        if self.list_forbidden:
            raise kube.ForbiddenError(403, "Forbidden", f"cannot list resource {names.PLURAL!r}")
        return [copy.deepcopy(obj) for _, obj in sorted(self.etcdstorages.items())]

    def get(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self._check("get", kind, namespace, name)
        self.reads.append(Read("get", kind, namespace, name))
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_page(
        self, kind: kube.Kind, namespace: str, *, limit: int, token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        self._check("list", kind, namespace, "*")
        self.reads.append(Read("list", kind, namespace, ""))
        if limit <= 0:
            raise kube.ApiError(400, "BadRequest", "limit must be positive")
        if token:
            if token not in self._lists:
                raise kube.ApiError(410, "Expired", "the provided continue parameter is too old")
            rest = self._lists.pop(token)
        else:
            found = [(key[2], obj) for key, obj in self.objects.items() if key[0] is kind and key[1] == namespace]
            rest = [copy.deepcopy(obj) for _, obj in sorted(found, key=lambda item: item[0])]
        page, rest = rest[:limit], rest[limit:]
        if not rest:
            return page, ""
        following = f"page-{next(self._tokens)}"
        self._lists[following] = rest
        return page, following

    def create(self, kind: kube.Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._check("create", kind, namespace, name)
        self._validate(kind, namespace, body)
        if (kind, namespace, name) in self.objects:
            raise kube.ConflictError(409, "AlreadyExists", f"{kind} {name!r} already exists")
        self._before_write()
        obj = copy.deepcopy(dict(body))
        metadata = obj["metadata"]
        if metadata.get("resourceVersion"):
            raise kube.ApiError(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        metadata.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)))
        metadata["creationTimestamp"] = "2024-01-01T00:00:00Z"
        self.objects[(kind, namespace, name)] = obj
        self.writes.append(Write("create", kind, namespace, name))
        return copy.deepcopy(obj)

    def replace(self, kind: kube.Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        key = (kind, namespace, name)
        self._check("update", kind, namespace, name)
        self._validate(kind, namespace, body)
        if self.interfere.get(key, 0) > 0 and key in self.objects:  # another writer got there first, once per try
            self.interfere[key] -= 1
            self.objects[key]["metadata"]["resourceVersion"] = str(next(self._versions))
        stored = self.objects.get(key)
        if stored is None:
            raise kube.NotFoundError(404, "NotFound", f"{kind} {name!r} not found")
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise kube.ConflictError(409, "Conflict", "the object has been modified; please apply your changes")
        self._before_write()
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        obj["metadata"]["uid"] = stored["metadata"]["uid"]
        self.objects[key] = obj
        self.writes.append(Write("update", kind, namespace, name))
        return copy.deepcopy(obj)

    # --- the server's checks ---

    def _check(self, verb: str, kind: kube.Kind, namespace: str, name: str) -> None:
        allowed = self.allowed_only.get((verb, kind, namespace))
        denied = (verb, kind, namespace, name) in self.forbidden or (verb, kind, namespace, "*") in self.forbidden
        if denied or (allowed is not None and name not in allowed):
            raise kube.ForbiddenError(
                403, "Forbidden", f"cannot {verb} resource {kind.lower()}s in the namespace {namespace!r}"
            )

    def _before_write(self) -> None:
        if self.crash_after is not None:
            if self.crash_after <= 0:
                raise Crash
            self.crash_after -= 1

    def _validate(self, kind: kube.Kind, namespace: str, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        if metadata.get("namespace", namespace) != namespace:
            raise kube.ApiError(400, "BadRequest", "the namespace of the object does not match the request")
        for reference in metadata.get("ownerReferences") or []:
            if not reference.get("uid") or not reference.get("name"):
                raise kube.ApiError(422, "Invalid", "metadata.ownerReferences.uid: Invalid value")
        for key, value in (body.get("data") or {}).items():
            if not isinstance(value, str):
                raise kube.ApiError(422, "Invalid", f"data[{key}]: must be a string")
            if kind is kube.Kind.SECRET:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise kube.ApiError(422, "Invalid", f"data[{key}]: illegal base64 data") from None


def check_interface(api: FakeApi) -> kube.Api:
    """Typed view: mypy checks here that the fake implements the job's interface."""
    return api
