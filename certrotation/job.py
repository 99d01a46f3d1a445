"""The cert-rotation job (`python -m certrotation`): one pass over every EtcdStorage, issuing and rotating certificates.

The edge: reads settings and the clock, maps failures to exit codes and logs what was done. Each tenant's pass is
gather (`certrotation.gather`: one read of its objects) → plan (`certrotation.plan`: pure, the ordered writes) →
apply (`certrotation.apply`: the writes, each only after those it needs) → the report of what was delivered (planned
from the outcome, then written) and the Events (`certrotation.events`); started again from fresh reads when a write
meets a concurrent change. Only `certrotation.kube` talks to Kubernetes. Never logs key material.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final

from certrotation import apply, consumers, events, fixes, gather, kube, plan, purge
from etcdstorage import names
from etcdstorage import settings as settings_module
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage, InvalidSpec, parse
from etcdstorage.times import parse_rfc3339, rfc3339

EXIT_OK: Final = 0
EXIT_FAILURES: Final = 1  # some tenant, or the core etcd client certificate, needs the operator; the rest was done
EXIT_CANNOT_RUN: Final = 2  # settings, credentials or the EtcdStorage list: nothing was processed
# The run record is written again at most this often while the outcome stays the same (and at once when it changes):
# the alert on it waits far longer, and a pass with nothing due writes nothing.
RECORD_EVERY: Final = timedelta(minutes=5)
ATTEMPTS: Final = 3  # passes over a tenant when a write meets a concurrent change (409)
SERVICE_ACCOUNT: Final = fixes.SERVICE_ACCOUNT

log = logging.getLogger("certrotation.job")


# --- Entry point ------------------------------------------------------------------------------------------------------


def main() -> int:
    configure_logging(sys.stderr)
    try:
        settings = settings_module.from_env()
    except settings_module.SettingsError as error:
        _log(logging.ERROR, "invalid settings", problem=str(error))
        return EXIT_CANNOT_RUN
    try:
        api = kube.connect()
    except kube.ConnectError as error:
        _log(logging.ERROR, "no Kubernetes credentials", problem=str(error), fix="run in the cluster or set KUBECONFIG")
        return EXIT_CANNOT_RUN
    return run(api, settings, datetime.now(UTC))


def run(api: kube.Api, settings: Settings, now: datetime) -> int:
    """One pass over every EtcdStorage at time `now`; the exit code of the job."""
    try:
        objects = api.list_etcdstorages()
    except kube.KubeError as error:
        _log(
            logging.ERROR,
            "cannot list EtcdStorages",
            **_error_fields(error),
            fix=fixes.etcdstorages_unlisted(error),
        )
        return EXIT_CANNOT_RUN
    listed = _controller_namespace(api, settings.namespace)
    core = _core_certificate(api, settings, now, listed)
    summary = _Summary(tenants=len(objects), core_problem=bool(core.problem))
    owners = plan.destination_owners(objects)  # one destination, one owner: never written alternately
    ordered = sorted(objects, key=lambda o: str((o.get("metadata") or {}).get("name", "")))

    def one(obj: dict[str, Any]) -> _Outcome:
        return _tenant(api, settings, obj, core, now, listed=listed, owners=owners)

    if settings.job_workers == 1 or len(ordered) < 2:
        outcomes = [one(obj) for obj in ordered]
    else:
        # Tenants are independent (each writes only its own objects and destinations, which `owners` keeps
        # apart), so their passes overlap; their requests are what takes the time, not the Python.
        with concurrent.futures.ThreadPoolExecutor(settings.job_workers, thread_name_prefix="tenant") as pool:
            outcomes = list(pool.map(one, ordered))
    for outcome in outcomes:
        summary.issued += outcome.issued
        summary.written += outcome.written
        summary.failed += outcome.failed
    _log(
        logging.INFO if summary.ok else logging.WARNING,
        "run finished",
        tenants=summary.tenants,
        failed=summary.failed,
        certificates_issued=summary.issued,
        objects_written=summary.written,
        core_certificate_ok=not summary.core_problem,
    )
    code = EXIT_OK if summary.ok else EXIT_FAILURES
    _record_run(api, settings, now, code, listed)
    return code


def _record_run(api: kube.Api, settings: Settings, now: datetime, code: int, listed: gather.Listed | None) -> None:
    """This run's time and exit code, and the last successful run's time, on `etcdstorage-cert-rotation-status`: the
    hook exports them (`etcdstorage_job_last_success_timestamp_seconds`), so an alert sees a job that keeps failing.
    A failure to write it is a warning, never the run's exit code."""
    ref = kube.Ref(kube.Kind.CONFIGMAP, settings.namespace, names.JOB_STATUS_CONFIGMAP)
    current = gather.read(api, ref, listed)
    held = dict((current.obj or {}).get("data") or {})
    if held.get(names.JOB_LAST_EXIT_KEY) == str(code) and _recent(held.get(names.JOB_LAST_RUN_KEY), now):
        return  # the same outcome, told lately: a run with nothing due writes nothing
    data = {
        **held,
        names.JOB_LAST_RUN_KEY: rfc3339(now),
        names.JOB_LAST_EXIT_KEY: str(code),
        **({names.JOB_LAST_SUCCESS_KEY: rfc3339(now)} if code == EXIT_OK else {}),
    }
    try:
        if current.error is not None:
            error: kube.KubeError = current.error
        elif current.obj is None:
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ref.name}, "data": data}
            api.create(ref.kind, ref.namespace, body)
            return
        else:
            api.replace(ref.kind, ref.namespace, {**current.obj, "data": data})
            return
    except kube.KubeError as failed:
        error = failed
    _log(
        logging.WARNING, "run not recorded", object=str(ref), **_error_fields(error), fix=f"apply {fixes.RBAC_MANIFEST}"
    )


def _recent(recorded: object, now: datetime) -> bool:
    """Whether a recorded run time is less than `RECORD_EVERY` before `now`."""
    when = parse_rfc3339(recorded)
    return when is not None and timedelta(0) <= now - when < RECORD_EVERY


def _tenant(
    api: kube.Api, settings: Settings, obj: dict[str, Any], core: plan.Core, now: datetime, *,
    listed: gather.Listed | None, owners: dict[kube.Ref, str],
) -> _Outcome:  # fmt: skip
    """One EtcdStorage's part of the pass: its certificates, then its consumers; or, when it is going, its keys."""
    try:
        tenant = parse(obj)
    except InvalidSpec as error:
        _log(logging.ERROR, "tenant skipped: invalid spec", tenant=error.name, problem=str(error))
        return _Outcome(failed=True)
    if tenant.deleting:  # no certificates for a going tenant; its keys go with deletionPolicy Delete
        return _Outcome(failed=purge.going(api, settings, tenant, listed, now))
    outcome = _reconcile(api, settings, tenant, core, now, listed=listed, owners=owners)
    outcome.failed |= consumers.roll(api, settings, tenant)  # after the certificates: roll onto them
    return outcome


@dataclasses.dataclass
class _Summary:
    tenants: int
    core_problem: bool
    failed: int = 0
    issued: int = 0
    written: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.core_problem


def _controller_namespace(api: kube.Api, namespace: str) -> gather.Listed | None:
    """The controller namespace's objects, listed once; None, and a warning, when the pass must GET each one."""
    listed = gather.controller_namespace(api, namespace)
    if not isinstance(listed, gather.Unlisted):
        return listed
    _log(
        logging.WARNING,
        "cannot list the controller namespace: reading objects one by one",
        kind=listed.kind,
        namespace=namespace,
        **_error_fields(listed.error),
        fix=fixes.unlisted(listed.kind, listed.error, namespace),
    )
    return None


def _core_certificate(api: kube.Api, settings: Settings, now: datetime, listed: gather.Listed | None) -> plan.Core:
    configmap, secret = gather.core_objects(api, settings, listed)
    core = plan.core_certificate(configmap, secret, now)
    if core.problem:
        ca_where, cert_where = f"{configmap.ref.kind} {configmap.ref}", f"{secret.ref.kind} {secret.ref}"
        _log(
            logging.ERROR,
            "core etcd client certificate unusable",
            object=cert_where,
            problem=core.problem,
            fix=fixes.core_unusable(ca_where, cert_where),
        )
    return core


# --- One tenant -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Outcome:
    issued: int = 0
    written: int = 0
    failed: bool = False  # the reason is logged


def _reconcile(
    api: kube.Api,
    settings: Settings,
    tenant: EtcdStorage,
    core: plan.Core,
    now: datetime,
    *,
    listed: gather.Listed | None,
    owners: dict[kube.Ref, str],
) -> _Outcome:
    """The tenant's gather → plan → apply → report, started again from fresh reads when a write meets a concurrent
    change (bounded). The first attempt takes the controller namespace's objects from the pass's LIST; any later one
    GETs every object again, so that what a write conflicted on, or what was created after the list, is read as it
    is. The report is written whatever else failed: it says what was delivered and what was not."""
    outcome = _Outcome()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            snapshot = gather.tenant(api, settings, tenant, core, listed if attempt == 1 else None, owners=owners)
            planned = plan.plan(snapshot, settings, now)
            applied = apply.writes(api, planned.writes, settings.namespace)
            reported = plan.report_of(planned, applied.unsent)
            written = [] if applied.stale or reported.write is None else [reported.write]
            report = apply.writes(api, written, settings.namespace, versions=applied.versions)
        except Exception:  # a bug must not keep the other tenants from their certificates
            log.exception("tenant failed: unexpected error", extra={"fields": {"tenant": tenant.name}})
            outcome.failed = True
            return outcome
        _tell_written(tenant, applied.written, outcome)
        done = [event for write in applied.written for event in write.events]
        if applied.stale or report.stale:
            _record(api, settings, tenant, done, now)
            _log(logging.WARNING, "write conflict: reading the tenant again", tenant=tenant.name, attempt=attempt)
            continue
        outcome.written += len(report.written)
        problems = [*planned.problems, *applied.failures, *report.failures]
        for problem in problems:
            _log(
                logging.ERROR,
                "tenant object failed",
                tenant=tenant.name,
                kind=problem.ref.kind,
                object=str(problem.ref),
                problem=problem.problem,
                fix=problem.fix,
            )
        for lost in planned.lost:
            _tell_lost(tenant, snapshot.signer.ref, lost)
        for refused in planned.refused:
            _log(logging.WARNING, "rotation request refused", tenant=tenant.name, problem=refused.problem)
        _record(api, settings, tenant, [*done, *planned.lost, *reported.events], now)
        outcome.failed = bool(problems or planned.lost)
        return outcome
    _log(
        logging.ERROR,
        "tenant failed: writes kept conflicting",
        tenant=tenant.name,
        attempts=ATTEMPTS,
        fix="another writer keeps changing the tenant's objects: stop it (is a second job running?)",
    )
    outcome.failed = True
    return outcome


def _tell_written(tenant: EtcdStorage, written: tuple[plan.Write, ...], outcome: _Outcome) -> None:
    """Log each write and what it carried out, and count them."""
    for write in written:
        ref = write.ref
        message = "object created" if write.verb is plan.Verb.CREATE else "object updated"
        _log(logging.INFO, message, tenant=tenant.name, kind=ref.kind, object=str(ref), keys=list(write.keys))
        outcome.written += 1
        for event in write.events:
            if isinstance(event, plan.SignerChanged):
                _log(
                    logging.INFO,
                    "signer changed",
                    tenant=tenant.name,
                    role=event.role,
                    action=event.action,
                    reasons=list(event.reasons),
                )
                outcome.issued += event.action in ("issued", "staged")
            elif isinstance(event, plan.CertificateIssued):
                _log(
                    logging.WARNING if event.replaced_issuer else logging.INFO,  # a foreign one: replaced, and said
                    "certificate issued",
                    tenant=tenant.name,
                    kind=event.ref.kind,
                    object=str(event.ref),
                    reasons=list(event.reasons),
                    not_after=rfc3339(event.not_after),
                    replaced_issuer=event.replaced_issuer or None,
                )
                outcome.issued += 1
            elif isinstance(event, plan.RotationRequested):
                _log(
                    logging.INFO,
                    "rotation requested",
                    tenant=tenant.name,
                    annotation=event.annotation,
                    value=event.value,
                    staged=[str(role) for role in event.staged],
                )


def _tell_lost(tenant: EtcdStorage, signer: kube.Ref, lost: plan.SignerLost) -> None:
    """The loud part of a signer's recovery: an error on every pass until it completes."""
    problem = fixes.signer_lost(signer, str(lost.role), lost.trusted)
    _log(
        logging.ERROR,
        "signer lost: recovering with overlap",
        tenant=tenant.name,
        role=lost.role,
        object=str(signer),
        problem=problem.problem,
        fix=problem.fix,
    )


def _record(api: kube.Api, settings: Settings, tenant: EtcdStorage, told: list[plan.Event], now: datetime) -> None:
    """The pass's Events on the EtcdStorage; one that cannot be written is a warning, never a failure."""
    for event, error in apply.record(api, events.build(tenant, settings.namespace, told, now)):
        _log(
            logging.WARNING,
            "event not recorded",
            tenant=tenant.name,
            event=event["reason"],
            **_error_fields(error),
            fix=fixes.events_unrecorded(error),
        )


def _error_fields(error: kube.KubeError) -> dict[str, object]:
    if isinstance(error, kube.ApiError):
        return {"status": error.status, "reason": error.reason}
    return {"problem": str(error)}


# --- Logs -------------------------------------------------------------------------------------------------------------


def _log(level: int, message: str, **fields: object) -> None:
    """A fixed message and key=value fields (rendered by `KeyValueFormatter`); values are never key material."""
    log.log(level, message, extra={"fields": {key: value for key, value in fields.items() if value is not None}})


class KeyValueFormatter(logging.Formatter):
    """`time=… level=… msg="…" key=value …`: one line per event, values quoted when they need it."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [f"time={moment}", f"level={record.levelname.lower()}", f"msg={_value(record.getMessage())}"]
        fields = getattr(record, "fields", {})
        parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += " error=" + _value(self.formatException(record.exc_info))
        return line


def _value(value: object) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(item) for item in value)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text and all(c.isalnum() or c in "-_./:,@+" for c in text):
        return text
    return json.dumps(text)


def configure_logging(stream: IO[str]) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


if __name__ == "__main__":
    sys.exit(main())
