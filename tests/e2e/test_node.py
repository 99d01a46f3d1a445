"""The e2e node (testbed/node.py): a real kubelet, containerd, runc and CNI run a pod of the tenant proxy's image,
built here, and the node leaves the host as it found it, even when the process that started it is killed.

Needs root (CI runs as root); fails, never skips, without it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcdstorage import names
from etcdstorage.settings import Settings
from testbed import certs, etcdrpc, harness, node
from tests.e2e.conftest import _in_ci

pytestmark = [pytest.mark.e2e, pytest.mark.node]

READY_TIMEOUT = 120.0  # seconds for a pod to pass readiness; about 5 s here


@pytest.fixture(scope="session")
def node_binaries(request: pytest.FixtureRequest) -> node.Binaries:
    binaries = node.binaries_path()
    if not binaries.missing():
        return binaries
    if _in_ci():
        pytest.fail(
            f"node binaries missing: {binaries.missing()}. CI must build them before the tests "
            "(testbed/binaries/build-*.sh, caching the directory between runs).",
            pytrace=False,
        )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return node.build_binaries()


def _proxy_binary() -> Path | None:
    value = os.environ.get("ETCDSTORAGE_TENANT_PROXY")
    return Path(value) if value else None


# --- What the host looks like, for "as found" -----------------------------------------------------------------------


def _host_state(directory: Path, binaries: node.Binaries) -> dict[str, Any]:
    """Everything the node may change on the host, as one comparable value."""
    addresses = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return {
        "addresses": sorted(
            f"{link['ifname']} {address['local']}"
            for link in json.loads(addresses)
            for address in link.get("addr_info", [])
        ),
        "links": sorted(link["ifname"] for link in json.loads(addresses)),
        "pod routes": node._pod_routes(),
        "mounts under the node": [point for point in mounts if point.startswith(str(directory))],
        "cgroups": sorted(str(path) for path in node.CGROUP_MOUNT.glob(f"*/{node.CGROUP_ROOT}")),
        "sysctls": {name: (Path("/proc/sys") / name).read_text().strip() for name in node.KUBELET_SYSCTLS},
        "shared directories": {
            str(path): sorted(map(str, path.rglob("*"))) if path.exists() else None
            for path in (node.SHIM_SOCKETS, node.CONTAINER_LOG_LINKS, node.DEVICE_PLUGINS, node.CNI_CACHE)
        },
        "node directory": directory.exists(),
        "processes": _node_processes(binaries),
    }


def _node_processes(binaries: node.Binaries) -> list[str]:
    """Live processes of the node, by command: those in its cgroups (pods, and containerd, its shims and kubelet), and
    any run from its binaries' directories in case one escaped them. Not by name alone: other test runs on this
    machine run tenant proxies of their own. Zombies do not count: a killed shim waits for init to reap it."""
    directories = [str(directory) for directory in dataclasses.astuple(binaries)]
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command, fields = (proc / "stat").read_text().split(" (", 1)[1].rsplit(") ", 1)
            in_cgroups = f"/{node.CGROUP_ROOT}/" in (proc / "cgroup").read_text()
            executable = os.readlink(proc / "exe")
        except OSError:
            continue  # exited meanwhile (or a kernel thread, which has no executable)
        if fields.split()[0] != "Z" and (in_cgroups or executable.startswith(tuple(directories))):
            found.append(command)
    return sorted(found)


# --- A proxy pod --------------------------------------------------------------------------------------------------


def _secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def _proxy_pod(name: str, *, prefix: str, etcd_port: int) -> dict[str, Any]:
    """The tenant proxy as the hook runs it (restricted security context, RuntimeDefault seccomp, the health port's
    probes), its core etcd reached through the node's relay under the name the core etcd's certificate carries."""
    mounts = {
        "server": names.SERVER_CERT_DIR,
        "client-ca": names.CLIENT_CA_DIR,
        "core-ca": names.CORE_CA_DIR,
        "core-client": names.CORE_CLIENT_DIR,
    }
    probe = {"port": names.PROXY_HEALTH_PORT}
    container = {
        "name": "proxy",
        "image": Settings().proxy_image,  # as the hook emits it: containerd resolves it to the image imported
        "imagePullPolicy": "Never",  # there is no registry
        "args": [f"--prefix={prefix}", f"--endpoints=https://etcd:{etcd_port}"],
        "ports": [{"containerPort": names.ETCD_PORT}, {"containerPort": names.PROXY_HEALTH_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": 5},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"name": volume, "mountPath": path, "readOnly": True} for volume, path in mounts.items()],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": False,
            "hostAliases": [{"ip": node.NODE_IP, "hostnames": ["etcd"]}],
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": volume, "secret": {"secretName": f"{name}-{volume}"}} for volume in mounts],
        },
    }


def _apply_proxy_pod(
    plane: harness.ControlPlane, namespace: str, name: str, workdir: Path, etcd_port: int
) -> certs.TenantPKI:
    tenant = certs.issue_tenant(workdir, name)
    upstream = plane.core.pki.proxy_client
    secrets = {
        "server": {names.TLS_CRT: tenant.proxy.cert.read_bytes(), names.TLS_KEY: tenant.proxy.key.read_bytes()},
        "client-ca": {names.CLIENT_CA_KEY: tenant.proxy.ca.read_bytes()},
        "core-ca": {names.CORE_CA_KEY: upstream.ca.read_bytes()},
        "core-client": {names.TLS_CRT: upstream.cert.read_bytes(), names.TLS_KEY: upstream.key.read_bytes()},
    }
    objects = [_secret(f"{name}-{volume}", data) for volume, data in secrets.items()]
    objects.append(_proxy_pod(name, prefix=names.key_prefix(name), etcd_port=etcd_port))
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    plane.kubectl("apply", f"--namespace={namespace}", "-f", "-", input=json.dumps(listing))
    return tenant


def _wait_ready(plane: harness.ControlPlane, namespace: str, name: str, running: node.Node) -> dict[str, Any]:
    result = plane.kubectl(
        "wait",
        f"--namespace={namespace}",
        "--for=condition=Ready",
        f"pod/{name}",
        f"--timeout={READY_TIMEOUT:.0f}s",
        check=False,
        timeout=READY_TIMEOUT + 30,
    )
    pod: dict[str, Any] = json.loads(plane.kubectl("get", f"--namespace={namespace}", f"pod/{name}", "-o=json").stdout)
    assert result.returncode == 0, f"pod {name} not Ready: {json.dumps(pod['status'], indent=1)}\n{running.logs()}"
    return pod


# --- The tests ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def running_node(control_plane: harness.ControlPlane, node_binaries: node.Binaries) -> Iterator[node.Node]:
    with node.running(control_plane, node_binaries, proxy_binary=_proxy_binary()) as started:
        yield started


@pytest.fixture(scope="class")
def core_relay(running_node: node.Node, control_plane: harness.ControlPlane) -> Iterator[int]:
    """The core etcd, which listens on loopback only, at the node IP for pods."""
    with node.relay(control_plane.core.etcd.port) as port:
        yield port


class TestPods:
    def test_a_tenant_proxy_pod_of_the_image_built_here_becomes_ready_and_serves_its_tenant(
        self,
        control_plane: harness.ControlPlane,
        running_node: node.Node,
        core_relay: int,
        namespace: str,
        tmp_path: Path,
    ) -> None:
        tenant = _apply_proxy_pod(control_plane, namespace, "smoke", tmp_path, core_relay)
        pod = _wait_ready(control_plane, namespace, "smoke", running_node)

        assert pod["spec"]["nodeName"] == running_node.name  # scheduled by the real scheduler
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(running_node.pod_subnet)  # CNI
        container = pod["status"]["containerStatuses"][0]
        assert container["imageID"], container  # the image imported from the archive, not pulled
        # The tenant's API server's view: through the pod's own network, the pod's TLS and prefix.
        with etcdrpc.Client(
            f"{pod['status']['podIP']}:{names.ETCD_PORT}", tenant.apiserver, server_name="localhost"
        ) as c:
            c.put(b"/registry/smoke", b"through a real pod")
        stored = control_plane.core.client().get(names.key_prefix("smoke").encode() + b"/registry/smoke")
        assert stored == b"through a real pod"  # under the tenant's prefix, the key verbatim


def test_the_node_leaves_the_host_as_it_found_it(
    control_plane: harness.ControlPlane, node_binaries: node.Binaries, namespace: str, tmp_path: Path
) -> None:
    """A node with a running pod changes the host (address, veth, mounts, cgroups); after it, nothing is left."""
    directory = node.cache_directory() / "node"
    before = _host_state(directory, node_binaries)
    with (
        node.running(control_plane, node_binaries, proxy_binary=_proxy_binary()) as running,
        node.relay(control_plane.core.etcd.port) as port,
    ):
        _apply_proxy_pod(control_plane, namespace, "teardown", tmp_path, port)
        _wait_ready(control_plane, namespace, "teardown", running)
        during = _host_state(directory, node_binaries)
    after = _host_state(directory, node_binaries)

    assert during["pod routes"], "no veth: the test would prove nothing"
    assert during["mounts under the node"]
    assert "tenant-proxy" in during["processes"]
    assert f"lo {node.NODE_IP}" in during["addresses"]
    assert after == before


def test_a_killed_run_is_cleaned_up_by_the_next(node_binaries: node.Binaries, tmp_path: Path) -> None:
    """The process that started the node is SIGKILLed with a pod running: its containers, shims, mounts, veth and
    cgroups outlive it; `python -m testbed.node clean-up` (what the next start does first) removes them all."""
    directory = node.cache_directory() / "node"
    before = _host_state(directory, node_binaries)
    ready = tmp_path / "ready"
    child = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from testbed import harness, node
        from tests.e2e.test_node import _apply_proxy_pod, _wait_ready, _proxy_binary
        work = Path({str(tmp_path)!r})
        with harness.running(work / "plane", harness.kube_apiserver_path()) as plane:
            with node.running(plane, node.binaries_path(), proxy_binary=_proxy_binary()) as running:
                with node.relay(plane.core.etcd.port) as port:
                    plane.kubectl("create", "namespace", "crash")
                    _apply_proxy_pod(plane, "crash", "crash", work / "pki", port)
                    _wait_ready(plane, "crash", "crash", running)
                    Path({str(ready)!r}).write_text("ready")
                    time.sleep(600)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], cwd=harness.REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert process.poll() is None, f"the node's process exited with {process.returncode} before a pod ran"
            assert time.monotonic() < deadline, "no pod ran within 300 s"
            time.sleep(0.5)
        # A crash: the runner dies at once; its children get SIGTERM (parent-death signal), the shims and pods nothing.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        left = _host_state(directory, node_binaries)
        assert left["pod routes"], "the kill left no veth: the test would prove nothing"
        assert left["mounts under the node"]
        assert "tenant-proxy" in left["processes"]

        subprocess.run([sys.executable, "-m", "testbed.node", "clean-up"], cwd=harness.REPO, check=True, timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "testbed.node", "clean-up"], cwd=harness.REPO, check=False, timeout=120)
        _stop_processes_mentioning(tmp_path)  # the child's own etcd and kube-apiserver
    assert _host_state(directory, node_binaries) == before


def _stop_processes_mentioning(directory: Path) -> None:
    """SIGTERM the processes whose command line names `directory`. The parent-death signal that testbed.processes
    asks for does not reach them on this VM, so a killed runner's control plane would stay."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            mentions = str(directory).encode() in cmdline.read_bytes()
        except OSError:
            continue
        if mentions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(cmdline.parent.name), signal.SIGTERM)


def test_without_root_the_node_refuses_with_a_reason_and_changes_nothing(
    control_plane: harness.ControlPlane, node_binaries: node.Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = node.cache_directory() / "node"
    before = _host_state(directory, node_binaries)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    refused = pytest.raises(node.NodeError, match="the node needs root: it adds an address to lo")
    with refused, node.running(control_plane, node_binaries):
        pytest.fail("started without root")
    assert _host_state(directory, node_binaries) == before
