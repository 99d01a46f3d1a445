"""The proof that an EtcdStorage is enough storage for a real API server: a second kube-apiserver (the tenant), with
its watch cache on, runs on the proxy pod's data path (the tenant proxy) in front of the control plane's etcd 3.6
(the core), with exactly what the operator's manifests and the cert-rotation job give it, and works; its keys stay
under its prefix; the core API server's data is untouched; the proxy refuses none of its RPCs and answers its watch
progress requests, so consistent lists are served from its cache; the test records which RPCs it uses.

The tenant reaches the proxy by the Service name in the EtcdStorage's endpoint, resolved to loopback for that process
alone. The tests of this module share one tenant server."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
from kubernetes import watch
from kubernetes.client import CoreV1Api

from etcdstorage import names
from testbed import etcd, harness, proxy
from testbed.certs import TLSFiles
from testbed.proxy import TenantProxy, start_tenant_proxy
from tests.e2e.install import C, failures_of, get, run_job, tenant_from_example

pytestmark = pytest.mark.e2e

WATCH_TIMEOUT: Final = 10  # seconds
DISCOVERY_TIMEOUT: Final = 30.0  # seconds
CONSISTENT_LISTS: Final = 5
REQUESTS_METRIC: Final = re.compile(r'^etcdstorage_proxy_requests_total\{code="([^"]+)",rpc="([^"]+)"\} (\S+)$', re.M)


@dataclasses.dataclass(frozen=True)
class TenantServer:
    """A tenant API server and the data path it runs on."""

    name: str  # of the EtcdStorage
    prefix: str  # its key prefix in the core etcd
    endpoint: str  # --etcd-servers: the EtcdStorage's endpoint, on the proxy's port
    proxy: TenantProxy
    apiserver: harness.ApiServer


def write_files(directory: Path, ca: str, cert: str, key: str) -> TLSFiles:
    """Files as a pod mounts them from a ConfigMap (`ca`, PEM) and a Secret (`cert`, `key`, base64 as served)."""
    directory.mkdir(parents=True)
    files = TLSFiles(directory / "ca.crt", directory / names.TLS_CRT, directory / names.TLS_KEY)
    files.ca.write_text(ca)
    files.cert.write_bytes(base64.b64decode(cert))
    files.key.touch(mode=0o600)
    files.key.write_bytes(base64.b64decode(key))
    return files


@pytest.fixture(scope="module")
def tenant(
    installed: harness.ControlPlane, kube_apiserver_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TenantServer]:
    """An EtcdStorage set up as the README says, its certificates from the job, its proxy pod's tenant proxy on
    loopback, and a kube-apiserver using what its operator mounts; everything stopped afterwards."""
    workdir = tmp_path_factory.mktemp("tenant")
    name, namespace = tenant_from_example(installed, "tenant")
    ran = run_job(installed, workdir)
    assert failures_of(ran.stderr, name) == [], ran.stderr

    # The proxy pod's files, from the objects the job wrote in the controller namespace.
    server_cert = get(installed, "secret", C, names.server_cert_secret(name))["data"]
    client_ca = get(installed, "configmap", C, names.client_ca_configmap(name))["data"][names.CLIENT_CA_KEY]
    pod = write_files(workdir / "pod", client_ca, server_cert[names.TLS_CRT], server_cert[names.TLS_KEY])
    # The API server's files, from the destinations its operator pre-created (manifests/examples/apiserver-rbac.yaml).
    serving_ca = get(installed, "configmap", namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY]
    client = get(installed, "secret", namespace, "etcd-client-cert")["data"]
    mounted = write_files(workdir / "apiserver-etcd", serving_ca, client[names.TLS_CRT], client[names.TLS_KEY])

    prefix = names.key_prefix(name)
    with contextlib.ExitStack() as started:
        pod_proxy = start_tenant_proxy(
            workdir / "proxy",
            installed.core.etcd,
            prefix=prefix,
            serving=pod,
            upstream=installed.core.pki.proxy_client,
            name=f"{name}-proxy",
        )
        started.callback(pod_proxy.stop)
        host = urlsplit(names.endpoint(name, C)).hostname
        assert host is not None
        endpoint = f"https://{host}:{pod_proxy.port}"
        apiserver = started.enter_context(
            harness.api_server(
                workdir / "apiserver",
                kube_apiserver_binary,
                etcd_servers=endpoint,
                etcd_tls=mounted,
                hosts={host: "127.0.0.1"},
                extra_args=["--etcd-compaction-interval=0"],  # required of tenants: docs/security.md
            )
        )
        yield TenantServer(name, prefix, endpoint, pod_proxy, apiserver)


@dataclasses.dataclass(frozen=True)
class Workload:
    """What the tenant server was asked to do, and what it answered."""

    marker: str  # names everything created: the namespace, the CRD's group
    crd: str
    configmaps: list[str]  # listed after the creations and a deletion
    watched: tuple[str, str]  # the first event of a watch: type and object name
    widget: dict[str, Any]  # a custom object, as read back


def widget_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}},
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def workload(installed: harness.ControlPlane, tenant: TenantServer) -> Workload:
    """An aggregated API server's day, done in the tenant server: a namespace, ConfigMaps created, updated, deleted
    and watched, an Event (stored under a lease), a CRD and one of its objects."""
    marker = f"tenant-{secrets.token_hex(4)}"
    kubeconfig = tenant.apiserver.kubeconfig

    def kubectl(*args: str, input: str | None = None) -> str:  # noqa: A002 (kubectl's own name for it)
        return installed.kubectl(*args, input=input, kubeconfig=kubeconfig).stdout

    kubectl("create", "namespace", marker)
    for configmap in ("kept", "updated", "deleted"):
        kubectl("create", "configmap", configmap, f"--namespace={marker}", f"--from-literal=name={configmap}")
    kubectl("label", "configmap", "updated", "changed=yes", f"--namespace={marker}")
    kubectl("delete", "configmap", "deleted", f"--namespace={marker}")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e2e", "namespace": marker},
        "involvedObject": {"kind": "ConfigMap", "name": "kept", "namespace": marker},
        "reason": "Tested",
        "message": "an event, which the API server stores with a TTL",
        "type": "Normal",
    }
    kubectl("create", "--filename=-", input=json.dumps(event))

    with installed.api_client(kubeconfig) as client:
        core = CoreV1Api(client)
        listed = core.list_namespaced_config_map(marker)
        assert listed.metadata is not None
        kubectl("create", "configmap", "watched", f"--namespace={marker}")
        # From the list's resourceVersion: the creation arrives through the watch cache, fed by an etcd watch.
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            core.list_namespaced_config_map,
            marker,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=WATCH_TIMEOUT,
        )
        try:
            first = next(stream)
        finally:
            stream.close()  # ends the watch request
        watched = (str(first["type"]), str(first["object"].metadata.name))
    configmaps = json.loads(kubectl("get", "configmaps", f"--namespace={marker}", "--output=json"))["items"]

    group = f"{marker}.example.com"
    crd = widget_crd(group)
    kubectl("create", "--filename=-", input=json.dumps(crd))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{group}")
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": marker},
        "spec": {"size": 3},
    }
    # The new resource reaches kubectl's discovery shortly after the CRD is Established.
    deadline = time.monotonic() + DISCOVERY_TIMEOUT
    while True:
        created = installed.kubectl(
            "create", "--filename=-", input=json.dumps(widget), kubeconfig=kubeconfig, check=False
        )
        if created.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert created.returncode == 0, created.stderr
    read = json.loads(kubectl("get", f"widgets.{group}", "w", f"--namespace={marker}", "--output=json"))
    return Workload(
        marker=marker,
        crd=crd["metadata"]["name"],
        configmaps=sorted(item["metadata"]["name"] for item in configmaps),
        watched=watched,
        widget=read,
    )


def test_the_tenant_api_server_is_ready_with_its_storage_behind_the_proxy(
    installed: harness.ControlPlane, tenant: TenantServer
) -> None:
    checks = installed.kubectl("get", "--raw", "/readyz?verbose", kubeconfig=tenant.apiserver.kubeconfig).stdout
    assert "[+]etcd ok" in checks
    assert "readyz check passed" in checks
    assert f"--etcd-servers={tenant.endpoint}" in tenant.apiserver.process.argv
    assert tenant.endpoint.startswith(f"https://{names.proxy_name(tenant.name)}.{C}.svc:")


def test_objects_are_created_updated_deleted_listed_and_watched_in_the_tenant_server(workload: Workload) -> None:
    assert workload.configmaps == ["kept", "updated", "watched"]  # no controller-manager adds kube-root-ca.crt
    assert workload.watched == ("ADDED", "watched")
    assert workload.widget["spec"] == {"size": 3}


def core_keys(plane: harness.ControlPlane) -> list[str]:
    """Every key of the core etcd, read directly with the core API server's own client certificate."""
    listed = etcd.etcdctl(plane.core.etcd.address, plane.core.pki.admin, "get", "", "--from-key", "--keys-only")
    assert listed.returncode == 0, listed.stderr
    return [line for line in listed.stdout.splitlines() if line]


def test_the_tenants_keys_are_all_under_its_prefix_in_the_core_etcd(
    installed: harness.ControlPlane, tenant: TenantServer, workload: Workload
) -> None:
    keys = core_keys(installed)
    tenant_keys = [key for key in keys if key.startswith(tenant.prefix)]
    registry = f"{tenant.prefix}{harness.ETCD_PREFIX}/"  # the tenant's own --etcd-prefix, inside its prefix

    assert [key for key in keys if workload.marker in key and not key.startswith(tenant.prefix)] == []
    assert f"{registry}namespaces/{workload.marker}" in tenant_keys
    assert f"{registry}configmaps/{workload.marker}/kept" in tenant_keys
    assert f"{registry}apiextensions.k8s.io/customresourcedefinitions/{workload.crd}" in tenant_keys
    assert f"{registry}namespaces/kube-system" in tenant_keys  # its own bootstrap, not the core's
    assert [key for key in tenant_keys if not key.startswith(registry)] == []


def test_the_core_api_server_sees_nothing_of_the_tenant_and_the_tenant_nothing_of_the_core(
    installed: harness.ControlPlane, tenant: TenantServer, workload: Workload
) -> None:
    for kind, name in (("namespace", workload.marker), ("crd", workload.crd)):
        found = installed.kubectl("get", kind, name, check=False)
        assert found.returncode != 0
        assert "NotFound" in found.stderr

    as_tenant = installed.kubectl("get", "namespace", C, kubeconfig=tenant.apiserver.kubeconfig, check=False)
    assert as_tenant.returncode != 0
    assert "NotFound" in as_tenant.stderr
    assert installed.kubectl("get", "etcdstorage", tenant.name, "--output=name").stdout.strip()


def rpc_calls(tenant: TenantServer) -> dict[str, float]:
    """Calls by etcd RPC and gRPC code ("<rpc> <code>") as the proxy's metrics count them."""
    return {f"{rpc} {code}": float(count) for code, rpc, count in REQUESTS_METRIC.findall(tenant.proxy.metrics())}


def test_the_proxy_refused_nothing_and_every_rpc_the_tenant_used_is_allowlisted(
    tenant: TenantServer, workload: Workload, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = rpc_calls(tenant)
    refusals = [line for line in tenant.proxy.process.log().splitlines() if '"request refused"' in line]
    with capsys.disabled():
        counted = ", ".join(f"{call} ({count:.0f})" for call, count in sorted(calls.items()))
        print(f"\netcd RPCs the tenant kube-apiserver used through the proxy (calls by code): {counted}")
    used = {call.split()[0] for call in calls}
    assert refusals == []
    assert used <= set(proxy.allowlist())
    # What kube-apiserver does: reads, compare-and-swap writes, watches, and the version check of Status at least.
    assert {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn", "/etcdserverpb.Watch/Watch"} <= used
    assert tenant.proxy.metric("etcdstorage_proxy_panics_total") == 0


def consistent_list_seconds(plane: harness.ControlPlane, kubeconfig: Path | None) -> float:
    """The best of a few consistent lists (no resourceVersion: served from the watch cache once etcd's progress
    notification proves it current, else from etcd after a 3 s wait) of every ConfigMap."""
    best = float("inf")
    for _ in range(CONSISTENT_LISTS):
        started = time.monotonic()
        plane.kubectl("get", "configmaps", "--all-namespaces", "--output=name", kubeconfig=kubeconfig)
        best = min(best, time.monotonic() - started)
    return best


def served_from_cache(plane: harness.ControlPlane, kubeconfig: Path) -> dict[str, float]:
    """kube-apiserver's count of consistent reads from its watch cache, by whether it fell back to etcd."""
    metrics = plane.kubectl("get", "--raw", "/metrics", kubeconfig=kubeconfig).stdout
    pattern = re.compile(r"^apiserver_watch_cache_consistent_read_total\{([^}]*)\} (\S+)$", re.M)
    counts: dict[str, float] = {}
    for labels, value in pattern.findall(metrics):
        if 'resource="configmaps"' in labels:
            fallback = re.search(r'fallback="(\w+)"', labels)
            key = f"fallback={fallback.group(1) if fallback else '?'}"
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def test_consistent_lists_come_from_the_tenants_watch_cache_as_fast_as_direct(
    installed: harness.ControlPlane, tenant: TenantServer, workload: Workload, capsys: pytest.CaptureFixture[str]
) -> None:
    """kube-apiserver asks its etcd for watch progress to serve a consistent list from its cache; grpc-proxy never
    answered, so each such list waited 3 s and went to etcd, unless the tenant turned its watch cache off."""
    before = served_from_cache(installed, tenant.apiserver.kubeconfig)
    through_proxy = consistent_list_seconds(installed, tenant.apiserver.kubeconfig)
    direct = consistent_list_seconds(installed, None)  # the core API server on the core etcd
    after = served_from_cache(installed, tenant.apiserver.kubeconfig)
    with capsys.disabled():
        print(
            f"\nconsistent list of every ConfigMap, best of {CONSISTENT_LISTS}: through the tenant proxy "
            f"{through_proxy * 1000:.0f} ms, the core API server direct {direct * 1000:.0f} ms; "
            f"tenant's consistent reads from its watch cache: {before} -> {after}"
        )
    log = tenant.apiserver.process.log()
    assert "RequestWatchProgress feature is not supported" not in log
    assert "--watch-cache=false" not in tenant.apiserver.process.argv
    assert after.get("fallback=false", 0) - before.get("fallback=false", 0) >= CONSISTENT_LISTS
    assert after.get("fallback=true", 0) == before.get("fallback=true", 0)  # none waited and went to etcd


def test_the_core_etcd_is_recent_enough_for_the_tenant_to_ask_for_watch_progress(
    installed: harness.ControlPlane,
) -> None:
    """kube-apiserver asks for progress only from an etcd reporting at least 3.4.31 or 3.5.13 (the core is 3.6)."""
    status = etcd.etcdctl(installed.core.etcd.address, installed.core.pki.admin, "endpoint", "status", "-w", "json")
    assert status.returncode == 0, status.stderr
    [endpoint] = json.loads(status.stdout)
    assert endpoint["Status"]["version"].startswith(f"{installed.core.etcd.version}.")
