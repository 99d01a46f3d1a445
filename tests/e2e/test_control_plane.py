"""The e2e control plane itself: it answers as the pinned release, keeps its data in the etcd it exposes, enforces
RBAC, applies idempotently, and leaves no process behind, whether it started or not."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from testbed import harness
from testbed.etcd import etcdctl

pytestmark = pytest.mark.e2e

GO_MOD = Path(__file__).resolve().parents[2] / "testbed" / "binaries" / "kube-apiserver" / "go.mod"


def pinned_version() -> str:
    match = re.search(r"^\s*k8s\.io/kubernetes (v[0-9][^\s]*)", GO_MOD.read_text(), re.MULTILINE)
    assert match, f"no k8s.io/kubernetes requirement in {GO_MOD}"
    return match.group(1)


def processes_in(directory: Path) -> list[int]:
    """Process ids working in `directory` or below: the harness starts every process of a control plane there."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(proc / "cwd").resolve(strict=True).is_relative_to(directory.resolve()):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
    return found


def test_the_api_server_is_ready_and_runs_the_release_pinned_in_go_mod(control_plane: harness.ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
    version = json.loads(control_plane.kubectl("version", "--output=json").stdout)
    assert version["serverVersion"]["gitVersion"] == pinned_version()


def test_the_api_server_keeps_its_objects_under_the_prefix_of_the_core_etcd_it_exposes(
    control_plane: harness.ControlPlane, namespace: str
) -> None:
    control_plane.kubectl("create", "configmap", "probe", f"--namespace={namespace}", "--from-literal=answer=42")
    core = control_plane.core
    prefix = f"{control_plane.etcd_prefix}/configmaps/{namespace}/"
    # As a grpc-proxy would reach it: with the core's client certificate that has no Common Name.
    listed = etcdctl(core.etcd.address, core.pki.proxy_client, "get", "--prefix", "--keys-only", prefix)
    assert listed.returncode == 0, listed.stderr
    assert f"{prefix}probe" in listed.stdout.split()


def test_a_service_account_token_without_bindings_is_refused_secrets_until_a_role_binding_grants_them(
    control_plane: harness.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", f"--namespace={namespace}")
    token = control_plane.token(namespace, "nobody")
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "nobody.kubeconfig")

    # The token authenticates, so what follows is authorization speaking, not a bad credential.
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "--output=json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"

    with control_plane.api_client(kubeconfig) as client, pytest.raises(ApiException) as refused:
        CoreV1Api(client).list_namespaced_secret(namespace)
    assert refused.value.status == 403
    message = json.loads(refused.value.body or "{}").get("message", "")
    assert f'User "system:serviceaccount:{namespace}:nobody" cannot list resource "secrets"' in message
    by_kubectl = control_plane.kubectl("get", "secrets", f"--namespace={namespace}", kubeconfig=kubeconfig, check=False)
    assert by_kubectl.returncode != 0
    assert "Error from server (Forbidden)" in by_kubectl.stderr

    in_namespace = f"--namespace={namespace}"
    control_plane.kubectl("create", "role", "secret-reader", "--verb=list", "--resource=secrets", in_namespace)
    control_plane.kubectl(
        "create", "rolebinding", "nobody-reads-secrets", "--role=secret-reader",
        f"--serviceaccount={namespace}:nobody", in_namespace,
    )  # fmt: skip
    # RBAC reads bindings from an informer: allow it a moment to see the new one.
    deadline = time.monotonic() + 10
    while True:
        granted = control_plane.kubectl("get", "secrets", in_namespace, kubeconfig=kubeconfig, check=False)
        if granted.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert granted.returncode == 0, granted.stderr


def test_server_side_apply_of_the_same_object_twice_changes_nothing(
    control_plane: harness.ControlPlane, namespace: str
) -> None:
    def apply(data: dict[str, str]) -> str:
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "applied", "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "e2e"}},
            "data": data,
        }
        result = control_plane.kubectl(
            "apply", "--server-side", "--field-manager=e2e", "--filename=-", input=yaml.safe_dump(manifest)
        )
        assert result.stdout.strip() == "configmap/applied serverside-applied"
        got = control_plane.kubectl("get", "configmap", "applied", f"--namespace={namespace}", "--output=json")
        return str(json.loads(got.stdout)["metadata"]["resourceVersion"])

    first = apply({"key": "value"})
    assert apply({"key": "value"}) == first
    # The same check notices a real change, so the equality above is not a resourceVersion that never moves.
    assert apply({"key": "other value"}) != first


def test_a_failed_start_shows_the_api_servers_log_and_leaves_nothing_running(
    kube_apiserver_binary: Path, tmp_path: Path
) -> None:
    with (
        pytest.raises(harness.HarnessError) as failed,
        harness.running(tmp_path, kube_apiserver_binary, extra_args=["--no-such-flag"]),
    ):
        pytest.fail("a kube-apiserver with an unknown flag started")
    assert "kube-apiserver exited with code" in str(failed.value)
    assert "unknown flag: --no-such-flag" in str(failed.value)
    assert processes_in(tmp_path) == []


def test_leaving_the_block_stops_etcd_and_the_api_server(kube_apiserver_binary: Path, tmp_path: Path) -> None:
    with harness.running(tmp_path, kube_apiserver_binary) as plane:
        assert len(processes_in(tmp_path)) == 2  # etcd and kube-apiserver
        assert plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
    assert processes_in(tmp_path) == []


def test_the_command_line_starts_a_control_plane_in_the_background_and_stops_it(
    kube_apiserver_binary: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "testbed.harness", *args, f"--dir={state}"],
            cwd=harness.REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=harness.START_TIMEOUT + 60,
        )

    try:
        up = cli("up")
        assert up.returncode == 0, up.stderr
        env = cli("env")
        assert env.returncode == 0, env.stderr
        assert env.stdout == up.stdout
        exports = dict(shlex.split(line)[1].split("=", 1) for line in env.stdout.splitlines())
        assert set(exports) >= {"KUBECONFIG", "ETCDSTORAGE_E2E_ETCD_URL"}
        supervisor = json.loads((state / harness.STATE_FILE).read_text())["pid"]
        started = [supervisor, *processes_in(state)]
        assert len(started) == 3  # the supervisor, etcd and kube-apiserver
        ready = subprocess.run(
            [str(harness.tool("kubectl")), f"--kubeconfig={exports['KUBECONFIG']}", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert ready.stdout == "ok", ready.stderr
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert [pid for pid in started if Path(f"/proc/{pid}").exists()] == []
    assert not state.exists()
    assert cli("env").returncode == 1
