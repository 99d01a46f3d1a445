"""An EtcdStorage object, checked and typed: the one place that decides what a valid tenant is.

The CRD refuses the same things at admission: etcdstorage/crd.py generates manifests/crd.yaml from the bounds
below, and the hook and the job check again because they never trust input. Pure: raises `InvalidSpec` naming every
offending field, never returns half a spec.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final, TypeVar

from etcdstorage import durations, names

MIN_VALIDITY: Final = timedelta(minutes=10)
MIN_RENEW_BEFORE: Final = timedelta(minutes=1)
# Defaults for fields the original required; manifests written for it always set them, so nothing changes there.
DEFAULT_SIGNING_VALIDITY: Final = "8760h"
DEFAULT_SERVING_VALIDITY: Final = "730h"
DEFAULT_CLIENT_VALIDITY: Final = "730h"
MAX_REPLICAS: Final = 50
# Items of caCertConfigMap and of clientCertSecret (the CRD's maxItems): far more API servers than any one of them
# has, and a bound on the work and the problems a single object can cause.
MAX_DESTINATIONS: Final = 32
MAX_DURATION_LENGTH: Final = 32  # characters; "8760h" is 5
# A duration as the CRD admits it: Go's syntax without a sign, without µs, and never a bare "0" (Go's ParseDuration
# takes those too). The CRD's rules read a duration only where it matches, so that CEL never fails on a typo.
DURATION: Final = re.compile(r"^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|ms|s|m|h))+$")
# A manual rotation request (the renew and rotate-ca annotations): any printable value up to this long, a timestamp say.
MAX_REQUEST_LENGTH: Final = 128
# Values quoted in problems are cut to this many characters: a problem names a value, it does not echo a megabyte.
_MAX_SHOWN: Final = 64


class KeyAlgorithm(enum.StrEnum):
    ECDSA_P256 = "ECDSAP256"
    RSA_2048 = "RSA2048"
    RSA_3072 = "RSA3072"
    RSA_4096 = "RSA4096"


class DeletionPolicy(enum.StrEnum):
    """What becomes of the tenant's keys in the core etcd when its EtcdStorage is deleted."""

    RETAIN = "Retain"  # kept (the original's behaviour, and the default): recreate the object to see them again
    DELETE = "Delete"  # deleted by the cert-rotation job before the object goes (a finalize hook holds it)


@dataclasses.dataclass(frozen=True, order=True)
class Destination:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# The workloads that run an aggregated API server, which the job rolls when its certificates change.
CONSUMER_API_VERSION: Final = "apps/v1"
CONSUMER_KINDS: Final = ("Deployment", "StatefulSet")


@dataclasses.dataclass(frozen=True, order=True)
class Consumer:
    """A Deployment or StatefulSet (apps/v1) of the tenant's API server."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidSpec(ValueError):
    """The EtcdStorage cannot be served as it is; `problems` says why, field by field."""

    def __init__(self, name: str, problems: list[Problem]) -> None:
        self.name = name
        self.problems = problems
        super().__init__(f"EtcdStorage {name!r} is invalid: " + "; ".join(str(p) for p in problems))


@dataclasses.dataclass(frozen=True)
class EtcdStorage:
    name: str
    uid: str
    generation: int
    ca_cert_configmaps: tuple[Destination, ...]
    client_cert_secrets: tuple[Destination, ...]
    signing_validity: timedelta
    serving_validity: timedelta
    client_validity: timedelta
    key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    replicas: int | None = None  # None: the operator's default (settings)
    renew_before: timedelta | None = None  # None: a third of each certificate's lifetime
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    deleting: bool = False  # metadata.deletionTimestamp is set: the object is going
    consumers: tuple[Consumer, ...] = ()  # rolled by the job when the certificates they mount change
    # Manual rotation (the annotations names.ANNOTATION_RENEW and ANNOTATION_ROTATE_CA): "" when none is asked for.
    renew: str = ""
    rotate_ca: str = ""
    # Annotations refused as requests: never a reason to refuse the object, whose certificates must go on rotating.
    request_problems: tuple[Problem, ...] = ()


def name_problems(name: object) -> list[str]:
    """Why `name` cannot name an EtcdStorage (empty when it can)."""
    if not isinstance(name, str) or not name:
        return ["must be a non-empty string"]
    problems = []
    if len(name) > names.MAX_NAME_LENGTH:
        problems.append(
            f"must be at most {names.MAX_NAME_LENGTH} characters so that the Service "
            f"'{names.PROXY_NAME_PREFIX}<name>' fits 63 (it has {len(name)})"
        )
    if not names.DNS_LABEL.fullmatch(name):
        problems.append(
            "must be a DNS label: lower-case letters, digits and '-', starting and ending alphanumeric (no dots)"
        )
    if name in names.RESERVED_NAMES:
        problems.append(f"{name!r} is reserved: its key prefix could overlap another system's data in the core etcd")
    return problems


def parse(obj: Mapping[str, Any], *, max_list_items: int = MAX_DESTINATIONS) -> EtcdStorage:
    """Check an EtcdStorage object (as Kubernetes serves it) and return it typed, or raise `InvalidSpec`.

    A destination list longer than `max_list_items` is one problem, checked before its items: a million items would
    otherwise make a million problems.
    """
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = metadata.get("name")
    problems = [Problem("metadata.name", message) for message in name_problems(name)]
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        problems.append(Problem("spec", "must be an object"))
        spec = {}

    # Durations are compared in nanoseconds, as the CRD's CEL rules compare them: admission and hook agree exactly.
    def validity(field: str, default: str) -> int | None:
        raw = spec.get(field)
        value = _duration(f"spec.{field}", default if raw is None else raw, problems)
        if value is not None and value < _nanoseconds(MIN_VALIDITY):
            problems.append(
                Problem(f"spec.{field}", f"must be at least {durations.format(MIN_VALIDITY)}, got {_shown(raw)}")
            )
            return None
        return value

    signing = validity("signingCertificateValidity", DEFAULT_SIGNING_VALIDITY)
    serving = validity("servingCertificateValidity", DEFAULT_SERVING_VALIDITY)
    client = validity("clientCertificateValidity", DEFAULT_CLIENT_VALIDITY)
    if signing is not None:
        for field, leaf in (("servingCertificateValidity", serving), ("clientCertificateValidity", client)):
            if leaf is not None and leaf > signing:
                problems.append(
                    Problem(
                        f"spec.{field}",
                        "must not be longer than spec.signingCertificateValidity: a certificate never outlives its CA",
                    )
                )

    configmaps = _destinations(spec, "caCertConfigMap", max_list_items, problems)
    secrets = _destinations(spec, "clientCertSecret", max_list_items, problems)

    algorithm = _choice(spec, "keyAlgorithm", KeyAlgorithm.ECDSA_P256, problems)

    replicas = spec.get("replicas")
    if replicas is not None and (
        isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS
    ):
        problems.append(
            Problem("spec.replicas", f"must be an integer from 1 to {MAX_REPLICAS}, got {_shown(replicas)}")
        )
        replicas = None

    renew_before = None
    if spec.get("renewBefore") is not None:
        renew_before = _duration("spec.renewBefore", spec["renewBefore"], problems)
        if renew_before is not None:
            shortest = min((v for v in (signing, serving, client) if v is not None), default=None)
            if renew_before < _nanoseconds(MIN_RENEW_BEFORE):
                problems.append(Problem("spec.renewBefore", f"must be at least {durations.format(MIN_RENEW_BEFORE)}"))
            elif shortest is not None and renew_before >= shortest:
                problems.append(Problem("spec.renewBefore", "must be shorter than every certificate validity"))

    policy = _choice(spec, "deletionPolicy", DeletionPolicy.RETAIN, problems)
    consumers = _consumers(spec, max_list_items, problems)

    request_problems: list[Problem] = []
    renew = _request(metadata, names.ANNOTATION_RENEW, request_problems)
    rotate_ca = _request(metadata, names.ANNOTATION_ROTATE_CA, request_problems)

    uid = metadata.get("uid", "")
    generation = metadata.get("generation", 0)
    if problems:
        raise InvalidSpec(name if isinstance(name, str) else "", problems)
    if signing is None or serving is None or client is None or not isinstance(name, str):  # pragma: no cover
        raise AssertionError("every unparsed field was reported as a problem")
    return EtcdStorage(
        name=name,
        uid=uid if isinstance(uid, str) else "",
        generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else 0,
        ca_cert_configmaps=configmaps,
        client_cert_secrets=secrets,
        signing_validity=durations.to_timedelta(signing),
        serving_validity=durations.to_timedelta(serving),
        client_validity=durations.to_timedelta(client),
        key_algorithm=algorithm,
        replicas=replicas,
        renew_before=None if renew_before is None else durations.to_timedelta(renew_before),
        deletion_policy=policy,
        deleting=metadata.get("deletionTimestamp") is not None,
        consumers=consumers,
        renew=renew,
        rotate_ca=rotate_ca,
        request_problems=tuple(request_problems),
    )


def _request(metadata: Mapping[str, Any], annotation: str, problems: list[Problem]) -> str:
    """The value of a manual rotation annotation, "" when it is absent or empty; "" and a problem when it is not a
    string of at most `MAX_REQUEST_LENGTH` printable characters (it lands in Events, logs and status)."""
    annotations = metadata.get("annotations")
    raw = annotations.get(annotation) if isinstance(annotations, Mapping) else None
    if raw is None or raw == "":
        return ""
    if isinstance(raw, str) and len(raw) <= MAX_REQUEST_LENGTH and raw.isprintable():
        return raw
    problems.append(
        Problem(
            f"metadata.annotations[{annotation}]",
            f"must be at most {MAX_REQUEST_LENGTH} printable characters (a timestamp, say), got {_shown(raw)}; "
            "nothing is done for it",
        )
    )
    return ""


_Choice = TypeVar("_Choice", bound=enum.StrEnum)


def _choice(spec: Mapping[str, Any], field: str, default: _Choice, problems: list[Problem]) -> _Choice:
    """The enum value of `spec[field]`, `default` when it is absent; a problem naming the choices when it is none."""
    raw = spec.get(field)
    if raw is None:
        return default
    try:
        return type(default)(raw)
    except ValueError:
        allowed = ", ".join(choice.value for choice in type(default))
        problems.append(Problem(f"spec.{field}", f"must be one of {allowed}, got {_shown(raw)}"))
        return default


def _nanoseconds(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000


def _shown(value: object) -> str:
    """`value` as a problem quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _duration(field: str, raw: Any, problems: list[Problem]) -> int | None:
    """`raw` in nanoseconds when the CRD admits it as a duration, else None and a problem."""
    if isinstance(raw, str) and len(raw) > MAX_DURATION_LENGTH:
        problems.append(Problem(field, f"must be at most {MAX_DURATION_LENGTH} characters, got {len(raw)}"))
        return None
    try:
        nanoseconds = durations.parse_nanoseconds(raw)
    except durations.DurationError as error:
        problems.append(Problem(field, str(error)))
        return None
    if not DURATION.fullmatch(raw):
        problems.append(
            Problem(field, f"invalid duration {raw!r}: write numbers with units ns, us, ms, s, m or h, unsigned")
        )
        return None
    return nanoseconds


def _fitting(value: object, pattern: re.Pattern[str], longest: int) -> str | None:
    """`value` when it is a string of at most `longest` characters that `pattern` matches whole, else None."""
    if isinstance(value, str) and len(value) <= longest and pattern.fullmatch(value):
        return value
    return None


def _consumers(spec: Mapping[str, Any], max_items: int, problems: list[Problem]) -> tuple[Consumer, ...]:
    """The distinct consumers, sorted: each `{apiVersion: apps/v1, kind, namespace, name}`, named as destinations."""
    items = _items(spec, "consumers", "{apiVersion, kind, namespace, name}", max_items, problems)
    found: set[Consumer] = set()
    for index, item in enumerate(items):
        where = f"spec.consumers[{index}]"
        place = _place(item, where, problems)
        api_version, kind = item.get("apiVersion"), item.get("kind")
        if api_version != CONSUMER_API_VERSION:
            shown = _shown(api_version)
            problems.append(Problem(f"{where}.apiVersion", f"must be {CONSUMER_API_VERSION}, got {shown}"))
        if kind not in CONSUMER_KINDS:
            problems.append(Problem(f"{where}.kind", f"must be {' or '.join(CONSUMER_KINDS)}, got {_shown(kind)}"))
        elif place is not None and api_version == CONSUMER_API_VERSION:
            found.add(Consumer(kind=str(kind), namespace=place.namespace, name=place.name))
    return tuple(sorted(found))


def _destinations(
    spec: Mapping[str, Any], field: str, max_items: int, problems: list[Problem]
) -> tuple[Destination, ...]:
    """The distinct destinations of a list, sorted. Duplicates are merged, not refused: the CRD refuses them at
    admission (a list keyed by namespace and name), but objects stored under the original's CRD may hold some."""
    found: set[Destination] = set()
    for index, item in enumerate(_items(spec, field, "{name, namespace}", max_items, problems)):
        place = _place(item, f"spec.{field}[{index}]", problems)
        if place is not None:
            found.add(place)
    return tuple(sorted(found))


def _items(
    spec: Mapping[str, Any], field: str, shape: str, max_items: int, problems: list[Problem]
) -> list[Mapping[str, Any]]:
    """The objects of a list field, [] for an unset one; problems for a non-list, a list too long, or non-objects
    (which are left out)."""
    raw = spec.get(field)
    if raw is None:  # the original's Go clients send null for an unset list
        return []
    if not isinstance(raw, list):
        problems.append(Problem(f"spec.{field}", f"must be a list of {shape}"))
        return []
    if len(raw) > max_items:
        problems.append(Problem(f"spec.{field}", f"must hold at most {max_items} items, got {len(raw)}"))
        return []
    items = []
    for index, item in enumerate(raw):
        if isinstance(item, Mapping):
            items.append(item)
        else:
            problems.append(Problem(f"spec.{field}[{index}]", f"must be an object {shape}"))
    return items


def _place(item: Mapping[str, Any], where: str, problems: list[Problem]) -> Destination | None:
    """The namespace and name of a list item, or None with a problem for each that is not valid."""
    name = _fitting(item.get("name"), names.DNS_SUBDOMAIN, names.MAX_DNS_SUBDOMAIN)
    namespace = _fitting(item.get("namespace"), names.DNS_LABEL, names.MAX_DNS_LABEL)
    if name is None:
        shown = _shown(item.get("name"))
        problems.append(Problem(f"{where}.name", f"must be a DNS subdomain (an object name), got {shown}"))
    if namespace is None:
        shown = _shown(item.get("namespace"))
        problems.append(Problem(f"{where}.namespace", f"must be a namespace name (a DNS label), got {shown}"))
    return Destination(namespace=namespace, name=name) if name is not None and namespace is not None else None
