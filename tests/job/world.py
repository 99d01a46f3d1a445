"""A cluster as the cert-rotation job sees it, on the in-memory fake API (tests/job/fake.py), and what each consumer
of the job's output holds: the proxy pods' mounted files and the API servers' mounted files.

`connects` judges a connection with cryptography's X.509 path validation at an injected time (OpenSSL and Go would
use the real clock): the API server verifies the proxy's serving certificate for the Service name, the proxy verifies
the API server's client certificate. tests/job/test_etcd.py does the same with real etcd and real TLS.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.x509 import verification

from certrotation import job, kube, pki
from etcdstorage import names, report
from etcdstorage.settings import Settings
from etcdstorage.spec import KeyAlgorithm
from tests.job.fake import FakeApi
from tests.support.objects import etcdstorage

C: Final = names.DEFAULT_CONTROLLER_NAMESPACE
TENANT: Final = "sample-apiserver"
APISERVER_NAMESPACE: Final = "k8s-sample-apiserver"
SERVING_CA: Final = "etcd-serving-ca"
CLIENT_CERT: Final = "etcd-client-cert"
T0: Final = datetime(2030, 1, 1, tzinfo=UTC)
ECDSA: Final = KeyAlgorithm.ECDSA_P256


@dataclasses.dataclass(frozen=True)
class Proxy:
    """What a proxy pod mounts (and reads at start): its serving pair and the client-CA bundle."""

    server_cert: bytes
    server_key: bytes
    client_ca: bytes


@dataclasses.dataclass(frozen=True)
class ApiServer:
    """What an aggregated API server mounts (and reads at start): its client pair and the serving-CA bundle."""

    client_cert: bytes
    client_key: bytes
    serving_ca: bytes


@dataclasses.dataclass
class World:
    api: FakeApi
    settings: Settings
    core_ca: pki.KeyPair
    workers: int = 1  # the job's ETCDSTORAGE_JOB_WORKERS for this world

    def tenant_writes(self) -> list[Any]:
        """The writes about tenants: all but the job's run record (written every few minutes even with nothing due)."""
        return [write for write in self.api.writes if write.name != names.JOB_STATUS_CONFIGMAP]

    def tenant_objects(self) -> dict[Any, Any]:
        """A snapshot of every object but the job's run record."""
        return {key: value for key, value in self.api.snapshot().items() if key[2] != names.JOB_STATUS_CONFIGMAP}

    def run(self, now: datetime) -> int:
        # One tenant at a time unless a test asks for more: a Crash then stops the whole pass at that write.
        return job.run(self.api, dataclasses.replace(self.settings, job_workers=self.workers), now)

    def proxy(self, tenant: str = TENANT) -> Proxy:
        server = self.api.secret_data(C, names.server_cert_secret(tenant))
        client_ca = self.api.configmap_data(C, names.client_ca_configmap(tenant))[names.CLIENT_CA_KEY]
        return Proxy(server[names.TLS_CRT], server[names.TLS_KEY], client_ca.encode())

    def apiserver(
        self, namespace: str = APISERVER_NAMESPACE, configmap: str = SERVING_CA, secret: str = CLIENT_CERT
    ) -> ApiServer:
        client = self.api.secret_data(namespace, secret)
        serving_ca = self.api.configmap_data(namespace, configmap)[names.SERVING_CA_KEY]
        return ApiServer(client[names.TLS_CRT], client[names.TLS_KEY], serving_ca.encode())

    def report(self, tenant: str = TENANT) -> report.Report:
        """What the hook reads of the tenant's `<N>-ca-cert`."""
        configmap = self.api.object(kube.Kind.CONFIGMAP, C, names.client_ca_configmap(tenant))
        found = report.from_annotations(configmap["metadata"].get("annotations") or {})
        assert found is not None, "no report"
        return found

    def events(self, tenant: str = TENANT) -> list[dict[str, Any]]:
        """The Events about the tenant's EtcdStorage, as `kubectl describe` finds them (by the involved object)."""
        uid = self.api.etcdstorages[tenant]["metadata"]["uid"]
        return [
            obj
            for (kind, _, _), obj in sorted(self.api.objects.items())
            if kind is kube.Kind.EVENT and obj["involvedObject"]["uid"] == uid
        ]

    def reasons(self, tenant: str = TENANT) -> dict[str, int]:
        """Each Event reason told about the tenant, with its count."""
        counted: dict[str, int] = {}
        for event in self.events(tenant):
            counted[event["reason"]] = counted.get(event["reason"], 0) + event["count"]
        return counted

    def add_tenant(
        self, name: str, namespace: str, *, precreate: bool = True, created: str = "2024-01-01T00:00:00Z", **spec: Any
    ) -> None:
        spec.setdefault("caCertConfigMap", [{"name": SERVING_CA, "namespace": namespace}])
        spec.setdefault("clientCertSecret", [{"name": CLIENT_CERT, "namespace": namespace}])
        obj = etcdstorage(name, **spec)
        obj["metadata"]["creationTimestamp"] = created
        obj["metadata"].pop("uid")  # each its own
        self.api.add_etcdstorage(obj)
        if precreate:
            for destination in spec["caCertConfigMap"]:
                if (kube.Kind.CONFIGMAP, destination["namespace"], destination["name"]) in self.api.objects:
                    continue
                self.api.put(kube.Kind.CONFIGMAP, destination["namespace"], destination["name"], {})
            for destination in spec["clientCertSecret"]:
                if (kube.Kind.SECRET, destination["namespace"], destination["name"]) in self.api.objects:
                    continue
                self.api.put(
                    kube.Kind.SECRET,
                    destination["namespace"],
                    destination["name"],
                    {"type": "kubernetes.io/tls", "data": {names.TLS_CRT: "", names.TLS_KEY: ""}},
                )


def new_world(*, settings: Settings | None = None, core_common_name: str | None = None, **spec: Any) -> World:
    """The controller namespace with the core etcd's CA and client certificate, and one tenant whose API server
    operator pre-created its (empty) ConfigMap and Secret."""
    api = FakeApi()
    core_ca = pki.new_ca("etcd-ca", now=T0 - timedelta(days=1), validity=timedelta(days=3650), algorithm=ECDSA)
    core_client = pki.new_client_cert(
        core_ca, core_common_name, now=T0 - timedelta(days=1), validity=timedelta(days=3000), algorithm=ECDSA,
        organization="etcdstorage",
    )  # fmt: skip
    put_core(api, core_ca, core_client)
    world = World(api, settings or Settings(), core_ca)
    world.add_tenant(TENANT, APISERVER_NAMESPACE, **spec)
    return world


def put_core(api: FakeApi, ca: pki.KeyPair, client: pki.KeyPair) -> None:
    api.put(kube.Kind.CONFIGMAP, C, names.CORE_CA_CONFIGMAP, {"data": {names.CORE_CA_KEY: ca.cert_pem.decode()}})
    api.put(
        kube.Kind.SECRET,
        C,
        names.CORE_CERT_SECRET,
        {
            "type": "kubernetes.io/tls",
            "data": {names.TLS_CRT: b64(client.cert_pem), names.TLS_KEY: b64(client.key_pem)},
        },
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- Judging connections ---------------------------------------------------------------------------------------------

_CLIENT_POLICY: Final = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
)  # client certificates carry no SAN; everything else as the Web PKI profile wants it


def connects(proxy: Proxy, apiserver: ApiServer, at: datetime, *, tenant: str = TENANT) -> str | None:
    """None when `apiserver` and `proxy` would complete mutual TLS at time `at`; else which side refuses and why."""
    host = names.service_hosts(tenant, C, "cluster.local")[2]  # etcd-<N>.<C>.svc, the endpoint in status
    problems = []
    try:
        pki.parse_pair(proxy.server_cert, proxy.server_key)
        pki.parse_pair(apiserver.client_cert, apiserver.client_key)
    except pki.PEMError as error:
        return f"unusable pair: {error}"
    try:
        verification.PolicyBuilder().store(verification.Store(pki.parse_certs(apiserver.serving_ca))).time(
            at
        ).build_server_verifier(x509.DNSName(host)).verify(pki.parse_certs(proxy.server_cert)[0], [])
    except verification.VerificationError as error:
        problems.append(f"the API server refuses the proxy: {error}")
    try:
        verification.PolicyBuilder().store(verification.Store(pki.parse_certs(proxy.client_ca))).time(
            at
        ).extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_CLIENT_POLICY
        ).build_client_verifier().verify(pki.parse_certs(apiserver.client_cert)[0], [])
    except verification.VerificationError as error:
        problems.append(f"the proxy refuses the API server: {error}")
    return "; ".join(problems) or None


# --- Logs ------------------------------------------------------------------------------------------------------------


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """The job's log lines exactly as `python -m certrotation` prints them."""
    stream = io.StringIO()
    handler = job.configure_logging(stream)
    try:
        yield stream
    finally:
        logging.getLogger("certrotation.job").removeHandler(handler)


def lines(stream: io.StringIO, message: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if f'msg="{message}"' in line or f"msg={message} " in line]
