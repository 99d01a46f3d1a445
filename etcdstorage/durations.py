"""Go duration strings (`730h`, `1h30m`, `90s`), parsed exactly as Go's `time.ParseDuration` accepts them.

The spec's validity fields are Go durations (`metav1.Duration` in the original). Pure.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Final

_UNIT_NANOSECONDS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_MAX_NANOSECONDS: Final = 2**63 - 1


class DurationError(ValueError):
    """Not a Go duration."""


def parse(text: str) -> timedelta:
    """Parse a Go duration; raises `DurationError` with the reason for anything Go would refuse.

    Python's timedelta keeps microseconds: compare with `parse_nanoseconds` where the CRD's CEL rules compare
    (in nanoseconds), so that the hook and admission agree to the last digit.
    """
    return to_timedelta(parse_nanoseconds(text))


def to_timedelta(nanoseconds: int) -> timedelta:
    microseconds = abs(nanoseconds) // 1_000
    return timedelta(microseconds=-microseconds if nanoseconds < 0 else microseconds)


def parse_nanoseconds(text: str) -> int:
    """A Go duration in nanoseconds, exactly as Go's time.ParseDuration reads it."""
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string such as '730h', got {type(text).__name__}")
    body = text
    negative = body.startswith("-")
    if body[:1] in "+-":
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise DurationError(f"invalid duration {text!r}: expected a number with a unit such as '730h'")
    total = Decimal(0)
    position = 0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None or match.group(1) in ("", "."):
            raise DurationError(
                f"invalid duration {text!r}: expected numbers with units ns, us, ms, s, m or h, "
                "such as '730h' or '1h30m'"
            )
        total += Decimal(match.group(1)) * _UNIT_NANOSECONDS[match.group(2)]
        position = match.end()
    nanoseconds = int(total)
    if nanoseconds > _MAX_NANOSECONDS:
        raise DurationError(f"invalid duration {text!r}: longer than Go's limit of about 292 years")
    return -nanoseconds if negative else nanoseconds


def format(value: timedelta) -> str:  # noqa: A001 - mirrors Go's Duration.String for the values we print
    """A compact Go duration string (`730h0m0s` → `730h`), for messages."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return sign + (text or "0s")
