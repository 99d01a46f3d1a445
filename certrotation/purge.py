"""A going EtcdStorage (deletionTimestamp set): no certificates are issued for it any more, and with deletionPolicy
Delete its keys are deleted from the core etcd.

The deletion itself is `tenant-proxy purge-prefix` (built on etcd's own client; this module speaks no etcd), given the
core etcd's CA and the client certificate the proxies use, written for the run into a private temporary directory.
Each attempt is reported on the tenant's `<N>-ca-cert` (`etcdstorage.deletion`), where the hook's finalize answer
reads it: the object goes only once an attempt for its uid counted no key left. A failed attempt names why and is
tried again on the next run; it never stops the other tenants.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from certrotation import apply, events, fixes, gather, kube, plan, reporting
from etcdstorage import deletion, names
from etcdstorage.settings import Settings
from etcdstorage.spec import DeletionPolicy, EtcdStorage

log = logging.getLogger("certrotation.job")

TIMEOUT: Final = 50.0  # seconds for one attempt (the binary's --timeout); the CronJob's deadline is longer
_MAX_PROBLEM: Final = 300  # characters of the binary's error kept in the report

Run = Callable[..., subprocess.CompletedProcess[str]]


def going(
    api: kube.Api, settings: Settings, tenant: EtcdStorage, listed: gather.Listed | None, now: datetime,
    *, run: Run = subprocess.run,
) -> bool:  # fmt: skip
    """Handle a going tenant; True when this run failed for it (the job then exits 1)."""
    if tenant.deletion_policy is DeletionPolicy.RETAIN:
        _log(logging.INFO, "tenant going: keys retained", tenant=tenant.name, prefix=_prefix(tenant, settings))
        return False
    attempt = delete_keys(api, settings, tenant, listed, now, run=run)
    written = reporting.annotate(api, settings, tenant, listed, deletion.to_annotations(attempt))
    for _, error in apply.record(api, [events.key_deletion(tenant, attempt, now)]):
        _log(logging.WARNING, "event not recorded", tenant=tenant.name, problem=fixes.describe(error))
    level = logging.INFO if attempt.complete else logging.ERROR if attempt.problem else logging.WARNING
    _log(
        level,
        "tenant going: keys deleted" if attempt.complete else "tenant going: keys not all deleted yet",
        tenant=tenant.name,
        prefix=attempt.prefix,
        deleted=attempt.deleted,
        remaining="unknown" if attempt.remaining is None else attempt.remaining,
        **({"problem": attempt.problem} if attempt.problem else {}),
        **({} if written is None else {"report_problem": written}),
    )
    return bool(attempt.problem) or written is not None


def delete_keys(
    api: kube.Api, settings: Settings, tenant: EtcdStorage, listed: gather.Listed | None, now: datetime,
    *, run: Run = subprocess.run,
) -> deletion.KeyDeletion:  # fmt: skip
    """One attempt at deleting every key under the tenant's prefix, as a report (never raises for what it meets)."""
    prefix = _prefix(tenant, settings)

    def attempt(problem: str = "", deleted: int = 0, remaining: int | None = None) -> deletion.KeyDeletion:
        return deletion.KeyDeletion(
            uid=tenant.uid, prefix=prefix, deleted=deleted, remaining=remaining, problem=problem, time=now
        )

    ca_object, cert_object = gather.core_objects(api, settings, listed)
    core = plan.core_certificate(ca_object, cert_object, now)
    if core.problem:
        return attempt(f"the core etcd client certificate cannot work: {core.problem}")
    ca = ((ca_object.obj or {}).get("data") or {}).get(names.CORE_CA_KEY, "")
    pair = plan.secret_data(cert_object.obj)
    with tempfile.TemporaryDirectory(prefix="etcdstorage-purge-") as directory:
        files = _write_private(Path(directory), ca.encode(), pair.get(names.TLS_CRT, b""), pair.get(names.TLS_KEY, b""))
        argv = _argv(settings, tenant, files)
        try:
            done = run(argv, capture_output=True, text=True, timeout=TIMEOUT + 10, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return attempt(f"cannot run {argv[0]} purge-prefix: {error}")
    try:
        printed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    except ValueError:
        printed = {}
    deleted, remaining = printed.get("deleted"), printed.get("remaining")
    deleted = deleted if isinstance(deleted, int) else 0
    remaining = remaining if isinstance(remaining, int) else None
    if done.returncode != 0 or remaining is None:
        # Its own error is its last line; anything above is the etcd client's noise.
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        said = " ".join(last.split())[:_MAX_PROBLEM] or f"{argv[0]} purge-prefix: exit code {done.returncode}"
        return attempt(said, deleted, remaining)
    return attempt("", deleted, remaining)


def _prefix(tenant: EtcdStorage, settings: Settings) -> str:
    return names.key_prefix(tenant.name, settings.key_prefix_root)


def _argv(settings: Settings, tenant: EtcdStorage, files: Sequence[Path]) -> list[str]:
    ca, cert, key = files
    return [
        settings.tenant_proxy_binary,
        "purge-prefix",
        f"--root={settings.key_prefix_root}",
        f"--name={tenant.name}",
        f"--endpoints={','.join(settings.core_etcd_urls)}",
        f"--core-ca-file={ca}",
        f"--core-cert-file={cert}",
        f"--core-key-file={key}",
        f"--timeout={int(TIMEOUT)}s",
    ]


def _write_private(directory: Path, ca: bytes, cert: bytes, key: bytes) -> tuple[Path, Path, Path]:
    """The core material as files only this process's user can read, gone with the directory."""
    paths = (directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    for path, content in zip(paths, (ca, cert, key), strict=True):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
    return paths


def _log(level: int, message: str, **fields: object) -> None:
    log.log(level, message, extra={"fields": fields})
