"""The hook's children run for real: for an EtcdStorage whose certificates the job issued, the Deployment, Service and
PodDisruptionBudget that `python -m hooks` answers are applied as Metacontroller applies them (tests/e2e/
test_children.py) on the e2e node (testbed/node.py), with the tenant proxy image built here. The controller-manager
rolls them out and garbage-collects them, kubelet runs, probes, restarts and stops the pods; nothing of the pod spec is
changed on the way, so what these tests see is what a cluster does with the hook's answer.

The pods reach the core etcd as the hook's settings name it (ETCDSTORAGE_CORE_ETCD_URLS): `etcd`, a name its
certificate carries, which the node's DNS (`node.dns`) resolves to the node IP, where `node.relay` forwards to the
core etcd on loopback. Needs root; fails, never skips, without it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import grpc
import httpx
import pytest
from kubernetes import client as k8s

from etcdstorage import names
from testbed import certs, etcdrpc, harness, node, processes
from tests.e2e.install import C, failures_of, get, run_job, tenant_from_example
from tests.e2e.test_children import apply_as_metacontroller, call, sync_request, write_status
from tests.e2e.test_node import _proxy_binary, node_binaries

__all__ = ["node_binaries"]  # the session fixture of test_node.py, shared

pytestmark = [pytest.mark.e2e, pytest.mark.node]

CORE_ETCD_NAME: Final = "etcd"  # a name of the core etcd's certificate (testbed.certs.issue_core)
ROLLOUT_TIMEOUT: Final = 120.0  # seconds for the Deployment to be available; about 5 s here
RESTART_TIMEOUT: Final = 180.0  # seconds for kubelet to restart a container (a hung one: probes, then the kill)
HOOK_START_TIMEOUT: Final = 20.0
WATCHES: Final = 100  # the moderate load of the memory test: watches open on one pod
WATCH_STREAMS: Final = 10
PUTS: Final = 2000
VALUE_BYTES: Final = 1024

Body = dict[str, Any]


# --- Fixtures: one node, the core etcd reachable from its pods, the hook, one tenant deployed ---------------------


@pytest.fixture(scope="module")
def running_node(control_plane: harness.ControlPlane, node_binaries: node.Binaries) -> Iterator[node.Node]:
    with node.running(control_plane, node_binaries, proxy_binary=_proxy_binary()) as started:
        yield started


@pytest.fixture(scope="module")
def core_etcd_url(running_node: node.Node, control_plane: harness.ControlPlane) -> Iterator[str]:
    """The core etcd's URL as the proxy pods reach it: its certificate's name, resolved by the node's DNS to the node
    IP, relayed there to the core etcd on loopback."""
    with node.relay(control_plane.core.etcd.port) as port, node.dns({CORE_ETCD_NAME: running_node.ip}):
        yield f"https://{CORE_ETCD_NAME}:{port}"


@pytest.fixture(scope="module")
def two_core_etcd_urls(core_etcd_url: str, control_plane: harness.ControlPlane) -> Iterator[str]:
    """`core_etcd_url` and the core etcd at one more port of the node IP, as the proxies would see a member added."""
    with node.relay(control_plane.core.etcd.port) as port:
        yield f"{core_etcd_url},https://{CORE_ETCD_NAME}:{port}"


@contextlib.contextmanager
def _hook(core_etcd_urls: str, log_dir: Path) -> Iterator[httpx.Client]:
    """`python -m hooks` with the core etcd's URLs as an operator sets them, and otherwise its defaults."""
    port = processes.free_port()
    settings = f"ETCDSTORAGE_CORE_ETCD_URLS={core_etcd_urls}"
    argv = ["env", settings, sys.executable, "-m", "hooks", "--port", str(port), "--log-level", "warning"]
    process = processes.start("hook", argv, log_dir=log_dir, cwd=harness.REPO)
    with processes.running(process), httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        process.wait_until(lambda: processes.accepts_connections(port), what="listening", timeout=HOOK_START_TIMEOUT)
        yield client


@pytest.fixture(scope="module")
def hook(core_etcd_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with _hook(core_etcd_url, tmp_path_factory.mktemp("hook")) as client:
        yield client


@dataclasses.dataclass(frozen=True)
class Deployed:
    """One EtcdStorage with the job's certificates and the hook's children applied."""

    name: str
    namespace: str  # its API server's, where the job put the client certificate and the serving CA
    parent: Body
    children: list[Body]

    @property
    def proxy(self) -> str:
        return names.proxy_name(self.name)

    @property
    def selector(self) -> str:
        return ",".join(f"{key}={value}" for key, value in sorted(names.selector_labels(self.name).items()))


@pytest.fixture(scope="module")
def deployed(
    installed: harness.ControlPlane, hook: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    name, namespace = tenant_from_example(installed, "node")
    try:
        ran = run_job(installed, tmp_path_factory.mktemp("job"))
        assert failures_of(ran.stderr, name) == [], ran.stderr
        parent = get(installed, "etcdstorage", "", name)
        answer = call(hook, "/sync", sync_request(installed, hook, parent, []))
        applied = apply_as_metacontroller(installed, parent, answer["children"])
        yield Deployed(name=name, namespace=namespace, parent=parent, children=applied)
    finally:
        # The garbage collector takes the children and the job's objects (the last test shows it).
        installed.kubectl("delete", "etcdstorage", name, "--ignore-not-found", "--wait=false")


# --- Reading the pods ---------------------------------------------------------------------------------------------


def _pods(plane: harness.ControlPlane, tenant: Deployed) -> list[Body]:
    """The tenant's proxy pods that are not terminating."""
    listed = json.loads(
        plane.kubectl("get", "pods", f"--namespace={C}", f"--selector={tenant.selector}", "-o=json").stdout
    )
    return [pod for pod in listed["items"] if "deletionTimestamp" not in pod["metadata"]]


def _pod(plane: harness.ControlPlane, name: str) -> Body | None:
    found = plane.kubectl("get", "pod", name, f"--namespace={C}", "--ignore-not-found", "-o=json").stdout
    return json.loads(found) if found.strip() else None


def _ready(pod: Body | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions", [])
    return any(condition["type"] == "Ready" and condition["status"] == "True" for condition in conditions)


def _proxy_status(pod: Body) -> Body:
    statuses: list[Body] = pod["status"]["containerStatuses"]
    [status] = [status for status in statuses if status["name"] == "proxy"]
    return status


def _available(plane: harness.ControlPlane, tenant: Deployed, running: node.Node) -> list[Body]:
    """Wait for the Deployment to be rolled out with every replica Ready; its pods."""
    rollout = plane.kubectl(
        "rollout",
        "status",
        f"deployment/{tenant.proxy}",
        f"--namespace={C}",
        f"--timeout={ROLLOUT_TIMEOUT:.0f}s",
        check=False,
        timeout=ROLLOUT_TIMEOUT + 30,
    )
    pods = _pods(plane, tenant)
    assert rollout.returncode == 0, f"{rollout.stderr}\n{json.dumps(pods, indent=1)[:4000]}\n{running.logs()}"
    replicas = tenant.parent["spec"].get("replicas", 3)
    processes.wait_for(
        lambda: len(ready := [pod for pod in _pods(plane, tenant) if _ready(pod)]) == replicas and bool(ready),
        what=f"{replicas} Ready pods of {tenant.proxy}",
        timeout=ROLLOUT_TIMEOUT,
        interval=0.5,
    )
    return _pods(plane, tenant)


def _wait_restarted(plane: harness.ControlPlane, pod: Body, restarts: int, *, timeout: float) -> Body:
    """Wait until the pod's proxy container has run again (restartCount above `restarts`) and the pod is Ready."""

    def again() -> bool:
        current = _pod(plane, pod["metadata"]["name"])
        return current is not None and _proxy_status(current)["restartCount"] > restarts and _ready(current)

    processes.wait_for(again, what=f"pod {pod['metadata']['name']} restarted and Ready", timeout=timeout, interval=0.5)
    restarted = _pod(plane, pod["metadata"]["name"])
    assert restarted is not None
    return restarted


def _events(plane: harness.ControlPlane, pod: Body) -> list[Body]:
    selector = f"involvedObject.name={pod['metadata']['name']},involvedObject.uid={pod['metadata']['uid']}"
    listed = json.loads(
        plane.kubectl("get", "events", f"--namespace={C}", f"--field-selector={selector}", "-o=json").stdout
    )
    items: list[Body] = listed["items"]
    return items


def _log_lines(text: str) -> list[Body]:
    """The proxy's JSON log lines from a CRI log file ("<time> <stream> <F|P> <line>")."""
    lines = []
    for line in text.splitlines():
        _, _, _, message = line.split(" ", 3)
        if message.startswith("{"):
            lines.append(json.loads(message))
    return lines


def _timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def _tenant_files(plane: harness.ControlPlane, tenant: Deployed, directory: Path) -> certs.TLSFiles:
    """The tenant's API server's client certificate and serving CA, as the job delivered them to its namespace."""
    secret = get(plane, "secret", tenant.namespace, "etcd-client-cert")["data"]
    bundle = get(plane, "configmap", tenant.namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / names.SERVING_CA_KEY).write_text(bundle)
    for key in (names.TLS_CRT, names.TLS_KEY):
        path = directory / key
        path.touch(mode=0o600)
        path.write_bytes(base64.b64decode(secret[key]))
    return certs.TLSFiles(directory / names.SERVING_CA_KEY, directory / names.TLS_CRT, directory / names.TLS_KEY)


def _client(plane: harness.ControlPlane, tenant: Deployed, pod: Body, directory: Path) -> etcdrpc.Client:
    """The tenant's API server's view of one pod: its IP, the job's certificates, the Service's name verified."""
    [service_name, *_] = names.service_hosts(tenant.name, C, "cluster.local")
    address = f"{pod['status']['podIP']}:{names.ETCD_PORT}"
    return etcdrpc.Client(address, _tenant_files(plane, tenant, directory), server_name=service_name)


# --- The tests: in this order they take one tenant through its life -------------------------------------------------


def test_the_deployment_becomes_a_replicaset_whose_pods_pass_readiness_and_serve_the_tenant(
    installed: harness.ControlPlane,
    running_node: node.Node,
    hook: httpx.Client,
    deployed: Deployed,
    tmp_path: Path,
) -> None:
    pods = _available(installed, deployed, running_node)

    [replica_set] = json.loads(
        installed.kubectl("get", "replicasets", f"--namespace={C}", f"--selector={deployed.selector}", "-o=json").stdout
    )["items"]
    [owner] = replica_set["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Deployment", deployed.proxy)
    assert replica_set["status"]["readyReplicas"] == len(pods) == 3
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["uid"] == replica_set["metadata"]["uid"]
        assert pod["spec"]["nodeName"] == running_node.name
        assert _proxy_status(pod)["restartCount"] == 0
    # Every pod serves the tenant with the job's certificates; the keys land under the tenant's prefix.
    for index, pod in enumerate(pods):
        with _client(installed, deployed, pod, tmp_path / "tenant") as client:
            client.put(f"/registry/through-pod-{index}".encode(), pod["metadata"]["name"].encode())
    core = installed.core.client()
    for index, pod in enumerate(pods):
        key = names.key_prefix(deployed.name).encode() + f"/registry/through-pod-{index}".encode()
        assert core.get(key) == pod["metadata"]["name"].encode()
    # The hook, fed the live children, sees the Deployment available and the EtcdStorage Ready.
    children_now = [
        get(installed, kind, C, deployed.proxy) for kind in ("deployment", "service", "poddisruptionbudget")
    ]
    answer = call(
        hook, "/sync", sync_request(installed, hook, get(installed, "etcdstorage", "", deployed.name), children_now)
    )
    stored = write_status(installed, deployed.parent, answer["status"])
    conditions = {condition["type"]: condition for condition in stored["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True", conditions


def test_the_disruption_budget_reports_its_status_from_the_controller_manager(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed
) -> None:
    pods = _available(installed, deployed, running_node)

    def counted() -> Body:
        status: Body = get(installed, "poddisruptionbudget", C, deployed.proxy).get("status", {})
        return status

    processes.wait_for(lambda: counted().get("currentHealthy") == len(pods), what="PDB status", timeout=60)
    status = counted()
    assert status["expectedPods"] == len(pods) == 3
    assert status["desiredHealthy"] == 2  # maxUnavailable 1
    assert status["disruptionsAllowed"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["DisruptionAllowed"] == "True"


def test_a_killed_proxy_container_is_restarted_by_kubelet(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed
) -> None:
    [pod, *_] = _available(installed, deployed, running_node)
    status = _proxy_status(pod)
    killed = time.monotonic()

    os.kill(running_node.container_pid(status["containerID"]), signal.SIGKILL)

    restarted = _wait_restarted(installed, pod, status["restartCount"], timeout=RESTART_TIMEOUT)
    print(f"\nkilled proxy: Ready again after {time.monotonic() - killed:.1f} s")
    again = _proxy_status(restarted)
    assert again["restartCount"] == status["restartCount"] + 1
    assert again["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL
    assert again["containerID"] != status["containerID"]


def test_a_hung_proxy_is_restarted_by_its_liveness_probe(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed
) -> None:
    """SIGSTOP: the process holds its sockets and answers nothing, as a deadlocked one would."""
    [pod, *_] = _available(installed, deployed, running_node)
    status = _proxy_status(pod)
    stopped = time.monotonic()

    os.kill(running_node.container_pid(status["containerID"]), signal.SIGSTOP)

    restarted = _wait_restarted(installed, pod, status["restartCount"], timeout=RESTART_TIMEOUT)
    ready_again = time.monotonic() - stopped
    events = _events(installed, pod)
    reasons = [(event["reason"], event["message"]) for event in events]
    assert any(reason == "Unhealthy" and "Liveness probe failed" in message for reason, message in reasons), reasons
    [killing] = [e for e in events if e["reason"] == "Killing" and "failed liveness probe" in e["message"]]
    terminated = _proxy_status(restarted)["lastState"]["terminated"]
    # kubelet's own times (whole seconds): the kill came after the probe's grace period, not the pod's.
    waited = (_timestamp(terminated["finishedAt"]) - _timestamp(killing["lastTimestamp"])).total_seconds()
    grace = pod["spec"]["containers"][0]["livenessProbe"]["terminationGracePeriodSeconds"]
    print(f"\nhung proxy: Ready again after {ready_again:.1f} s; killed {waited:.0f} s after the probe's verdict")
    assert terminated["exitCode"] == 128 + signal.SIGKILL  # a stopped process handles no SIGTERM
    assert waited <= grace + 1 < pod["spec"]["terminationGracePeriodSeconds"]
    assert _proxy_status(restarted)["restartCount"] == status["restartCount"] + 1


def _memory(cgroup: Path) -> dict[str, int]:
    """A cgroup v1 memory controller's figures, in bytes: the peak, the working set as kubelet counts it (usage
    without inactive file pages) and the limit."""
    stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
    usage = int((cgroup / "memory.usage_in_bytes").read_text())
    return {
        "peak": int((cgroup / "memory.max_usage_in_bytes").read_text()),
        "working set": usage - int(stat["total_inactive_file"]),
        "limit": int((cgroup / "memory.limit_in_bytes").read_text()),
    }


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def test_the_proxy_stays_under_its_memory_limit_with_a_hundred_watches_and_puts(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed, tmp_path: Path
) -> None:
    """100 watches on 10 streams, each put seen by one watch of every stream, as a tenant's API server with its
    watch cache on holds them; puts from 4 clients at once."""
    [pod, *_] = _available(installed, deployed, running_node)
    status = _proxy_status(pod)
    cgroup = running_node.container_cgroup(status["containerID"], "memory")
    before = _memory(cgroup)
    value = b"v" * VALUE_BYTES
    ranges = [f"/registry/load/{index}/".encode() for index in range(WATCHES // WATCH_STREAMS)]

    with _client(installed, deployed, pod, tmp_path / "tenant") as client:
        streams = [client.watch() for _ in range(WATCH_STREAMS)]
        for stream in streams:
            for prefix in ranges:
                stream.create(prefix, prefix[:-1] + b"0")  # "/" + 1: every key under the prefix

        def put(worker: int) -> None:
            for index in range(worker, PUTS, 4):
                client.put(ranges[index % len(ranges)] + str(index).encode(), value)

        writers = [threading.Thread(target=put, args=(worker,)) for worker in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        seen = [sum(1 for _ in stream.events(timeout=5)) for stream in streams]
        loaded = _memory(cgroup)
        for stream in streams:
            stream.close()

    print(
        f"\nproxy memory, {WATCHES} watches on {WATCH_STREAMS} streams, {PUTS} puts of {VALUE_BYTES} B: "
        f"peak {_mib(loaded['peak'])}, working set {_mib(before['working set'])} idle, "
        f"{_mib(loaded['working set'])} loaded; limit {_mib(loaded['limit'])}"
    )
    assert seen == [PUTS] * WATCH_STREAMS  # the load was real: every event reached every stream
    assert loaded["limit"] == 128 * 2**20  # the limit the hook writes, as the container runs it
    assert loaded["peak"] < loaded["limit"]
    assert _proxy_status(_pod(installed, pod["metadata"]["name"]) or pod)["restartCount"] == status["restartCount"]


def test_a_pod_deleted_with_open_watches_stops_by_itself_well_inside_its_grace_period(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed, tmp_path: Path
) -> None:
    """Judged by the proxy's own log: "stopping: unready" at SIGTERM, then "stopped: every request finished", both
    within terminationGracePeriodSeconds (a proxy that waited the period out would be killed, and log no stop)."""
    [pod, *_] = _available(installed, deployed, running_node)
    status = _proxy_status(pod)
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    ended: list[grpc.StatusCode] = []

    with (
        running_node.container_log(pod, "proxy", status["restartCount"]).open() as log,  # readable once deleted
        _client(installed, deployed, pod, tmp_path / "tenant") as client,
    ):
        streams = [client.watch() for _ in range(WATCH_STREAMS)]
        for stream in streams:
            stream.create(b"/registry/", b"/registry0")
        installed.kubectl("delete", "pod", pod["metadata"]["name"], f"--namespace={C}", "--wait=false")
        for stream in streams:
            try:
                while True:
                    stream.receive(timeout=grace + 10)
            except grpc.RpcError as error:
                ended.append(error.code())
        processes.wait_for(
            lambda: _pod(installed, pod["metadata"]["name"]) is None, what="pod deleted", timeout=grace + 30
        )
        lines = _log_lines(log.read())

    [stopping] = [line for line in lines if line["msg"] == "stopping: unready"]
    [stopped] = [line for line in lines if line["msg"].startswith("stopped")]
    seconds = (_timestamp(stopped["time"]) - _timestamp(stopping["time"])).total_seconds()
    print(
        f"\npod deleted with {WATCH_STREAMS} watch streams open: "
        f"stopped {seconds:.1f} s after SIGTERM (grace {grace} s)"
    )
    assert stopped["msg"] == "stopped: every request finished"
    assert seconds < grace
    assert ended == [grpc.StatusCode.UNAVAILABLE] * WATCH_STREAMS  # a status clients retry on another pod


class _Load:
    """A tenant's API server spread over the Service as kube-proxy would spread it: every request goes to a Ready
    endpoint of the Service's EndpointSlices (read again every 0.2 s), one connection per pod, a put and a get of
    the key just written; each RPC counted, each error kept. The node runs no kube-proxy (research/real-node.md)."""

    def __init__(self, plane: harness.ControlPlane, tenant: Deployed, files: certs.TLSFiles) -> None:
        self.plane, self.tenant, self.files = plane, tenant, files
        self.requests = 0
        self.failures: list[str] = []
        self.addresses: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(30)

    def _endpoints(self, api: k8s.DiscoveryV1Api) -> list[str]:
        selector = f"kubernetes.io/service-name={self.tenant.proxy}"
        slices = api.list_namespaced_endpoint_slice(C, label_selector=selector).items
        ready = [e for s in slices for e in s.endpoints or [] if e.conditions and e.conditions.ready]
        return sorted(address for endpoint in ready for address in endpoint.addresses)

    def _run(self) -> None:
        [server_name, *_] = names.service_hosts(self.tenant.name, C, "cluster.local")
        clients: dict[str, etcdrpc.Client] = {}
        with self.plane.api_client() as api_client:
            api = k8s.DiscoveryV1Api(api_client)
            endpoints, read, index = self._endpoints(api), time.monotonic(), 0
            while not self._done.is_set():
                if time.monotonic() - read > 0.2:
                    endpoints, read = self._endpoints(api), time.monotonic()
                if not endpoints:
                    self.failures.append("the Service has no Ready endpoint")
                    time.sleep(0.1)
                    continue
                address = endpoints[index % len(endpoints)]
                if address not in clients:
                    clients[address] = etcdrpc.Client(
                        f"{address}:{names.ETCD_PORT}", self.files, server_name=server_name
                    )
                key, value = f"/registry/roll/{index}".encode(), str(index).encode()
                try:
                    self.requests += 1
                    clients[address].put(key, value)
                    self.requests += 1
                    if (got := clients[address].get(key)) != value:
                        self.failures.append(f"{address}: read {got!r} back for {value!r}")
                except grpc.RpcError as error:
                    self.failures.append(f"{address}: {error.code()}: {error.details()}")
                self.addresses.add(address)
                index += 1
        for client in clients.values():
            client.close()


def test_a_changed_setting_rolls_the_deployment_with_no_failed_request(
    installed: harness.ControlPlane,
    running_node: node.Node,
    deployed: Deployed,
    two_core_etcd_urls: str,
    tmp_path: Path,
) -> None:
    """The operator adds a core etcd URL: the hook's next answer changes the pod template, the Deployment rolls one
    pod at a time (maxSurge 1, maxUnavailable 0), each old pod goes unready and serves on for its shutdown delay."""
    old = {pod["status"]["podIP"] for pod in _available(installed, deployed, running_node)}
    urls = two_core_etcd_urls

    with (
        _hook(urls, tmp_path / "hook") as changed,
        _Load(installed, deployed, _tenant_files(installed, deployed, tmp_path / "tenant")) as load,
    ):
        processes.wait_for(lambda: load.requests >= 20, what="the load running", timeout=30)
        live_children = [get(installed, kind, C, deployed.proxy) for kind in ("deployment", "service", "pdb")]
        parent = get(installed, "etcdstorage", "", deployed.name)
        answer = call(changed, "/sync", sync_request(installed, changed, parent, live_children))
        started = time.monotonic()
        apply_as_metacontroller(installed, parent, answer["children"])

        def rolled() -> bool:
            listed = installed.kubectl("get", "pods", f"--namespace={C}", f"--selector={deployed.selector}", "-o=json")
            pods = json.loads(listed.stdout)["items"]
            return len(pods) == 3 and all(_ready(pod) and pod["status"]["podIP"] not in old for pod in pods)

        processes.wait_for(rolled, what="every pod replaced and Ready, no old one left", timeout=180, interval=0.5)
        seconds = time.monotonic() - started
        time.sleep(2)  # and on, on the new pods only
    new = _available(installed, deployed, running_node)

    print(f"\nroll of 3 pods under load: {seconds:.1f} s, {load.requests} requests, {len(load.failures)} failed")
    assert load.failures == []
    assert load.addresses & old  # the load met both generations of pods
    assert load.addresses & {pod["status"]["podIP"] for pod in new}
    for pod in new:
        assert f"--endpoints={urls}" in pod["spec"]["containers"][0]["args"]


def test_deleting_the_etcdstorage_garbage_collects_the_jobs_objects_and_the_children(
    installed: harness.ControlPlane, running_node: node.Node, deployed: Deployed
) -> None:
    _available(installed, deployed, running_node)
    uid = deployed.parent["metadata"]["uid"]
    owned = [
        ("configmap", names.client_ca_configmap(deployed.name)),
        ("secret", names.signer_secret(deployed.name)),
        ("secret", names.server_cert_secret(deployed.name)),
        ("deployment", deployed.proxy),
        ("service", deployed.proxy),
        ("poddisruptionbudget", deployed.proxy),
    ]
    for kind, name in owned:
        references = get(installed, kind, C, name)["metadata"]["ownerReferences"]
        assert [reference["uid"] for reference in references] == [uid], (kind, name)
    deleted = time.monotonic()

    installed.kubectl("delete", "etcdstorage", deployed.name)

    def left() -> list[str]:
        selection = [f"{kind}/{name}" for kind, name in owned]
        found = installed.kubectl("get", *selection, f"--namespace={C}", "--ignore-not-found", "-o=name").stdout
        pods = installed.kubectl(
            "get", "replicasets,pods", f"--namespace={C}", f"--selector={deployed.selector}", "-o=name"
        ).stdout
        return (found + pods).split()

    processes.wait_for(lambda: not left(), what="the EtcdStorage's objects collected", timeout=120, interval=0.5)
    print(f"\nEtcdStorage deleted: its objects, ReplicaSet and pods collected in {time.monotonic() - deleted:.1f} s")
    # What the operator made and the job only filled stays: the API server's Secret and ConfigMap.
    assert get(installed, "secret", deployed.namespace, "etcd-client-cert")["data"][names.TLS_CRT]
    assert get(installed, "configmap", deployed.namespace, "etcd-serving-ca")["data"][names.SERVING_CA_KEY]
