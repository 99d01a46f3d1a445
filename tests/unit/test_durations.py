"""Go duration strings, as Go's time.ParseDuration reads them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from etcdstorage import durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("730h", timedelta(hours=730)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("10m", timedelta(minutes=10)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        (".5s", timedelta(milliseconds=500)),
        ("1h0m0s", timedelta(hours=1)),
        ("300ms", timedelta(milliseconds=300)),
        ("2us", timedelta(microseconds=2)),
        ("2µs", timedelta(microseconds=2)),
        ("0", timedelta(0)),
        ("-1h", timedelta(hours=-1)),
        ("+5m", timedelta(minutes=5)),
    ],
    ids=str,
)
def test_go_durations_parse_to_the_same_length_as_in_go(text: str, expected: timedelta) -> None:
    assert durations.parse(text) == expected


@pytest.mark.parametrize("text", ["", "h", "10", "10 m", "1d", "abc", "1h 30m", ".h", "-", "1e3s", "10M"])
def test_strings_go_refuses_are_refused_with_an_example_of_the_right_form(text: str) -> None:
    with pytest.raises(durations.DurationError, match="730h"):
        durations.parse(text)


def test_a_duration_beyond_gos_int64_limit_is_refused() -> None:
    with pytest.raises(durations.DurationError, match="292 years"):
        durations.parse("2562048h")


def test_a_non_string_is_refused_naming_its_type() -> None:
    with pytest.raises(durations.DurationError, match="got int"):
        durations.parse(730)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=730), "730h"),
        (timedelta(minutes=10), "10m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(0), "0s"),
    ],
)
def test_durations_print_in_the_short_go_form(value: timedelta, text: str) -> None:
    assert durations.format(value) == text
    assert durations.parse(text) == value
