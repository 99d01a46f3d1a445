"""Operator settings: read once from the environment at start-up, then passed to the pure core as a value.

`from_env` is the only function here that reads the process environment; everything else takes a `Settings`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from hooks import durations, names

ENV_PREFIX: Final = "ETCDSTORAGE_"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot run with."""


@dataclasses.dataclass(frozen=True)
class Settings:
    namespace: str = names.DEFAULT_CONTROLLER_NAMESPACE
    core_etcd_urls: tuple[str, ...] = ("https://etcd-svc-1.etcd.svc:2379",)
    core_ca_configmap: str = names.CORE_CA_CONFIGMAP
    core_cert_secret: str = names.CORE_CERT_SECRET
    proxy_image: str = "etcdstorage-proxy:0.1.0"  # the tenant proxy, built from tenant-proxy/ (Dockerfile.proxy)
    key_prefix_root: str = names.DEFAULT_PREFIX_ROOT
    cluster_domain: str = "cluster.local"
    replicas: int = 3
    # Seconds until Metacontroller calls again while waiting for certificates or for proxies to become available.
    waiting_resync_seconds: int = 15
    # Cert-rotation job: the least time a new CA stays published in the bundles before leaves are issued from it
    # (at least a tenth of the CA's validity is used when that is longer; see hooks/rotation.py).
    ca_propagation_delay: timedelta = timedelta(minutes=10)


# Environment variable (without prefix) -> (field, parser).
def _urls(value: str) -> tuple[str, ...]:
    urls = tuple(url.strip() for url in value.split(",") if url.strip())
    if not urls or not all(url.startswith(("https://", "http://")) for url in urls):
        raise ValueError("expected a comma-separated list of http(s):// URLs")
    return urls


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


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


_PARSERS: Final = {
    "NAMESPACE": ("namespace", _dns_label),
    "CORE_ETCD_URLS": ("core_etcd_urls", _urls),
    "CORE_CA_CONFIGMAP": ("core_ca_configmap", _text),
    "CORE_CERT_SECRET": ("core_cert_secret", _text),
    "PROXY_IMAGE": ("proxy_image", _text),
    "KEY_PREFIX_ROOT": ("key_prefix_root", _text),
    "CLUSTER_DOMAIN": ("cluster_domain", _text),
    "REPLICAS": ("replicas", _positive_int),
    "WAITING_RESYNC_SECONDS": ("waiting_resync_seconds", _positive_int),
    "CA_PROPAGATION_DELAY": ("ca_propagation_delay", _duration),
}


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
