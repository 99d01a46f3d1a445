"""The tenant proxy of this repository (tenant-proxy/, built by scripts/build-tenant-proxy), run as a pod runs it.

Test support only. It runs unprivileged (as `nobody` when the tests run as root) and reads its certificates from
directories laid out as kubelet lays out a mounted Secret or ConfigMap: the files are symlinks into `..data`, which
`Mount.swap` replaces in one rename, as kubelet's atomic writer does when the object changes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from etcdstorage import names
from testbed import processes
from testbed.certs import TLSFiles
from testbed.etcd import EtcdServer, http_status

REPO: Final = Path(__file__).resolve().parents[1]
BUILD: Final = REPO / "scripts" / "build-tenant-proxy"
READY_TIMEOUT: Final = 20.0


@functools.cache
def binary() -> str:
    """The tenant proxy: $ETCDSTORAGE_TENANT_PROXY (scripts/test builds it first), else built now from the source."""
    configured = os.environ.get("ETCDSTORAGE_TENANT_PROXY")
    if configured:
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"ETCDSTORAGE_TENANT_PROXY={configured} is not an executable file")
        return configured
    built = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise FileNotFoundError(f"cannot build the tenant proxy ({BUILD}):\n{built.stderr}")
    return built.stdout.strip()


def allowlist() -> dict[str, str]:
    """The proxy's allowlist, as it prints it: full gRPC method -> why a tenant needs it."""
    printed = subprocess.run([binary(), "--print-allowlist"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("\t", 1) for line in printed.splitlines())


class Mount:
    """A directory as kubelet mounts a Secret or ConfigMap: `<key> -> ..data/<key>`, `..data -> ..<version>`."""

    def __init__(self, directory: Path, files: Mapping[str, bytes], owner: tuple[int, int] | None) -> None:
        self.directory = directory
        self.owner = owner
        self._version = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._chown(directory)
        self.swap(files)
        for key in files:
            (directory / key).symlink_to(Path("..data") / key)

    def path(self, key: str) -> Path:
        return self.directory / key

    def swap(self, files: Mapping[str, bytes]) -> None:
        """Replace every file at once: a new version directory, then one rename of the `..data` link."""
        self._version += 1
        version = self.directory / f"..{self._version}"
        version.mkdir(mode=0o750)
        for key, content in files.items():
            path = version / key
            path.write_bytes(content)
            path.chmod(0o440)
            self._chown(path)
        self._chown(version)
        link = self.directory / "..data_tmp"
        link.symlink_to(version.name)
        link.rename(self.directory / "..data")
        if self._version > 1:
            shutil.rmtree(self.directory / f"..{self._version - 1}")

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)


@dataclasses.dataclass
class TenantProxy:
    process: processes.Process
    port: int
    health_port: int
    prefix: str
    server: Mount  # tls.crt, tls.key: the serving certificate (<N>-server-cert)
    client_ca: Mount  # client-ca.crt: the tenant's client-CA bundle (<N>-ca-cert)
    core_ca: Mount  # ca.crt: the core etcd's CA bundle
    core_client: Mount  # tls.crt, tls.key: the proxy's client certificate for the core etcd
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, path: str) -> int:
        return http_status(self.health_port, path, timeout=5)  # kubelet's probe timeout in the pod spec

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in self.metrics().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def terminate(self) -> None:
        """SIGTERM, as kubelet sends it; returns at once."""
        self.process.popen.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_tenant_proxy(
    workdir: Path,
    core: EtcdServer,
    *,
    prefix: str,
    serving: TLSFiles,
    upstream: TLSFiles,
    name: str = "tenant-proxy",
    args: Sequence[str] = (),
    wait_ready: bool = True,
) -> TenantProxy:
    """The proxy for `prefix` in front of `core`: `serving` holds its certificate, key and the tenant's client-CA
    bundle, `upstream` the core's CA bundle and its client certificate. Ready once /readyz answers 200."""
    owner = _unprivileged()
    directory = Path(tempfile.mkdtemp(prefix=f"etcdstorage-{name}-"))
    if owner is not None:
        os.chown(directory, *owner)
    mounts = {
        "server": Mount(
            directory / "server",
            {names.TLS_CRT: serving.cert.read_bytes(), names.TLS_KEY: serving.key.read_bytes()},
            owner,
        ),
        "client_ca": Mount(directory / "ca", {names.CLIENT_CA_KEY: serving.ca.read_bytes()}, owner),
        "core_ca": Mount(directory / "core-ca", {names.CORE_CA_KEY: upstream.ca.read_bytes()}, owner),
        "core_client": Mount(
            directory / "core-client",
            {names.TLS_CRT: upstream.cert.read_bytes(), names.TLS_KEY: upstream.key.read_bytes()},
            owner,
        ),
    }
    port, health_port = processes.free_port(), processes.free_port()
    argv = [
        binary(),
        f"--listen=127.0.0.1:{port}",
        f"--health-listen=127.0.0.1:{health_port}",
        f"--prefix={prefix}",
        f"--endpoints={core.url}",
        f"--cert-file={mounts['server'].path(names.TLS_CRT)}",
        f"--key-file={mounts['server'].path(names.TLS_KEY)}",
        f"--client-ca-file={mounts['client_ca'].path(names.CLIENT_CA_KEY)}",
        f"--core-ca-file={mounts['core_ca'].path(names.CORE_CA_KEY)}",
        f"--core-cert-file={mounts['core_client'].path(names.TLS_CRT)}",
        f"--core-key-file={mounts['core_client'].path(names.TLS_KEY)}",
        "--reload-interval=200ms",
        "--shutdown-delay=0s",
        *args,
    ]
    user, group = owner if owner is not None else (None, None)
    process = processes.start(name, argv, log_dir=workdir, user=user, group=group)
    proxy = TenantProxy(
        process=process, port=port, health_port=health_port, prefix=prefix, directory=directory, **mounts
    )
    try:
        if wait_ready:
            process.wait_until(lambda: proxy.health("/readyz") == 200, what="ready (/readyz)", timeout=READY_TIMEOUT)
        else:
            process.wait_until(lambda: proxy.health("/livez") == 200, what="live (/livez)", timeout=READY_TIMEOUT)
    except BaseException:
        proxy.stop()
        raise
    return proxy


def _unprivileged() -> tuple[int, int] | None:
    """`nobody` when the tests run as root (a pod runs the proxy as 65532, never as root); else ourselves."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid
