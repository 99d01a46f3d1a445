"""Times as Kubernetes writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime) -> str:
    """UTC, whole seconds, `Z`: the form Kubernetes uses for times (and the original's expiry annotation).

    Four-digit years always: glibc's strftime writes year 1 as `1`, which is not RFC 3339.
    """
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"


def parse_rfc3339(value: object) -> datetime | None:
    """The time `rfc3339` wrote, None for anything else (not a string, or not that form)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
