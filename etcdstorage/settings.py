"""Operator settings: read once from the environment at start-up, then passed to the pure core as a value.

`from_env` is the only function here that reads the process environment; everything else takes a `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from etcdstorage import durations, names, spec

ENV_PREFIX: Final = "ETCDSTORAGE_"
# [registry[:port]/]path[:tag][@digest], as the kubelet reads an image reference; no whitespace, no scheme.
_IMAGE: Final = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot run with."""


@dataclasses.dataclass(frozen=True)
class Settings:
    namespace: str = names.DEFAULT_CONTROLLER_NAMESPACE
    core_etcd_urls: tuple[str, ...] = ("https://etcd-svc-1.etcd.svc:2379",)
    core_ca_configmap: str = names.CORE_CA_CONFIGMAP
    core_cert_secret: str = names.CORE_CERT_SECRET
    proxy_image: str = "etcdstorage-proxy:0.1.0"  # the tenant proxy, built from tenant-proxy/ (its Dockerfile)
    key_prefix_root: str = names.DEFAULT_PREFIX_ROOT
    # The job: the tenant proxy's binary, which deletes a going tenant's keys (deletionPolicy Delete); on PATH in the
    # image (/usr/local/bin).
    tenant_proxy_binary: str = "tenant-proxy"
    # The job: how many tenants' passes overlap (their requests to the API server are what takes the time).
    job_workers: int = 8
    cluster_domain: str = "cluster.local"
    replicas: int = 3
    # Seconds until Metacontroller calls again while waiting for certificates or for proxies to become available.
    waiting_resync_seconds: int = 15
    # Cert-rotation job: the least time a new CA stays published in the bundles before leaves are issued from it
    # (at least a tenth of the CA's validity is used when that is longer; see certrotation/rotation.py).
    ca_propagation_delay: timedelta = timedelta(minutes=10)
    # Hook requests (hooks/app.py). A sync body holds the parent (at most 1.5 MiB, etcd's limit), the `<N>-ca-cert`
    # ConfigMap (as much) and three children the hook wrote (some 5 kB, plus at most 256 KiB of annotations each):
    # under 4 MiB at every ceiling at once; real bodies are some 50 kB. Memory sets the bound too: the worst body (a
    # status echoed while finalizing) costs 8 times its size to answer, and 16 clients sending it at once took the
    # hook to 220-260 MiB at 8 MiB, 130-140 MiB at 4 MiB (its container has 256Mi).
    hook_max_body_bytes: int = 4 * 1024 * 1024
    # Commas and opening brackets in a body, an upper bound of the JSON values it holds (real bodies: some 3,500).
    # Parsed, a tiny value costs up to 27 times its bytes (4 MiB of `[],` is 110 MB): this bounds what size cannot.
    hook_max_json_values: int = 256 * 1024
    # Kinds in `children` and in `related`, and objects of each kind: Metacontroller sends the three child kinds and
    # the one ConfigMap the hook asks for, and the hook names one child of each kind.
    hook_max_objects_per_kind: int = 16
    # Items of a list in an EtcdStorage spec, as the CRD's maxItems (32 destinations per list): a longer list is
    # refused whole, before a problem is named for each of its items.
    hook_max_spec_list_items: int = spec.MAX_DESTINATIONS
    # Requests read, parsed, answered and sent at once, the work in a worker thread; the others wait, their bodies
    # unread. Two, so that one slow request holds up no other: more buy no speed (one thread runs at a time under the
    # GIL), only memory.
    hook_workers: int = 2
    # Seconds a body may take to arrive, and its answer to be taken, so that a stalled client cannot keep a worker:
    # Metacontroller's own timeout for a hook call (metacontroller/compositecontroller.yaml).
    hook_read_timeout_seconds: int = 10


# Environment variable (without prefix) -> (field, parser).
def _urls(value: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in value.split(",") if url.strip())
    if not urls:
        raise ValueError("expected a comma-separated list of http(s):// URLs")
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname or any(c.isspace() for c in url):
            raise ValueError(f"{url!r} is not an http(s)://host[:port] URL")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
            raise ValueError(f"{url!r}: an etcd client URL has a scheme, a host and a port only")
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    return urls


def _command(value: str) -> str:
    """A program: a name looked up on PATH, or an absolute path; nothing a shell would read differently."""
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", value) or ("/" in value and not value.startswith("/")):
        raise ValueError("expected a program name on PATH or an absolute path, such as 'tenant-proxy'")
    return value


def _prefix_root(value: str) -> str:
    """`/`, or DNS labels separated by `/`: never the core API server's `/registry` or another system's top-level
    key (with root `registry`, a tenant named `secrets` would get `/registry/secrets/`, every Secret of the cluster)."""
    segments = [segment for segment in value.strip().split("/") if segment]
    if not segments:
        return "/"
    for segment in segments:
        if not names.DNS_LABEL.match(segment) or len(segment) > names.MAX_DNS_LABEL:
            raise ValueError(
                f"segment {segment!r} is not a DNS label: expected '/' or labels separated by '/', "
                "such as 'etcdstorage'"
            )
    if segments[0] in names.RESERVED_NAMES:
        raise ValueError(
            f"'/{segments[0]}/' holds another system's keys in a core etcd (kube-apiserver stores the cluster under "
            "/registry): tenants under it could read them; choose another root, such as 'etcdstorage'"
        )
    return "/".join(segments)


def _image(value: str) -> str:
    if not _IMAGE.match(value.strip()):
        raise ValueError("expected a container image reference, such as 'registry.example/etcdstorage-proxy:0.1.0'")
    return value.strip()


def _dns_subdomain(value: str) -> str:
    if not names.DNS_SUBDOMAIN.match(value) or len(value) > names.MAX_DNS_SUBDOMAIN:
        raise ValueError("expected a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters)")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("expected a positive integer")
    return number


def _dns_label(value: str) -> str:
    if not names.DNS_LABEL.match(value) or len(value) > names.MAX_DNS_LABEL:
        raise ValueError("expected a DNS label (lower-case letters, digits and '-', at most 63 characters)")
    return value


def _duration(value: str) -> timedelta:
    parsed = durations.parse(value)
    if parsed < timedelta(0):
        raise ValueError("expected a duration that is not negative")
    return parsed


_PARSERS: Final = {
    "NAMESPACE": ("namespace", _dns_label),
    "CORE_ETCD_URLS": ("core_etcd_urls", _urls),
    "CORE_CA_CONFIGMAP": ("core_ca_configmap", _dns_subdomain),
    "CORE_CERT_SECRET": ("core_cert_secret", _dns_subdomain),
    "PROXY_IMAGE": ("proxy_image", _image),
    "KEY_PREFIX_ROOT": ("key_prefix_root", _prefix_root),
    "TENANT_PROXY_BINARY": ("tenant_proxy_binary", _command),
    "JOB_WORKERS": ("job_workers", _positive_int),
    "CLUSTER_DOMAIN": ("cluster_domain", _dns_subdomain),
    "REPLICAS": ("replicas", _positive_int),
    "WAITING_RESYNC_SECONDS": ("waiting_resync_seconds", _positive_int),
    "CA_PROPAGATION_DELAY": ("ca_propagation_delay", _duration),
    "HOOK_MAX_BODY_BYTES": ("hook_max_body_bytes", _positive_int),
    "HOOK_MAX_JSON_VALUES": ("hook_max_json_values", _positive_int),
    "HOOK_MAX_OBJECTS_PER_KIND": ("hook_max_objects_per_kind", _positive_int),
    "HOOK_MAX_SPEC_LIST_ITEMS": ("hook_max_spec_list_items", _positive_int),
    "HOOK_WORKERS": ("hook_workers", _positive_int),
    "HOOK_READ_TIMEOUT_SECONDS": ("hook_read_timeout_seconds", _positive_int),
}


def variable(field: str) -> str:
    """The environment variable that sets `field` (messages name it, so that an operator knows what to raise)."""
    return next(ENV_PREFIX + suffix for suffix, (name, _) in _PARSERS.items() if name == field)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `ETCDSTORAGE_*` variables; unset ones keep the defaults of the original project."""
    environ = os.environ if environ is None else environ
    overrides: dict[str, object] = {}
    for suffix, (field, parse) in _PARSERS.items():
        variable = ENV_PREFIX + suffix
        if variable not in environ:
            continue
        try:
            overrides[field] = parse(environ[variable])
        except ValueError as error:
            raise SettingsError(f"{variable}={environ[variable]!r}: {error}") from None
    return dataclasses.replace(Settings(), **overrides)  # type: ignore[arg-type]
