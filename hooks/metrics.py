"""Per-EtcdStorage gauges, set from what each answered sync observed: certificate times and the Ready condition.

Named as cert-manager names its own, so that a cert-manager user's alerts carry over. A series goes when its
EtcdStorage is finalized, or when no sync refreshed it for `EXPIRY_INTERVALS` resync intervals: without a finalize
hook Metacontroller calls nothing when an EtcdStorage is deleted, so silence is how a gone object shows. With several
hook replicas each exports the objects it last answered; `etcdstorage_sync_timestamp_seconds` says whose is newest
(manifests/examples/prometheusrule.yaml joins on it). Never raises on odd status values: they are left out.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Gauge

from etcdstorage import names
from etcdstorage.times import parse_rfc3339
from hooks import status

EXPIRY_INTERVALS: Final = 3  # resync intervals without a sync before an object's series go
# Metacontroller relists (and so syncs) every parent at least this often (its --cache-flush-interval default), when
# neither the CompositeController's resyncPeriodSeconds nor the answer's resyncAfterSeconds asks for sooner.
FALLBACK_INTERVAL_SECONDS: Final = 1800.0
CONDITION_VALUES: Final = ("True", "False", "Unknown")  # as cert-manager's certmanager_certificate_ready_status
_TIMES: Final = {"notAfter": "not_after", "notBefore": "not_before", "renewalTime": "renewal"}


@dataclasses.dataclass
class _Series:
    certificates: frozenset[str]
    expires: float  # seconds since the epoch


class TenantMetrics:
    """The gauges, and which EtcdStorage holds which series until when. Thread-safe: syncs run in worker threads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.times = {
            field: Gauge(
                f"etcdstorage_certificate_{metric}_timestamp_seconds",
                f"The {field} time of an EtcdStorage's certificate, as its last sync observed in the job's report.",
                ["etcdstorage", "certificate"],
                registry=registry,
            )
            for field, metric in _TIMES.items()
        }
        self.ready = Gauge(
            "etcdstorage_ready_status",
            "The Ready condition of an EtcdStorage: 1 for its current status (condition True, False or Unknown).",
            ["etcdstorage", "condition"],
            registry=registry,
        )
        self.synced = Gauge(
            "etcdstorage_sync_timestamp_seconds",
            "When this hook replica last answered a sync of the EtcdStorage; of several replicas, the newest counts.",
            ["etcdstorage"],
            registry=registry,
        )
        self.job_last_run = Gauge(
            "etcdstorage_job_last_run_timestamp_seconds",
            "When the cert-rotation job last finished a pass (its record etcdstorage-cert-rotation-status).",
            registry=registry,
        )
        self.job_last_success = Gauge(
            "etcdstorage_job_last_success_timestamp_seconds",
            "When the cert-rotation job last finished a pass with exit code 0: every EtcdStorage done.",
            registry=registry,
        )
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def record(self, name: str, current: Mapping[str, Any], now: datetime, interval: float) -> None:
        """Set `name`'s series from the status just answered; they expire `EXPIRY_INTERVALS` times `interval`
        seconds from `now` unless a sync refreshes them."""
        certificates = _certificate_times(current.get("certificates"))
        ready = status.ready_condition(current).get("status")
        with self._lock:
            self._drop_certificates(name, keep=frozenset(certificates))
            for certificate, times in certificates.items():
                for field, value in times.items():
                    self.times[field].labels(name, certificate).set(value)
            for condition in CONDITION_VALUES:
                holds = condition == ready or (condition == "Unknown" and ready not in CONDITION_VALUES)
                self.ready.labels(name, condition).set(1 if holds else 0)
            self.synced.labels(name).set(now.timestamp())
            self._series[name] = _Series(frozenset(certificates), now.timestamp() + EXPIRY_INTERVALS * interval)

    def job_runs(self, record: object) -> None:
        """The job's run times from its record ConfigMap, as a sync saw it (left as they were when it is absent, or a
        time does not parse)."""
        data = record.get("data") if isinstance(record, Mapping) else None
        if not isinstance(data, Mapping):
            return
        for key, gauge in (
            (names.JOB_LAST_RUN_KEY, self.job_last_run),
            (names.JOB_LAST_SUCCESS_KEY, self.job_last_success),
        ):
            when = parse_rfc3339(data.get(key))
            if when is not None:
                gauge.set(when.timestamp())

    def forget(self, name: str) -> None:
        """Remove every series of `name` (finalized: the object is going)."""
        with self._lock:
            self._forget(name)

    def expire(self, now: datetime) -> None:
        """Remove the series of every object no sync refreshed in time."""
        with self._lock:
            for name in [name for name, series in self._series.items() if series.expires <= now.timestamp()]:
                self._forget(name)

    def _forget(self, name: str) -> None:
        if name not in self._series:
            return
        self._drop_certificates(name, keep=frozenset())
        for value in CONDITION_VALUES:
            self.ready.remove(name, value)
        self.synced.remove(name)
        del self._series[name]

    def _drop_certificates(self, name: str, keep: frozenset[str]) -> None:
        held = self._series[name].certificates if name in self._series else frozenset()
        for certificate in held - keep:
            for gauge in self.times.values():
                gauge.remove(name, certificate)


def label(name: object) -> str | None:
    """The `etcdstorage` label for a parent's name, or None for a value no Kubernetes object name can be (the hook
    exports nothing for it, so that a request cannot grow the label set without bound)."""
    return name if isinstance(name, str) and 0 < len(name) <= names.MAX_DNS_SUBDOMAIN else None


def interval(controller: Mapping[str, Any], resync_after: float) -> float:
    """The longest Metacontroller waits before the next sync of an object: the CompositeController's
    resyncPeriodSeconds and the answer's resyncAfterSeconds, whichever is sooner."""
    spec = controller.get("spec")
    period = spec.get("resyncPeriodSeconds") if isinstance(spec, Mapping) else None
    candidates = [resync_after] if resync_after > 0 else []
    if isinstance(period, int | float) and not isinstance(period, bool) and period > 0:
        candidates.append(max(1.0, float(period)))  # Metacontroller clamps it to at least a second
    return min(candidates, default=FALLBACK_INTERVAL_SECONDS)


def _certificate_times(certificates: object) -> dict[str, dict[str, float]]:
    """`status.certificates` as seconds since the epoch; certificates or times that do not read are left out."""
    result: dict[str, dict[str, float]] = {}
    for certificate, times in certificates.items() if isinstance(certificates, Mapping) else ():
        if not isinstance(certificate, str) or not isinstance(times, Mapping):
            continue
        read = {field: _timestamp(times.get(field)) for field in _TIMES}
        result[certificate] = {field: value for field, value in read.items() if value is not None}
    return result


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
