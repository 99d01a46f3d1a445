"""The finalize answer for an EtcdStorage with deletionPolicy Delete: its keys go before it does.

Metacontroller calls the finalize hook (the sync URL, `finalizing: true`) while the object carries its finalizer, and
removes the finalizer on `finalized: true`. Here the answer names no child, so Metacontroller deletes the proxies and
the tenant writes nothing more, and says `finalized` only once the cert-rotation job has reported, on `<N>-ca-cert`,
a deletion for this very object (its uid) that counted no key left. Until then the status says what is happening, and
why when the job fails (an unusable core etcd certificate, an unreachable core etcd), with the fix. Pure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from etcdstorage import annotated, deletion, names
from etcdstorage.settings import Settings
from etcdstorage.spec import EtcdStorage
from etcdstorage.times import rfc3339
from hooks import status
from hooks.wire import SyncResponse

DELETING_KEYS: Final = "DeletingKeys"
KEY_DELETION_FAILED: Final = "KeyDeletionFailed"


def answer(
    tenant: EtcdStorage, report_configmap: dict[str, Any] | None, settings: Settings, *, previous: Any, now: datetime
) -> SyncResponse:
    prefix = names.key_prefix(tenant.name, settings.key_prefix_root)
    job = f"the cert-rotation job (CronJob {settings.namespace}/etcdstorage-cert-rotation)"
    metadata = (report_configmap or {}).get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    try:
        attempt = deletion.from_annotations(annotations or {})
    except annotated.AnnotationError as error:
        attempt, unreadable = None, str(error)
    else:
        unreadable = ""
    if attempt is not None and attempt.uid != tenant.uid:
        attempt = None  # an earlier EtcdStorage of the same name's deletion: not this one's
    if attempt is not None and attempt.complete:
        return SyncResponse(status=previous if isinstance(previous, dict) else {}, children=[], finalized=True)

    remaining = attempt.remaining if attempt is not None else None
    if attempt is not None and attempt.problem:
        reason = KEY_DELETION_FAILED
        message = (
            f"deleting the keys under {prefix} failed at {rfc3339(attempt.time)}: {attempt.problem}; check that the "
            f"core etcd at ETCDSTORAGE_CORE_ETCD_URLS answers and accepts the client certificate in "
            f"{settings.namespace}/{settings.core_cert_secret}; {job} tries again every run; to keep the keys "
            "instead, set spec.deletionPolicy to Retain"
        )
    elif unreadable:
        reason, message = KEY_DELETION_FAILED, f"{unreadable}; {job} writes it again on its next run"
    elif attempt is not None:
        reason = DELETING_KEYS
        message = f"deleting the keys under {prefix}: {remaining} left at {rfc3339(attempt.time)}"
    else:
        reason, message = DELETING_KEYS, f"waiting for {job} to delete the keys under {prefix}"
    return SyncResponse(
        status=status.going(
            reason, message, previous=previous, now=now, remaining=remaining, generation=tenant.generation
        ),
        children=[],
        resyncAfterSeconds=float(settings.waiting_resync_seconds),
        finalized=False,
    )
