"""Real processes for integration tests: start one with its output in a log file, wait (bounded) until it is ready,
show its log when it is not, and always stop it. Test support only; nothing here is shipped.

Children also get SIGTERM when the test runner dies (Linux parent-death signal, set by util-linux's `setpriv` when it
is there), so no etcd outlives a killed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Final

LOG_TAIL_LINES: Final = 60
# A preexec_fn calling prctl() would do the same, but is unsafe once grpcio's threads run in the test process.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT: Final = [_SETPRIV, "--pdeathsig", "TERM", "--"] if _SETPRIV else []


class ProcessStartError(RuntimeError):
    """A process exited or did not become ready in time; the message carries the tail of its log."""


@dataclasses.dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_until(
        self, ready: Callable[[], bool], *, what: str, timeout: float = 30.0, interval: float = 0.05
    ) -> None:
        """Poll `ready` until it holds; raise `ProcessStartError` with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise ProcessStartError(self._report(f"exited with code {self.popen.returncode} before {what}"))
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ProcessStartError(self._report(f"not {what} within {timeout:.0f} s"))
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; safe to call twice."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def _report(self, problem: str) -> str:
        return f"{self.name} {problem}\n  command: {' '.join(self.argv)}\n  log {self.log_path}:\n{self.log_tail()}"


def start(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
) -> Process:
    """Start `argv` with stdout and stderr in `<log_dir>/<name>.log`; `user`/`group` drop privileges (uid/gid)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log: IO[bytes]
    with log_path.open("wb") as log:
        if user is not None:
            os.chown(log_path, user, group if group is not None else -1)  # so the child may reopen /dev/stdout
        popen = subprocess.Popen(
            [*_DIE_WITH_PARENT, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
    return Process(name=name, argv=list(argv), log_path=log_path, popen=popen)


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


def with_hosts(hosts: Mapping[str, str], directory: Path, argv: Sequence[str]) -> list[str]:
    """`argv` run in a private mount namespace whose /etc/hosts maps each name of `hosts` to its address (and
    localhost to 127.0.0.1): a process reaches a Service's DNS name on loopback, the machine's /etc/hosts untouched.

    The hosts file is written to `directory`. `unshare --mount` needs root; others get a user namespace mapped to root.
    """
    path = directory / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{address} {name}\n" for name, address in {"localhost": "127.0.0.1", **hosts}.items()))
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    # sh execs argv in place: the pid started (and later stopped) is the program's own.
    return [*unshare, "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(path), *argv]


def wait_for(condition: Callable[[], bool], *, what: str, timeout: float, interval: float = 0.05) -> None:
    """Poll `condition` until it holds; `TimeoutError` naming `what` when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False
