"""Certificates for integration tests, issued with `certrotation.pki` and laid out on disk as a pod mounts them.

Test support only. Files with keys are written with mode 0600 and their contents are never printed.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from certrotation import pki
from etcdstorage import names
from etcdstorage.spec import KeyAlgorithm

ALGORITHM: Final = KeyAlgorithm.ECDSA_P256
CA_VALIDITY: Final = timedelta(days=30)
LEAF_VALIDITY: Final = timedelta(days=7)
LOOPBACK_HOSTS: Final = ["localhost", "127.0.0.1"]


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """What one side of a TLS connection loads: the CA bundle it trusts, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class CorePKI:
    """The core etcd's: one CA for server and clients, as kubeadm sets it up."""

    ca: pki.KeyPair
    server: TLSFiles
    proxy_client: TLSFiles  # empty CN: etcd's grpc-proxy refuses an upstream certificate with one
    admin: TLSFiles  # the core API server's own client certificate


@dataclasses.dataclass(frozen=True)
class TenantPKI:
    """One EtcdStorage's two CAs and two leaves, in the directories the proxy and the API server read them from."""

    tenant: str
    serving_ca: pki.KeyPair
    client_ca: pki.KeyPair
    proxy: TLSFiles  # server cert + key, and the client CA bundle it verifies clients with
    apiserver: TLSFiles  # client cert + key, and the serving CA bundle it verifies the proxy with


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def write_pair(
    directory: Path, pair: pki.KeyPair, *, cert_name: str = names.TLS_CRT, key_name: str = names.TLS_KEY
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / cert_name, directory / key_name
    cert.write_bytes(pair.cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pair.key_pem)
    return cert, key


def write_bundle(path: Path, *cas: pki.KeyPair) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pki.encode_certs([ca.cert for ca in cas]))
    return path


def issue_core(directory: Path, *, at: datetime | None = None) -> CorePKI:
    at = at or now()
    ca = pki.new_ca("etcd-ca", now=at, validity=CA_VALIDITY, algorithm=ALGORITHM)
    ca_file = write_bundle(directory / "ca" / names.CORE_CA_KEY, ca)

    def client(name: str, common_name: str | None) -> TLSFiles:
        pair = pki.new_client_cert(ca, common_name, now=at, validity=LEAF_VALIDITY, algorithm=ALGORITHM)
        return TLSFiles(ca_file, *write_pair(directory / name, pair))

    server = pki.new_server_cert(ca, ["etcd", *LOOPBACK_HOSTS], now=at, validity=LEAF_VALIDITY, algorithm=ALGORITHM)
    return CorePKI(
        ca=ca,
        server=TLSFiles(ca_file, *write_pair(directory / "server", server)),
        proxy_client=client("proxy-client", None),
        admin=client("admin", "kube-apiserver-etcd-client"),
    )


def issue_tenant(directory: Path, tenant: str, *, at: datetime | None = None) -> TenantPKI:
    at = at or now()
    serving_ca = pki.new_ca(f"{tenant}-serving-ca", now=at, validity=CA_VALIDITY, algorithm=ALGORITHM)
    client_ca = pki.new_ca(f"{tenant}-client-ca", now=at, validity=CA_VALIDITY, algorithm=ALGORITHM)
    hosts = names.service_hosts(tenant, names.DEFAULT_CONTROLLER_NAMESPACE, "cluster.local") + LOOPBACK_HOSTS
    server = pki.new_server_cert(serving_ca, hosts, now=at, validity=LEAF_VALIDITY, algorithm=ALGORITHM)
    client = pki.new_client_cert(client_ca, f"{tenant}-apiserver", now=at, validity=LEAF_VALIDITY, algorithm=ALGORITHM)
    proxy_cert, proxy_key = write_pair(directory / "server", server)
    apiserver_cert, apiserver_key = write_pair(directory / "apiserver", client)
    return TenantPKI(
        tenant=tenant,
        serving_ca=serving_ca,
        client_ca=client_ca,
        proxy=TLSFiles(write_bundle(directory / "ca" / names.CLIENT_CA_KEY, client_ca), proxy_cert, proxy_key),
        apiserver=TLSFiles(
            write_bundle(directory / "apiserver" / names.SERVING_CA_KEY, serving_ca), apiserver_cert, apiserver_key
        ),
    )


def client_files(directory: Path, ca_bundle: Path, pair: pki.KeyPair) -> TLSFiles:
    """Write an extra client identity (expired, from another CA, ...) that trusts `ca_bundle`."""
    return TLSFiles(ca_bundle, *write_pair(directory, pair))
