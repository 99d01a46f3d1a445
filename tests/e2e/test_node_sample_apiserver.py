"""The original project's own end-to-end scenario, on the e2e node (testbed/node.py): the Kubernetes sample-apiserver
(k8s.io/sample-apiserver at kube-apiserver's release, testbed/binaries/build-sample-apiserver.sh, in an image built by
testbed/images.py) runs as a Deployment whose etcd is an EtcdStorage's: the tenant proxy pods of the hook's children,
with the certificates the job delivered mounted as manifests/examples/apiserver-rbac.yaml says. Registered as the
APIService v1alpha1.wardle.example.com, it serves Flunders through kubectl, and its keys land under the tenant's
prefix only. Then the job rotates both CAs twice while a client keeps creating, listing and watching Flunders; the
API server's Deployment is a consumer (spec.consumers, examples/consumer-rbac.yaml), so the job rolls it whenever the
certificates it mounts change. Every request of that client is counted.

The node runs no kube-proxy (research/real-node.md): `node.service` relays to the Ready pods as kube-proxy would. The
APIService's Service is an ExternalName naming the node IP, where the relay to the sample-apiserver pods listens; the
proxies' Service name resolves (node.dns) to the node IP, where a relay to the proxy pods listens; the sample-apiserver
reaches the core API server through a relay too (its certificate names `localhost`). Needs root; fails, never skips.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certrotation.rotation import Role, signer_keys
from etcdstorage import names
from testbed import harness, images, node
from tests.e2e.conftest import _in_ci
from tests.e2e.install import EXAMPLES, C, apply, failures_of, get, load, run_job, tenant_from_example
from tests.e2e.test_children import apply_as_metacontroller, call, sync_request
from tests.e2e.test_node import _proxy_binary, node_binaries
from tests.e2e.test_node_children import CORE_ETCD_NAME, Deployed, _available, _hook

__all__ = ["node_binaries"]  # the session fixture of test_node.py, shared

pytestmark = [pytest.mark.e2e, pytest.mark.node]

BUILD_SCRIPT: Final = harness.REPO / "testbed" / "binaries" / "build-sample-apiserver.sh"
BUILD_TIMEOUT: Final = 1800.0  # seconds; a cold build took 6.5 minutes on two loaded cores
NAME: Final = "sample-apiserver"  # its Deployment: the name examples/consumer-rbac.yaml grants
SERVICE_ACCOUNT: Final = "apiserver"  # as the sample's artifacts/example/sa.yaml
PORT: Final = 8443  # a port a non-root process may bind (the sample's default is 443)
GROUP, VERSION, PLURAL = "wardle.example.com", "v1alpha1", "flunders"
APISERVICE: Final = f"{VERSION}.{GROUP}"
ETCD_PREFIX: Final = f"/registry/{GROUP}"  # the sample-apiserver's default --etcd-prefix
REPLICAS: Final = 2  # rolled one at a time (maxSurge 1, maxUnavailable 0): one always serves
SHUTDOWN_DELAY: Final = 5  # seconds a deleted pod serves on before SIGTERM (kube-proxy's lag, here the relay's)
AVAILABLE_TIMEOUT: Final = 300.0  # seconds for the Deployment and the APIService; about 30 s here
# Short certificates so that both CAs rotate in minutes: every certificate is due a minute after it was issued (the
# least validity the CRD allows, renewed 9 minutes early). A staged CA waits 2 minutes in the bundles before it signs:
# kubelet refreshes the proxies' mounted bundle within its sync period (a minute) and the job's roll of the API
# server takes some seconds more; the default (10 minutes) would only make the test slower.
SHORT_VALIDITIES: Final = {
    "signingCertificateValidity": "10m",
    "servingCertificateValidity": "10m",
    "clientCertificateValidity": "10m",
    "renewBefore": "9m",
}
JOB_SETTINGS: Final = {"ETCDSTORAGE_CA_PROPAGATION_DELAY": "2m"}
CA_CYCLES: Final = 2  # full cycles of each CA: staged, promoted, the next one staged and promoted
JOB_INTERVAL: Final = 10.0  # seconds between two job runs, as a CronJob every few seconds would run it
ROTATION_TIMEOUT: Final = 1200.0  # seconds for both cycles of both CAs; about 5 minutes expected
KEEP_FLUNDERS: Final = 5  # the load deletes what it created this many iterations ago
REQUEST_TIMEOUT: Final = 30.0

Body = dict[str, Any]


# --- The binary and the node -------------------------------------------------------------------------------------


def _script(*args: str, timeout: float) -> Path:
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args], stdout=subprocess.PIPE, text=True, check=False, timeout=timeout
    )
    assert result.returncode == 0, f"{BUILD_SCRIPT} {' '.join(args)} failed (its output is above)"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def sample_apiserver_binary(request: pytest.FixtureRequest) -> Path:
    binary = _script("--path", timeout=30)
    if binary.is_file():
        return binary
    if _in_ci():
        pytest.fail(
            f"no sample-apiserver at {binary}. CI must build it before the tests ({BUILD_SCRIPT.name}, caching the "
            "directory between runs); the node tests never skip for want of it.",
            pytrace=False,
        )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return _script(timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="module")
def running_node(
    control_plane: harness.ControlPlane, node_binaries: node.Binaries, sample_apiserver_binary: Path
) -> Iterator[node.Node]:
    with node.running(control_plane, node_binaries, proxy_binary=_proxy_binary()) as started:
        archive = images.sample_apiserver_archive(started.directory / "images" / "sample-apiserver.tar",
                                                  sample_apiserver_binary)  # fmt: skip
        started.import_image(archive)
        yield started


# --- The scenario's objects ---------------------------------------------------------------------------------------


def _rbac(namespace: str) -> list[Body]:
    """The sample's artifacts/example RBAC for its ServiceAccount (sa, auth-delegator, auth-reader, rbac, rbac-bind),
    its ServiceAccount in `namespace`, cluster-wide names made unique per namespace; the ClusterRole also lists
    mutatingadmissionpolicies and their bindings, which its admission plugins watch in this release (without them
    /readyz never passes)."""
    subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}]
    role = f"{namespace}:aggregated-apiserver-clusterrole"

    def binding(kind: str, name: str, role_kind: str, role_name: str, where: str | None = None) -> Body:
        metadata = {"name": name, **({"namespace": where} if where else {})}
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}}  # fmt: skip

    admission = [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingadmissionpolicies",  # not in the example: needed by this release
        "mutatingadmissionpolicybindings",  # likewise
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace}},
        binding("ClusterRoleBinding", f"{namespace}:system:auth-delegator", "ClusterRole", "system:auth-delegator"),
        binding("RoleBinding", f"{namespace}-wardle-auth-reader", "Role", "extension-apiserver-authentication-reader",
                "kube-system"),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role}, "rules": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "watch", "list"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": admission, "verbs": ["get", "watch", "list"]},
            {"apiGroups": ["flowcontrol.apiserver.k8s.io"], "resources": ["prioritylevelconfigurations", "flowschemas"],
             "verbs": ["list", "watch"]},
        ]},
        binding("ClusterRoleBinding", f"{namespace}:sample-apiserver-clusterrolebinding", "ClusterRole", role),
    ]  # fmt: skip


def _kubeconfig(plane: harness.ControlPlane, api_port: int) -> Body:
    """How the pods reach the core API server: the relay at the node IP, the name its certificate carries, the pod's
    own ServiceAccount token (as in-cluster configuration would, were there a kube-proxy for the ClusterIP)."""
    ca = base64.b64encode(plane.ca_file.read_bytes()).decode()
    cluster = {"server": f"https://{node.NODE_IP}:{api_port}", "certificate-authority-data": ca,
               "tls-server-name": "localhost"}  # fmt: skip
    token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "core",
        "clusters": [{"name": "core", "cluster": cluster}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"tokenFile": token}}],
        "contexts": [{"name": "core", "context": {"cluster": "core", "user": SERVICE_ACCOUNT}}],
    }  # fmt: skip


def _deployment(namespace: str, etcd_servers: str) -> Body:
    """The sample's artifacts/example/deployment.yaml with its etcd flags pointed at the EtcdStorage as the example's
    comment says (the job's ConfigMap and Secret mounted), its etcd sidecar gone, two replicas rolled one at a time,
    a readiness probe, and the restricted security context."""
    labels = {"app": NAME}
    ca, client, config, certs = "/etc/etcd/ca", "/etc/etcd/client", "/etc/sample-apiserver", "/var/run/sample-apiserver"
    args = [
        f"--etcd-servers={etcd_servers}",
        f"--etcd-cafile={ca}/{names.SERVING_CA_KEY}",
        f"--etcd-certfile={client}/{names.TLS_CRT}",
        f"--etcd-keyfile={client}/{names.TLS_KEY}",
        "--etcd-compaction-interval=0",  # compaction is global: the core API server compacts
        f"--secure-port={PORT}",
        f"--cert-dir={certs}",  # its self-signed serving certificate (the APIService skips verification)
        *(f"--{flag}={config}/kubeconfig" for flag in ("kubeconfig", "authentication-kubeconfig",
                                                      "authorization-kubeconfig")),
    ]  # fmt: skip
    container = {
        "name": "wardle-server", "image": images.SAMPLE_APISERVER_NAME, "imagePullPolicy": "Never", "args": args,
        "ports": [{"name": "https", "containerPort": PORT}],
        # It has no --shutdown-delay-duration: the pod serves on while the relay (kube-proxy) forgets it.
        "lifecycle": {"preStop": {"sleep": {"seconds": SHUTDOWN_DELAY}}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
                           "periodSeconds": 2, "timeoutSeconds": 5},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "etcd-ca", "mountPath": ca, "readOnly": True},
                         {"name": "etcd-client", "mountPath": client, "readOnly": True},
                         {"name": "kubeconfig", "mountPath": config, "readOnly": True},
                         {"name": "certs", "mountPath": certs}],
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "replicas": REPLICAS, "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "serviceAccountName": SERVICE_ACCOUNT,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "etcd-ca", "configMap": {"name": "etcd-serving-ca"}},
                            {"name": "etcd-client", "secret": {"secretName": "etcd-client-cert"}},
                            {"name": "kubeconfig", "configMap": {"name": f"{NAME}-kubeconfig"}},
                            {"name": "certs", "emptyDir": {}}],
            }},
        },
    }  # fmt: skip


def _registration(namespace: str, relay_port: int) -> list[Body]:
    """artifacts/example/service.yaml and apiservice.yaml: the Service an ExternalName of the node IP (no kube-proxy
    routes a ClusterIP here), its port the relay's; the APIService as the example writes it, on that port."""
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": namespace},
        "spec": {"type": "ExternalName", "externalName": node.NODE_IP,
                 "ports": [{"name": "https", "port": relay_port, "protocol": "TCP"}]},
    }  # fmt: skip
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
        "spec": {"group": GROUP, "version": VERSION, "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "insecureSkipTLSVerify": True,
                 "service": {"name": "api", "namespace": namespace, "port": relay_port}},
    }  # fmt: skip
    return [service, apiservice]


def _consumer_rbac(namespace: str) -> list[Body]:
    documents = load(EXAMPLES / "consumer-rbac.yaml")
    for document in documents:
        document["metadata"]["namespace"] = namespace
    return documents


def _wait_available(plane: harness.ControlPlane, namespace: str, running: node.Node) -> None:
    """The Deployment rolled out (every replica Ready on the latest template) and the APIService Available."""
    timeout = f"--timeout={AVAILABLE_TIMEOUT:.0f}s"
    rollout = plane.kubectl("rollout", "status", f"deployment/{NAME}", f"--namespace={namespace}", timeout,
                            check=False, timeout=AVAILABLE_TIMEOUT + 30)  # fmt: skip
    assert rollout.returncode == 0, f"{rollout.stderr}\n{_pod_logs(running, namespace)}\n{running.logs()}"
    waited = plane.kubectl("wait", "--for=condition=Available", f"apiservice/{APISERVICE}", "--timeout=120s",
                           check=False, timeout=150)  # fmt: skip
    assert waited.returncode == 0, f"{waited.stderr}\n{get(plane, 'apiservice', '', APISERVICE)['status']}"


def _pod_logs(running: node.Node, namespace: str) -> str:
    """The last lines of every sample-apiserver container's log, for a failing test's message."""
    logs = sorted((running.directory / "pod-logs").glob(f"{namespace}_{NAME}-*/*/*.log"))
    return "\n".join(f"--- {path}:\n" + "\n".join(path.read_text().splitlines()[-15:]) for path in logs)


@pytest.fixture(scope="module")
def scenario(
    installed: harness.ControlPlane, running_node: node.Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """One EtcdStorage (the example, short validities, the Deployment a consumer), its proxies as the hook answers
    them, and the sample-apiserver on it, registered and Available, with the relays and names that stand in for
    kube-proxy and cluster DNS. The operator's order: the API server's objects first, then the job, then the hook.
    The tenant's `namespace` is the sample-apiserver's."""
    started = time.monotonic()
    consumer = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "", "name": NAME}
    name, namespace = tenant_from_example(installed, "wardle", {**SHORT_VALIDITIES, "consumers": [consumer]})
    proxies = ",".join(f"{key}={value}" for key, value in sorted(names.selector_labels(name).items()))
    etcd_host = urllib.parse.urlsplit(names.endpoint(name, C)).hostname or ""  # the example's --etcd-servers
    records = {CORE_ETCD_NAME: running_node.ip, etcd_host: running_node.ip}
    with (
        node.relay(installed.core.etcd.port) as core_port,
        node.relay(int(installed.server.rsplit(":", 1)[1])) as api_port,
        node.service(installed, C, proxies, names.ETCD_PORT) as etcd_port,
        node.service(installed, namespace, f"app={NAME}", PORT) as sample_port,
        node.dns(records),
    ):
        rbac = _rbac(namespace)
        try:
            kubeconfig = {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"{NAME}-kubeconfig", "namespace": namespace},
                          "data": {"kubeconfig": yaml.safe_dump(_kubeconfig(installed, api_port))}}  # fmt: skip
            apply(installed, [*rbac, *_consumer_rbac(namespace), kubeconfig,
                              _deployment(namespace, f"https://{etcd_host}:{etcd_port}"),
                              *_registration(namespace, sample_port)])  # fmt: skip
            ran = run_job(installed, tmp_path_factory.mktemp("job"), JOB_SETTINGS)
            assert failures_of(ran.stderr, name) == [], ran.stderr
            parent = get(installed, "etcdstorage", "", name)
            with _hook(f"https://{CORE_ETCD_NAME}:{core_port}", tmp_path_factory.mktemp("hook")) as hook:
                answer = call(hook, "/sync", sync_request(installed, hook, parent, []))
            applied = apply_as_metacontroller(installed, parent, answer["children"])
            tenant = Deployed(name=name, namespace=namespace, parent=parent, children=applied)
            _available(installed, tenant, running_node)
            _wait_available(installed, namespace, running_node)
            print(f"\nthe sample-apiserver on the EtcdStorage: Available in {time.monotonic() - started:.0f} s")
            yield tenant
        finally:
            installed.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")
            installed.kubectl("delete", "deployment", NAME, f"--namespace={namespace}", "--ignore-not-found")
            installed.kubectl("delete", "--filename=-", "--ignore-not-found", input=yaml.safe_dump_all(rbac))
            installed.kubectl("delete", "etcdstorage", name, "--ignore-not-found", "--wait=false")


# --- Reading etcd ---------------------------------------------------------------------------------------------------


def _core_keys(plane: harness.ControlPlane) -> list[bytes]:
    """Every key of the core etcd."""
    with plane.core.client() as core:
        return [kv.key for kv in core.range(b"\0", b"\0").kvs]


def _flunder(name: str) -> Body:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Flunder", "metadata": {"name": name}, "spec": {}}


# --- The tests: in this order ---------------------------------------------------------------------------------------


def test_flunders_are_created_listed_watched_and_deleted_through_kubectl_and_stored_under_the_prefix_only(
    installed: harness.ControlPlane, scenario: Deployed, namespace: str
) -> None:
    apiservice = get(installed, "apiservice", "", APISERVICE)
    assert {c["type"]: c["status"] for c in apiservice["status"]["conditions"]}["Available"] == "True"
    watch = subprocess.Popen(
        [str(installed.kubectl_binary), f"--kubeconfig={installed.kubeconfig}", "get", PLURAL,
         f"--namespace={namespace}", "--watch-only", "--output-watch-events", "--output=json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)  # the watch established before the first write (a watch-only sees no earlier object)
        installed.kubectl("apply", f"--namespace={namespace}", "--filename=-",
                          input=yaml.safe_dump_all([_flunder("first"), _flunder("second")]))  # fmt: skip
        listed = json.loads(installed.kubectl("get", PLURAL, f"--namespace={namespace}", "--output=json").stdout)
        assert sorted(item["metadata"]["name"] for item in listed["items"]) == ["first", "second"]

        # Under the tenant's prefix exactly its two Flunders (at the sample-apiserver's own key); outside it, no key
        # of the sample-apiserver at all.
        prefix = names.key_prefix(scenario.name).encode()
        keys = _core_keys(installed)
        where = prefix + f"{ETCD_PREFIX}/{GROUP}/{PLURAL}/{namespace}/".encode()
        assert sorted(key for key in keys if key.startswith(prefix)) == [where + b"first", where + b"second"]
        assert [key for key in keys if key.startswith(ETCD_PREFIX.encode() + b"/")] == []
        assert [key for key in keys if b"/flunders/" in key and not key.startswith(prefix)] == []

        installed.kubectl("delete", PLURAL, "first", "second", f"--namespace={namespace}")
        assert json.loads(installed.kubectl("get", PLURAL, f"--namespace={namespace}", "-o=json").stdout)["items"] == []
    finally:
        time.sleep(2)
        watch.terminate()
        out, err = watch.communicate(timeout=30)
    events = [json.loads(chunk) for chunk in _json_documents(out)]
    seen = [(event["type"], event["object"]["metadata"]["name"]) for event in events]
    assert sorted(seen) == [("ADDED", "first"), ("ADDED", "second"), ("DELETED", "first"), ("DELETED", "second")], err
    assert [key for key in _core_keys(installed) if key.startswith(prefix)] == []  # deleted in the core etcd too


def _json_documents(text: str) -> Iterator[str]:
    """The JSON objects kubectl's --watch --output=json prints one after the other (indented, not one per line)."""
    decoder = json.JSONDecoder()
    index = 0
    while (index := _skip_space(text, index)) < len(text):
        _, end = decoder.raw_decode(text, index)
        yield text[index:end]
        index = end


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


# --- Rotation under load --------------------------------------------------------------------------------------------


class _FlunderLoad:
    """A client of the Wardle API through the core API server (its aggregator, the relay, a sample-apiserver pod),
    as admin: one thread creates a Flunder, lists them (the new one must be there), deletes the one made
    KEEP_FLUNDERS iterations before, again and again; another watches from the first list on, resuming each ended
    stream from the last resourceVersion. Every request counted, every error kept with its time and answer."""

    def __init__(self, plane: harness.ControlPlane, namespace: str) -> None:
        user = yaml.safe_load(plane.kubeconfig.read_text())["users"][0]["user"]
        tls = ssl.create_default_context(cafile=plane.ca_file)
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
        self._client_args: Body = {"base_url": plane.server, "verify": tls, "trust_env": False,
                                   "timeout": REQUEST_TIMEOUT}  # fmt: skip
        self.path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self.requests = {"create": 0, "list": 0, "delete": 0, "watch": 0}
        self.failures: list[str] = []
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.events = 0
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.streams_ended = 0  # by the server: a pod stopping ends the watches it served
        self.streams_cut: list[str] = []  # ended without the end of the chunked body
        self._started = time.monotonic()
        self._done = threading.Event()
        self._watcher = httpx.Client(**self._client_args)
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]  # fmt: skip

    def __enter__(self) -> _FlunderLoad:
        with httpx.Client(**self._client_args) as client:
            listed = client.get(self.path)
        assert listed.status_code == 200, listed.text
        self._version = listed.json()["metadata"]["resourceVersion"]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._threads[0].join(REQUEST_TIMEOUT * 3)
        time.sleep(2)  # the last writes' events on their way
        self._watcher.close()  # ends the open watch
        self._threads[1].join(REQUEST_TIMEOUT)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def running(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def _failed(self, what: str) -> None:
        self.failures.append(f"{time.monotonic() - self._started:.1f}s {what}")

    def _request(self, client: httpx.Client, kind: str, method: str, path: str, **body: Any) -> Body | None:
        self.requests[kind] += 1
        try:
            response = client.request(method, path, **body)
        except httpx.HTTPError as error:
            self._failed(f"{kind} {path}: {type(error).__name__}: {error}")
            return None
        if response.status_code >= 300:
            self._failed(f"{kind} {path}: {response.status_code} {response.text[:300]}")
            return None
        answer: Body = response.json()
        return answer

    def _write(self) -> None:
        with httpx.Client(**self._client_args) as client:
            index = 0
            while not self._done.is_set():
                name = f"load-{index}"
                if self._request(client, "create", "POST", self.path, json=_flunder(name)) is not None:
                    self.created.append(name)
                    listed = self._request(client, "list", "GET", self.path)
                    if listed is not None and name not in {item["metadata"]["name"] for item in listed["items"]}:
                        self._failed(f"list after creating {name} does not hold it")
                if len(self.created) > KEEP_FLUNDERS and self.created[-KEEP_FLUNDERS - 1] not in self.deleted:
                    old = self.created[-KEEP_FLUNDERS - 1]
                    if self._request(client, "delete", "DELETE", f"{self.path}/{old}") is not None:
                        self.deleted.append(old)
                index += 1

    def _watch(self) -> None:
        while not self._done.is_set():
            self.requests["watch"] += 1
            params = {"watch": "1", "resourceVersion": self._version, "allowWatchBookmarks": "true"}
            try:
                with self._watcher.stream("GET", self.path, params=params, timeout=httpx.Timeout(
                        REQUEST_TIMEOUT, read=None)) as response:  # fmt: skip
                    if response.status_code != 200:
                        self._failed(f"watch from {self._version}: {response.status_code} {response.read()[:300]!r}")
                        time.sleep(0.5)
                        continue
                    for line in response.iter_lines():
                        self._event(json.loads(line))
                self.streams_ended += 1
            except httpx.HTTPError as error:
                if self._done.is_set():
                    return
                self.streams_ended += 1
                self.streams_cut.append(f"{time.monotonic() - self._started:.1f}s {type(error).__name__}: {error}")

    def _event(self, event: Body) -> None:
        if event["type"] == "ERROR":  # e.g. 410 Gone: the resourceVersion is too old to resume from
            self._failed(f"watch from {self._version}: {event['object']}")
            return
        self._version = event["object"]["metadata"]["resourceVersion"]
        if event["type"] == "BOOKMARK":
            return
        self.events += 1
        name = event["object"]["metadata"]["name"]
        {"ADDED": self.added, "DELETED": self.removed}.get(event["type"], set()).add(name)


def _current_cas(plane: harness.ControlPlane, tenant: str) -> dict[Role, str]:
    """The SHA-256 fingerprint of the CA that signs now, per role, from `<N>-signer`."""
    data = get(plane, "secret", C, names.signer_secret(tenant))["data"]
    return {
        role: x509.load_pem_x509_certificate(base64.b64decode(data[signer_keys(role).cert]))
        .fingerprint(hashes.SHA256())
        .hex()
        for role in Role
    }


def _revision(plane: harness.ControlPlane, namespace: str) -> int:
    """The Deployment's revision: one more for each rollout of a changed template."""
    annotations = get(plane, "deployment", namespace, NAME)["metadata"]["annotations"]
    return int(annotations["deployment.kubernetes.io/revision"])


def _pods(plane: harness.ControlPlane, namespace: str) -> list[Body]:
    listed = json.loads(plane.kubectl("get", "pods", f"--namespace={namespace}", f"--selector=app={NAME}",
                                      "--output=json").stdout)  # fmt: skip
    items: list[Body] = listed["items"]
    return items


def test_both_cas_rotate_twice_under_load_and_the_job_rolls_the_sample_apiserver_with_no_failed_request(
    installed: harness.ControlPlane, running_node: node.Node, scenario: Deployed, namespace: str, tmp_path: Path
) -> None:
    tenant = scenario.name
    generations = {role: [fingerprint] for role, fingerprint in _current_cas(installed, tenant).items()}
    first_revision = _revision(installed, scenario.namespace)
    pods_seen = {pod["metadata"]["uid"] for pod in _pods(installed, scenario.namespace)}
    runs, started = 0, time.monotonic()

    with _FlunderLoad(installed, namespace) as load:
        while min(len(seen) for seen in generations.values()) <= CA_CYCLES:
            assert time.monotonic() - started < ROTATION_TIMEOUT, f"CA generations after {runs} runs: {generations}"
            assert load.running
            ran = run_job(installed, tmp_path, JOB_SETTINGS)
            runs += 1
            assert failures_of(ran.stderr, tenant) == [], ran.stderr
            for role, fingerprint in _current_cas(installed, tenant).items():
                if fingerprint != generations[role][-1]:
                    generations[role].append(fingerprint)
            pods_seen |= {pod["metadata"]["uid"] for pod in _pods(installed, scenario.namespace)}
            time.sleep(JOB_INTERVAL)
        # The last roll done, and a few seconds more on the pods it made.
        _wait_available(installed, scenario.namespace, running_node)
        time.sleep(5)
    seconds = time.monotonic() - started
    rolls = _revision(installed, scenario.namespace) - first_revision
    final = _pods(installed, scenario.namespace)
    restarts = sum(status["restartCount"] for pod in final for status in pod["status"]["containerStatuses"])
    pods_seen |= {pod["metadata"]["uid"] for pod in final}

    requests = ", ".join(f"{count} {kind}" for kind, count in load.requests.items())
    print(
        f"\nrotation under load, {seconds:.0f} s: {runs} job runs; CA generations serving "
        f"{len(generations[Role.SERVING])}, client {len(generations[Role.CLIENT])} (the first included); "
        f"{rolls} rolls of the sample-apiserver Deployment ({len(pods_seen)} pods, {restarts} container restarts); "
        f"{load.total} requests ({requests}), {len(load.failures)} failed; {load.events} watch events, "
        f"{load.streams_ended} watch streams ended by the server ({len(load.streams_cut)} cut mid-stream)"
    )
    for line in [*load.failures, *load.streams_cut][:40]:
        print(f"  {line}")
    assert load.failures == []
    assert rolls >= CA_CYCLES  # at least one roll per CA generation; the leaves' renewals roll it more often
    assert restarts == 0  # rolled, never crashed
    # The watch lost nothing across the restarts: every Flunder made is seen added, every one deleted seen deleted.
    assert set(load.created) - load.added == set()
    assert set(load.deleted) - load.removed == set()
    prefix = names.key_prefix(tenant).encode()
    live = {load.created[-1], *set(load.created) - set(load.deleted)}
    stored = {key.rsplit(b"/", 1)[1].decode() for key in _core_keys(installed) if b"/flunders/" in key}
    assert live <= stored
    assert all(key.startswith(prefix) for key in _core_keys(installed) if b"/flunders/" in key)
