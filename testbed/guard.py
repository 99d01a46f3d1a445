"""The previous data path's guard (nginx, configured by `guard_config.render_nginx_conf`) in front of a real
grpc-proxy: the "before" of the data-path benchmark.

Test support only. The guard's files are staged in a directory of its own, laid out like the pod's mounts, and nginx
runs unprivileged (as `nobody` when the tests run as root), so a configuration that needs root or writes outside its
run directory fails here as it would under a read-only root filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Final

from etcdstorage import names
from testbed import guard_config, processes
from testbed.certs import TLSFiles
from testbed.etcd import GrpcProxy, http_status

NGINX: Final = "/usr/sbin/nginx"
READY_TIMEOUT: Final = 20.0


@dataclasses.dataclass
class Guard:
    process: processes.Process
    port: int
    health_port: int
    directory: Path  # staged files: server/, ca/, run/, nginx.conf
    tls: TLSFiles  # the staged copies nginx reads: client CA bundle, server certificate and key
    config: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, path: str) -> int:
        return http_status(self.health_port, path)

    def reload(self) -> None:
        """SIGHUP: nginx re-reads its configuration and certificates, new workers take new connections."""
        self.process.popen.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (NGINX if os.access(NGINX, os.X_OK) else None)
    if found is None:
        raise FileNotFoundError("nginx not found: apt-get install nginx-light")
    return found


def start_guard(
    workdir: Path, tls: TLSFiles, proxy: GrpcProxy, *, name: str = "guard", log_requests: bool = False
) -> Guard:
    """nginx with the production configuration but loopback ports and staged paths; ready once /readyz is 200.

    `log_requests` makes it log every request too (`guard request ... rpc="<path>"`), to record the RPCs a client uses.
    """
    uid, gid = _unprivileged()
    directory = Path(tempfile.mkdtemp(prefix=f"etcdstorage-{name}-"))
    staged = TLSFiles(
        ca=_stage(tls.ca, directory / "ca" / names.CLIENT_CA_KEY, uid, gid),
        cert=_stage(tls.cert, directory / "server" / names.TLS_CRT, uid, gid),
        key=_stage(tls.key, directory / "server" / names.TLS_KEY, uid, gid),
    )
    run_dir = directory / "run"
    run_dir.mkdir()
    port, health_port = processes.free_port(), processes.free_port()
    config = directory / "nginx.conf"
    config.write_text(
        guard_config.render_nginx_conf(
            listen_port=port,
            health_port=health_port,
            proxy_port=proxy.port,
            proxy_health_port=proxy.metrics_port,
            server_cert=str(staged.cert),
            server_key=str(staged.key),
            client_ca=str(staged.ca),
            run_dir=str(run_dir),
            bind_address="127.0.0.1",
            worker_processes=1,
            log_requests=log_requests,
        )
    )
    for path in (directory, run_dir, config):
        _own(path, uid, gid)
    argv = [nginx_binary(), *guard_config.command(str(config))[1:]]
    process = processes.start(name, argv, log_dir=workdir, user=uid, group=gid)
    started = Guard(process=process, port=port, health_port=health_port, directory=directory, tls=staged, config=config)
    try:
        process.wait_until(lambda: started.health("/readyz") == 200, what="ready (/readyz)", timeout=READY_TIMEOUT)
    except BaseException:
        started.stop()
        raise
    return started


def _unprivileged() -> tuple[int | None, int | None]:
    """Run as ourselves, or as `nobody` when we are root: the guard never runs as root in a pod either."""
    if os.geteuid() != 0:
        return None, None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _stage(source: Path, target: Path, uid: int | None, gid: int | None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o600)
    _own(target.parent, uid, gid)
    _own(target, uid, gid)
    return target


def _own(path: Path, uid: int | None, gid: int | None) -> None:
    if uid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, uid, gid if gid is not None else -1)
