"""A real Kubernetes node on this machine for the e2e tests: containerd, runc and CNI (ptp, host-local) under a kubelet,
with kube-controller-manager and kube-scheduler, all against a `testbed.harness` control plane. Needs root.

Every binary is built from Go modules by testbed/binaries/build-*.sh; the pause and tenant proxy images come from
`testbed.images`. What the node needs from this VM (research/real-node.md) is configured here: cgroup v1 with
cgroupfs, a node IP on `lo`, no iptables (ptp routes, no masquerade, no kube-proxy), no CAP_SYS_RESOURCE.

The node changes the host, and other test runs share it, so it owns exactly what it creates and nothing else: one
address on `lo`, one cgroup subtree per v1 hierarchy, the mounts and veths of its pods (all under its directory and
pod subnet), six sysctls the kubelet sets, and the shared directories it had to create. Each change is written to a
state file before it is made; teardown undoes them from that file, and so does the next start after a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import ipaddress
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes import client as k8s

from testbed import harness, images, processes

BINARIES: Final = Path(__file__).resolve().parent / "binaries"
NODE_NAME: Final = "etcdstorage-e2e-node"
# kubelet refuses a loopback node IP and this kernel has no `dummy` links: a private /32 on `lo` does it.
NODE_IP: Final = "10.213.255.1"
POD_SUBNET: Final = "10.213.0.0/24"
CNI_NETWORK: Final = "etcdstorage-e2e"
CGROUP_MOUNT: Final = Path("/sys/fs/cgroup")
# kubelet's cgroupRoot must exist beforehand in every v1 hierarchy, or it fails with "has some missing paths".
CGROUP_HIERARCHIES: Final = ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd")
CGROUP_ROOT: Final = "etcdstorage-e2e-node"
# Hybrid mode: kubelet (cgroupfs) also makes its cgroups in the v2 hierarchy mounted there.
CGROUP_UNIFIED: Final = "unified"
# containerd, its shims and kubelet run in this child of the root (in the pids hierarchy), the pods in kubelet's
# kubepods beside it: killing every process of the subtree stops everything the node ever ran, even after a crash.
PROCESS_CGROUP: Final = "node-processes"
# What kubelet sets at start (pkg/kubelet/cm, setupKernelTunables); restored at teardown.
KUBELET_SYSCTLS: Final = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Directories of the host that containerd (its shims' sockets) and kubelet (container log links, device plugin
# sockets) use whatever their configuration says.
SHIM_SOCKETS: Final = Path("/run/containerd")
CONTAINER_LOG_LINKS: Final = Path("/var/log/containers")
DEVICE_PLUGINS: Final = Path("/var/lib/kubelet")
CNI_CACHE: Final = Path("/var/lib/cni")  # libcni's results of each ADD, which containerd cannot move
STATE_FILE: Final = "host-changes.json"
READY_TIMEOUT: Final = 180.0  # seconds; the node is Ready in about 6 s on two cores
LOCK_NAME: Final = "\0etcdstorage-e2e-node"  # an abstract socket: see _exclusive
LOCK_TIMEOUT: Final = 900.0  # seconds another session's node may keep this machine's node slot
STOP_GRACE: Final = 10.0


class NodeError(RuntimeError):
    """The node could not be built, started or torn down; the message says why (with process logs)."""


# --- Binaries -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Binaries:
    """The cache directories of the node's binaries, one per build script."""

    kubernetes: Path  # kubelet, kube-controller-manager, kube-scheduler, kube-proxy
    containerd: Path  # containerd, ctr, containerd-shim-runc-v2
    runc: Path  # runc
    cni_plugins: Path  # bridge, loopback, ptp, host-local, portmap

    def missing(self) -> list[Path]:
        return [directory for directory in dataclasses.astuple(self) if not Path(directory).is_dir()]


_SCRIPTS: Final = {
    "kubernetes": "build-kubernetes-node.sh",
    "containerd": "build-containerd.sh",
    "runc": "build-runc.sh",
    "cni_plugins": "build-cni-plugins.sh",
}


def _script(field: str, *args: str, timeout: float) -> Path:
    script = BINARIES / _SCRIPTS[field]
    capture = {"capture_output": True} if args else {"stdout": subprocess.PIPE}  # a build shows its progress
    try:
        result = subprocess.run(["bash", str(script), *args], text=True, check=False, timeout=timeout, **capture)
    except subprocess.TimeoutExpired:
        raise NodeError(f"{script} did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        raise NodeError(f"{script} {' '.join(args)} failed: {(result.stderr or '(its output is above)').strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def binaries_path() -> Binaries:
    """Where the build scripts put (or would put) each binary directory; builds nothing."""
    return Binaries(**{field: _script(field, "--path", timeout=30) for field in _SCRIPTS})


def build_binaries(timeout: float = harness.BUILD_TIMEOUT) -> Binaries:
    """Build whatever is not cached (one script after the other); progress goes to this process's stderr."""
    return Binaries(**{field: _script(field, timeout=timeout) for field in _SCRIPTS})


def cache_directory() -> Path:
    """The e2e binary cache, where the node keeps its state directory and lock by default."""
    return harness.kube_apiserver_path().parent


# --- Host changes: recorded before they are made, undone from the record ------------------------------------------


@dataclasses.dataclass
class HostChanges:
    """What the node did to the host outside its directory, as written to the state file."""

    address: str | None = None  # "<ip>/32" on lo
    cgroups: list[str] = dataclasses.field(default_factory=list)  # directories under CGROUP_MOUNT, parents first
    sysctls: dict[str, str] = dataclasses.field(default_factory=dict)  # name under /proc/sys -> value before
    created: list[str] = dataclasses.field(default_factory=list)  # shared directories that did not exist before


class Ledger:
    """The state file of one node directory: every host change is saved here before it is made."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.changes = self._load()

    def _load(self) -> HostChanges:
        try:
            return HostChanges(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return HostChanges()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f"{STATE_FILE}.partial")
        partial.write_text(json.dumps(dataclasses.asdict(self.changes), indent=2, sort_keys=True))
        partial.replace(self.path)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}")
    return result


def _add_address(ledger: Ledger) -> None:
    address = f"{NODE_IP}/32"
    in_use = _run("ip", "-o", "addr", "show", "to", address).stdout.strip()
    if in_use:
        raise NodeError(f"{NODE_IP} is already an address of this host ({in_use}): another node is running?")
    ledger.changes.address = address
    ledger.save()
    _run("ip", "addr", "add", address, "dev", "lo")


def _add_cgroups(ledger: Ledger) -> None:
    """The kubelet's cgroupRoot in every v1 hierarchy (cpuset with its parent's cpus and mems, or no task may join),
    and the cgroup of the node's own processes."""
    for hierarchy in CGROUP_HIERARCHIES:
        for relative in (CGROUP_ROOT, f"{CGROUP_ROOT}/{PROCESS_CGROUP}"):
            path = CGROUP_MOUNT / hierarchy / relative
            ledger.changes.cgroups.append(str(path))
            ledger.save()
            path.mkdir()
            if hierarchy == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (path / name).write_text((path.parent / name).read_text())
    if (CGROUP_MOUNT / CGROUP_UNIFIED).is_dir():
        ledger.changes.cgroups.append(str(CGROUP_MOUNT / CGROUP_UNIFIED / CGROUP_ROOT))  # kubelet makes this one
        ledger.save()


def _record_sysctls(ledger: Ledger) -> None:
    for name in KUBELET_SYSCTLS:
        ledger.changes.sysctls[name] = (Path("/proc/sys") / name).read_text().strip()
    ledger.save()


def _record_created(ledger: Ledger, *paths: Path) -> None:
    ledger.changes.created.extend(str(path) for path in paths if not path.exists())
    ledger.save()


def _mounts_under(directory: Path) -> list[Path]:
    """Mount points at or under `directory`, deepest first (so each is unmounted before what it sits on)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes spaces and such in octal
        if Path(point) == directory or Path(point).is_relative_to(directory):
            found.append(Path(point))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def _kill_cgroup_processes(timeout: float = 30.0) -> None:
    """SIGKILL every process in the node's cgroup subtrees until none is left (containers, shims, kubelet, ...)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {
            int(pid)
            for hierarchy in (*CGROUP_HIERARCHIES, CGROUP_UNIFIED)
            if (CGROUP_MOUNT / hierarchy / CGROUP_ROOT).is_dir()
            for procs in (CGROUP_MOUNT / hierarchy / CGROUP_ROOT).rglob("cgroup.procs")
            for pid in _read_lines(procs)
        }
        if not pids:
            return
        if time.monotonic() > deadline:
            raise NodeError(f"processes {sorted(pids)} of the node's cgroups survived SIGKILL for {timeout:.0f}s")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []  # a cgroup kubelet removed meanwhile


def _remove_cgroups(recorded: Sequence[str]) -> None:
    """Remove the node's cgroup subtrees bottom-up: the recorded roots and whatever kubelet made under them."""
    for root in sorted({Path(path) for path in recorded}, key=lambda path: len(path.parts), reverse=True):
        if not root.is_dir():
            continue
        below = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda path: len(path.parts), reverse=True)
        for path in [*below, root]:
            _rmdir_cgroup(path)


def _rmdir_cgroup(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:  # EBUSY while the last tasks are still exiting
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise NodeError(f"cannot remove cgroup {path}: {error}") from None
            time.sleep(0.1)


def _pod_routes() -> list[str]:
    """The host ends of pod veths: the links with a route into the pod subnet (ptp adds one per pod)."""
    subnet = ipaddress.ip_network(POD_SUBNET)
    routes = json.loads(_run("ip", "-j", "route", "show").stdout or "[]")
    return sorted(
        {
            route["dev"]
            for route in routes
            if route.get("dst", "default") != "default"
            and ipaddress.ip_network(route["dst"], strict=False).subnet_of(subnet)  # type: ignore[arg-type]
        }
    )


def _remove_cni_results(directory: Path) -> None:
    """libcni's cached results of the node's pods (their network namespace was under `directory`), from a cache that
    the node did not create."""
    for result in (CNI_CACHE / "results").glob("*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if Path(json.loads(result.read_text())["netns"]).is_relative_to(directory):
                result.unlink()


def clean_up(directory: Path) -> None:
    """Undo everything the node of `directory` did to the host, as its state file records it, and delete the
    directory. Harmless when there is nothing to undo; safe after a crash at any point of a start."""
    directory = directory.resolve()
    ledger = Ledger(directory)
    changes = ledger.changes
    _kill_cgroup_processes()
    # Container root file systems, volumes, network namespaces: all under the directory (and, should kubelet or
    # containerd ever mount there, under the shared directories it created). Nothing is deleted while a mount stays,
    # or a bind-mounted host path would be emptied.
    owned = [directory, *map(Path, changes.created)]
    for point in [point for path in owned for point in _mounts_under(path)]:
        _run("umount", "--lazy", str(point))
    if left := [point for path in owned for point in _mounts_under(path)]:
        raise NodeError(f"mounts survived umount, so nothing under them is deleted: {left}")
    for veth in _pod_routes():  # gone with their network namespaces, unless something still held one
        _run("ip", "link", "delete", veth, check=False)
    _remove_cgroups(changes.cgroups)
    if changes.address:
        _run("ip", "addr", "del", changes.address, "dev", "lo", check=False)
    for name, value in changes.sysctls.items():
        (Path("/proc/sys") / name).write_text(value)
    if CONTAINER_LOG_LINKS.is_dir() and str(CONTAINER_LOG_LINKS) not in changes.created:
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(directory):
                link.unlink()
    if CNI_CACHE.is_dir() and str(CNI_CACHE) not in changes.created:
        _remove_cni_results(directory)
    for path in reversed(changes.created):
        shutil.rmtree(path, ignore_errors=True)
    if directory.exists():
        for entry in directory.iterdir():
            if entry.name == STATE_FILE:
                continue  # removed last: until then, a second clean-up still knows what to undo
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    ledger.path.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        directory.rmdir()


# --- Configuration --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one node lives in its directory."""

    directory: Path

    @property
    def containerd_config(self) -> Path:
        return self.directory / "containerd.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    @property
    def cni_config_dir(self) -> Path:
        return self.directory / "cni" / "net.d"

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.directory / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.directory / "pod-logs"

    @property
    def images(self) -> Path:
        return self.directory / "images"


def _toml(value: Any) -> str:
    """TOML for the few value types containerd's configuration needs (JSON's strings and lists are TOML's)."""
    return "true" if value is True else "false" if value is False else json.dumps(value)


def containerd_config(layout: Layout, binaries: Binaries) -> str:
    """containerd 2.4 (config version 4), kept inside the node directory: its state, the pods' network namespaces,
    runc's state; no NRI, no CDI, no /opt/containerd. `restrict_oom_score_adj`: root here lacks CAP_SYS_RESOURCE, and
    runc would fail every sandbox raising its oom_score_adj."""
    root = layout.directory / "containerd"
    cri = "plugins.'io.containerd.cri.v1.runtime'"
    sections: dict[str, dict[str, Any]] = {
        "": {
            "version": 4,
            "root": str(root / "root"),
            "state": str(root / "state"),
            "disabled_plugins": ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"],
        },
        "plugins.'io.containerd.server.v1.grpc'": {"address": str(layout.containerd_socket)},
        "plugins.'io.containerd.server.v1.ttrpc'": {"address": f"{layout.containerd_socket}.ttrpc"},
        cri: {
            "enable_selinux": False,
            "disable_apparmor": True,
            "restrict_oom_score_adj": True,
            "netns_mounts_under_state_dir": True,
            "cdi_spec_dirs": [],
        },
        f"{cri}.containerd": {"default_runtime_name": "runc"},
        f"{cri}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
        f"{cri}.containerd.runtimes.runc.options": {
            "BinaryName": str(binaries.runc / "runc"),
            "Root": str(root / "runc"),
            "SystemdCgroup": False,
        },
        f"{cri}.cni": {"bin_dirs": [str(binaries.cni_plugins)], "conf_dir": str(layout.cni_config_dir)},
        "plugins.'io.containerd.cri.v1.images'": {"snapshotter": "overlayfs"},
        "plugins.'io.containerd.cri.v1.images'.pinned_images": {"sandbox": images.PAUSE_NAME},
        "plugins.'io.containerd.grpc.v1.cri'": {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
    }
    lines = []
    for section, values in sections.items():
        if section:
            lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def cni_config(layout: Layout) -> dict[str, Any]:
    """ptp with host-local: a veth per pod and a host route to it; no bridge and no masquerade (no iptables here)."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.directory / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(layout: Layout, plane: harness.ControlPlane, *, port: int, healthz_port: int) -> dict[str, Any]:
    """cgroup v1 with cgroupfs under CGROUP_ROOT; pod logs inside the node directory; authenticated API only."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": harness.LOOPBACK,
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(plane.directory / "pki" / "client-ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.kubelet_root / "volume-plugins"),
        "failSwapOn": False,
        "serializeImagePulls": False,
        "maxPods": 30,
        "clusterDomain": "cluster.local",
        "clusterDNS": [NODE_IP],  # answered by `dns` while a test runs it
        "resolvConf": "/etc/resolv.conf",
    }


# --- Processes ------------------------------------------------------------------------------------------------------


def _in_node_cgroup(argv: Sequence[str], *, path: Sequence[Path] = ()) -> list[str]:
    """`argv` started inside the node's process cgroup (joined before exec, so nothing it starts escapes), with
    `path` in front of PATH."""
    procs = CGROUP_MOUNT / "pids" / CGROUP_ROOT / PROCESS_CGROUP / "cgroup.procs"
    search = ":".join([*map(str, path), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    return ["env", f"PATH={search}", "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]


def _start(
    name: str, argv: Sequence[str], layout: Layout, started: contextlib.ExitStack, *, path: Sequence[Path] = ()
) -> processes.Process:
    argv = _in_node_cgroup(argv, path=path)
    process = processes.start(name, argv, log_dir=layout.directory / "logs", cwd=layout.directory)
    started.callback(process.stop, STOP_GRACE)
    return process


def _ctr(binaries: Binaries, layout: Layout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ctr = str(binaries.containerd / "ctr")
    return _run(ctr, f"--address={layout.containerd_socket}", "--namespace=k8s.io", *args, check=check)


def _start_containerd(layout: Layout, binaries: Binaries, started: contextlib.ExitStack) -> processes.Process:
    layout.containerd_config.write_text(containerd_config(layout, binaries))
    argv = [str(binaries.containerd / "containerd"), f"--config={layout.containerd_config}"]
    # containerd finds its shim on PATH; runc and the CNI plugins by the absolute paths of its configuration.
    containerd = _start("containerd", argv, layout, started, path=[binaries.containerd])
    ready = lambda: _ctr(binaries, layout, "version", check=False).returncode == 0  # noqa: E731
    containerd.wait_until(ready, what="serving its socket", timeout=60, interval=0.2)
    return containerd


def _import_images(layout: Layout, binaries: Binaries, proxy_binary: Path | None) -> None:
    """The pause and tenant proxy images, made by `testbed.images` and imported (no registry involved)."""
    archives = [
        images.pause_archive(layout.images / "pause.tar"),
        images.proxy_archive(layout.images / "proxy.tar", binary=proxy_binary),
    ]
    for archive in archives:
        _ctr(binaries, layout, "images", "import", str(archive))


def _start_kubelet(
    layout: Layout, binaries: Binaries, plane: harness.ControlPlane, started: contextlib.ExitStack
) -> processes.Process:
    config = kubelet_config(layout, plane, port=processes.free_port(), healthz_port=processes.free_port())
    layout.kubelet_config.write_text(yaml.safe_dump(config, sort_keys=True))
    argv = [
        str(binaries.kubernetes / "kubelet"),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={plane.kubeconfig}",
        f"--root-dir={layout.kubelet_root}",
        f"--cert-dir={layout.kubelet_root / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
    ]
    kubelet = _start("kubelet", argv, layout, started)
    healthz = f"http://{harness.LOOPBACK}:{config['healthzPort']}/healthz"
    kubelet.wait_until(lambda: _http_ok(healthz), what="healthy (/healthz)", timeout=60, interval=0.2)
    return kubelet


def _http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status) == 200
    except urllib.error.URLError:
        return False


def _start_controllers(
    layout: Layout, binaries: Binaries, plane: harness.ControlPlane, started: contextlib.ExitStack
) -> list[processes.Process]:
    """kube-controller-manager (every default controller: node lifecycle, ReplicaSets, garbage collection,
    ServiceAccounts, ...) and kube-scheduler, as admin, serving nothing."""
    pki = plane.directory / "pki"
    manager = [
        str(binaries.kubernetes / "kube-controller-manager"),
        f"--kubeconfig={plane.kubeconfig}",
        f"--authentication-kubeconfig={plane.kubeconfig}",
        f"--authorization-kubeconfig={plane.kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
        "--controllers=*",
        f"--root-ca-file={plane.ca_file}",
        f"--service-account-private-key-file={pki / 'service-account.key'}",
        f"--service-cluster-ip-range={harness.SERVICE_CLUSTER_IP_RANGE}",
        "--use-service-account-credentials=false",
    ]
    scheduler = [
        str(binaries.kubernetes / "kube-scheduler"),
        f"--kubeconfig={plane.kubeconfig}",
        f"--authentication-kubeconfig={plane.kubeconfig}",
        f"--authorization-kubeconfig={plane.kubeconfig}",
        "--secure-port=0",
        "--leader-elect=false",
    ]
    return [
        _start("kube-controller-manager", manager, layout, started),
        _start("kube-scheduler", scheduler, layout, started),
    ]


def _node_ready(plane: harness.ControlPlane) -> bool:
    """Ready, and without the not-ready taint (the node-lifecycle controller removes it shortly after)."""
    result = plane.kubectl("get", "node", NODE_NAME, "--output=json", check=False)
    if result.returncode != 0:
        return False
    node = json.loads(result.stdout)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
    return ready and not tainted


# --- What tests and people use --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    ip: str  # on lo; pods reach the host at this address
    pod_subnet: str
    directory: Path
    processes: Sequence[processes.Process]  # containerd, kubelet, kube-controller-manager, kube-scheduler
    binaries: Binaries

    def logs(self) -> str:
        """The last lines of every process's log, for a failing test's message."""
        return "\n".join(f"--- {process.name}:\n{process.log_tail(30)}" for process in self.processes)

    def container_cgroup(self, container_id: str, hierarchy: str) -> Path:
        """The cgroup directory of a running container (`containerID` of a pod's status, `containerd://<id>`) in one
        v1 hierarchy (memory, pids, ...): kubelet puts it under its QoS class and pod, named by the id."""
        bare = container_id.rpartition("://")[2]
        found = [path for path in (CGROUP_MOUNT / hierarchy / CGROUP_ROOT).rglob(bare) if path.is_dir()]
        if len(found) != 1:
            raise NodeError(f"container {bare}: expected one cgroup in {hierarchy}, found {found}")
        return found[0]

    def container_pid(self, container_id: str) -> int:
        """The host PID of a running container's first process (its init, for the single-process images here)."""
        procs = _read_lines(self.container_cgroup(container_id, "pids") / "cgroup.procs")
        if not procs:
            raise NodeError(f"container {container_id} has no process")
        return min(map(int, procs))

    def container_log(self, pod: Mapping[str, Any], container: str, restart: int) -> Path:
        """The log kubelet writes for one run of a pod's container (CRI format: "<time> <stream> <tag> <line>"):
        `kubectl logs` cannot reach this node (its name does not resolve), the file is read instead."""
        metadata = pod["metadata"]
        directory = f"{metadata['namespace']}_{metadata['name']}_{metadata['uid']}"
        return Layout(self.directory).pod_logs / directory / container / f"{restart}.log"

    def import_image(self, archive: Path) -> None:
        """Load one more OCI image archive (`testbed.images`) into the node's containerd, as the start loads the
        pause and proxy images: pods name it with `imagePullPolicy: Never` (no registry here)."""
        _ctr(self.binaries, Layout(self.directory), "images", "import", str(archive))


@contextlib.contextmanager
def _exclusive(timeout: float) -> Iterator[None]:
    """One node per machine at a time, whatever its directory: they would share the node IP, the pod subnet and the
    cgroup root, and a start cleans up those. The lock is an abstract Unix socket, so it leaves no file behind and
    the kernel releases it when its holder dies."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                lock.bind(LOCK_NAME)
                break
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() >= deadline:
                    raise NodeError(f"another session runs a node on this machine (waited {timeout:.0f}s)") from None
                time.sleep(1)
        yield
    finally:
        lock.close()


def require_root() -> None:
    if os.geteuid() != 0:
        raise NodeError(
            "the node needs root: it adds an address to lo, creates cgroups, mounts container file systems and "
            "runs containerd and kubelet (run the node tests as root, as CI does)"
        )


@contextlib.contextmanager
def running(
    plane: harness.ControlPlane,
    binaries: Binaries,
    *,
    directory: Path | None = None,
    proxy_binary: Path | None = None,
    timeout: float = READY_TIMEOUT,
) -> Iterator[Node]:
    """A node registered with `plane` and Ready (untainted), with the pause and tenant proxy images loaded, for the
    duration of the block; then every process stopped and every host change undone, whatever happened.

    `directory` (default: `<e2e cache>/node`) holds all of the node's files and its state file: what a crashed run
    left there is cleaned up first. `proxy_binary` is a built tenant-proxy (default: built on the way).
    """
    require_root()
    if missing := binaries.missing():
        raise NodeError(f"node binaries missing: {', '.join(map(str, missing))}: run testbed/binaries/build-*.sh")
    directory = (directory or cache_directory() / "node").resolve()
    with _exclusive(LOCK_TIMEOUT):
        clean_up(directory)  # what a crashed run left
        layout = Layout(directory)
        ledger = Ledger(directory)
        try:
            with contextlib.ExitStack() as started:
                yield _start_node(
                    layout=layout,
                    ledger=ledger,
                    binaries=binaries,
                    plane=plane,
                    started=started,
                    proxy_binary=proxy_binary,
                    timeout=timeout,
                )
                plane.kubectl("delete", "node", NODE_NAME, "--wait=false", check=False)
        finally:
            clean_up(directory)


def _start_node(
    *,
    layout: Layout,
    ledger: Ledger,
    binaries: Binaries,
    plane: harness.ControlPlane,
    started: contextlib.ExitStack,
    proxy_binary: Path | None,
    timeout: float,
) -> Node:
    _add_address(ledger)
    _add_cgroups(ledger)
    _record_created(ledger, SHIM_SOCKETS, CONTAINER_LOG_LINKS, DEVICE_PLUGINS, CNI_CACHE)
    _record_sysctls(ledger)
    layout.cni_config_dir.mkdir(parents=True)
    (layout.cni_config_dir / f"10-{CNI_NETWORK}.conflist").write_text(json.dumps(cni_config(layout), indent=2))
    containerd = _start_containerd(layout, binaries, started)
    _import_images(layout, binaries, proxy_binary)
    kubelet = _start_kubelet(layout, binaries, plane, started)
    controllers = _start_controllers(layout, binaries, plane, started)
    node = Node(
        name=NODE_NAME,
        ip=NODE_IP,
        pod_subnet=POD_SUBNET,
        directory=layout.directory,
        processes=[containerd, kubelet, *controllers],
        binaries=binaries,
    )
    try:
        processes.wait_for(lambda: _node_ready(plane), what=f"node {NODE_NAME} Ready", timeout=timeout)
    except TimeoutError as error:
        raise NodeError(f"{error}\n{node.logs()}") from None
    return node


@contextlib.contextmanager
def relay(port: int, *, host: str = harness.LOOPBACK) -> Iterator[int]:
    """A TCP relay from the node IP to `host:port` (the control plane listens on loopback only, which a pod's own
    loopback hides): pods connect to NODE_IP at the port yielded. Stopped, with its connections, after the block."""
    with _relay(lambda: (host, port)) as listening:
        yield listening


SERVICE_REFRESH: Final = 0.2  # seconds between two reads of a `service`'s pods


@contextlib.contextmanager
def service(plane: harness.ControlPlane, namespace: str, selector: str, port: int) -> Iterator[int]:
    """What kube-proxy would do for a Service, which this node cannot run (no iptables): a TCP relay from the node IP
    (the port yielded) to `port` of the Ready pods that `selector` picks in `namespace`, round robin per connection.
    Terminating pods get no new connection, their open ones stay, as with kube-proxy. The pods are read every
    SERVICE_REFRESH seconds; with none Ready, a connection is closed at once (kube-proxy rejects it)."""
    ready: list[str] = []
    done = threading.Event()
    turn = itertools.count()

    def follow() -> None:
        with plane.api_client() as api_client:
            api = k8s.CoreV1Api(api_client)
            while not done.wait(SERVICE_REFRESH):
                with contextlib.suppress(Exception):  # the API server busy: keep the last known pods
                    pods = api.list_namespaced_pod(namespace, label_selector=selector).items
                    ready[:] = sorted(address for pod in pods if (address := _serving(pod)))

    def upstream() -> tuple[str, int] | None:
        current = list(ready)
        return (current[next(turn) % len(current)], port) if current else None

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        with _relay(upstream) as listening:
            yield listening
    finally:
        done.set()
        follower.join(5)


def _serving(pod: k8s.V1Pod) -> str:
    """The pod's IP if kube-proxy would send it new connections (Ready, not terminating), else ""."""
    if pod.status is None or pod.metadata is None or pod.metadata.deletion_timestamp is not None:
        return ""
    ready = any(condition.type == "Ready" and condition.status == "True" for condition in pod.status.conditions or [])
    return str(pod.status.pod_ip or "") if ready else ""


@contextlib.contextmanager
def _relay(upstream: Callable[[], tuple[str, int] | None]) -> Iterator[int]:
    """A TCP relay from the node IP (the port yielded) to the address `upstream` names for each new connection (None:
    the connection is closed). Stopped, with its connections, after the block."""
    listener = socket.create_server((NODE_IP, 0))
    connections: list[socket.socket] = [listener]

    def pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                if (address := upstream()) is None:
                    raise OSError("no upstream")
                target = socket.create_connection(address, timeout=5)
            except OSError:
                client.close()  # the upstream is gone: the client sees the connection closed
                continue
            target.settimeout(None)
            connections.extend((client, target))
            for source, sink in ((client, target), (target, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        server.join(5)


DNS_PORT: Final = 53  # where kubelet's clusterDNS points every ClusterFirst pod (it cannot name another port)
DNS_TTL: Final = 5  # seconds
_DNS_A: Final = 1
_DNS_IN: Final = 1
_DNS_NXDOMAIN: Final = 3


@contextlib.contextmanager
def dns(records: Mapping[str, str]) -> Iterator[None]:
    """The pods' cluster DNS for the duration of the block: `records` (a name, as a pod looks it up, without a
    search domain -> an IPv4 address) answered at the node IP, NXDOMAIN for every other name. No Service names:
    the node runs no kube-proxy, so a ClusterIP would lead nowhere. Pods with the default dnsPolicy (ClusterFirst)
    ask here, so a pod spec as the hook writes it can name the core etcd by a name its certificate carries."""
    table = {name.lower().rstrip("."): socket.inet_aton(address) for name, address in records.items()}
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((NODE_IP, DNS_PORT))
    server.settimeout(0.2)  # closing a socket does not wake a thread blocked on it: the loop looks at `done`
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                query, client = server.recvfrom(512)
            except TimeoutError:
                continue
            if answer := _dns_answer(query, table):
                server.sendto(answer, client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        server.close()


def _dns_answer(query: bytes, table: Mapping[str, bytes]) -> bytes | None:
    """The response to one DNS query (RFC 1035 4.1): the A record of a known name, no record for its other types,
    NXDOMAIN for an unknown name; None for what is not a query of one question."""
    if len(query) < 12 or query[2] & 0x80 or int.from_bytes(query[4:6]) != 1:
        return None
    labels, offset = [], 12
    while offset < len(query) and (length := query[offset]):
        labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    question_end = offset + 5  # the name's zero octet, QTYPE and QCLASS
    if length or question_end > len(query):
        return None  # a compressed or truncated name: never in a question a resolver sends
    qtype = int.from_bytes(query[offset + 1 : offset + 3])
    address = table.get(".".join(labels).lower())
    answers = b""
    if address is not None and qtype == _DNS_A:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", _DNS_A, _DNS_IN, DNS_TTL, 4) + address  # the question's name
    flags = 0x8400 | (int.from_bytes(query[2:4]) & 0x0100) | (0 if address is not None else _DNS_NXDOMAIN)
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if answers else 0, 0, 0)
    return header + query[12:question_end] + answers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.node", description="Undo what a crashed e2e node left on this host."
    )
    parser.add_argument("command", choices=["clean-up"])
    parser.add_argument("--dir", type=Path, help="the node's directory (default: <e2e cache>/node)")
    args = parser.parse_args(argv)
    try:
        require_root()
        directory = (args.dir or cache_directory() / "node").resolve()
        with _exclusive(timeout=0):
            clean_up(directory)
    except NodeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
