"""Fire times across daylight-saving changes (Europe/Paris: 2025-03-30 02:00 → 03:00,
2025-10-26 03:00 → 02:00), as docs/api.md describes them."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shared.errors import InvalidJobRequest
from shared.schedules import next_fire, parse_cron

PARIS = ZoneInfo("Europe/Paris")


def fires(expr: str, start: str, count: int) -> list[str]:
    """The next ``count`` fire times after ``start`` (UTC), as Paris wall-clock times."""
    at = datetime.fromisoformat(start).astimezone(UTC)
    out = []
    for _ in range(count):
        at = next_fire(expr, PARIS, at)
        out.append(at.astimezone(PARIS).isoformat())
    return out


def test_a_fixed_time_repeated_by_the_autumn_change_fires_once() -> None:
    assert fires("30 2 * * *", "2025-10-25T12:00:00+00:00", 3) == [
        "2025-10-26T02:30:00+02:00",  # its first occurrence (summer time)
        "2025-10-27T02:30:00+01:00",  # not 2025-10-26T02:30:00+01:00 an hour later
        "2025-10-28T02:30:00+01:00",
    ]
    # Asked between the two 02:30s (e.g. the scheduler's "after now"): the next is tomorrow.
    assert fires("30 2 * * *", "2025-10-26T02:45:00+02:00", 1) == ["2025-10-27T02:30:00+01:00"]
    # Every fixed time in the repeated hour, seconds field too.
    assert fires("15,45 2 * * *", "2025-10-25T12:00:00+00:00", 3) == [
        "2025-10-26T02:15:00+02:00",
        "2025-10-26T02:45:00+02:00",
        "2025-10-27T02:15:00+01:00",
    ]


def test_a_fixed_time_skipped_by_the_spring_change_fires_once_right_after_the_gap() -> None:
    assert fires("30 2 * * *", "2025-03-29T12:00:00+00:00", 2) == [
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # Every hour keeps running every (real) hour, through both passes of 02:00.
        (
            "0 * * * *",
            "2025-10-26T00:45:00+02:00",
            ["01:00:00+02:00", "02:00:00+02:00", "02:00:00+01:00", "03:00:00+01:00"],
        ),
        (
            "*/30 * * * *",
            "2025-10-26T01:15:00+02:00",
            ["01:30:00+02:00", "02:00:00+02:00", "02:30:00+02:00", "02:00:00+01:00"],
        ),
    ],
)
def test_wildcard_hours_follow_real_time_through_the_autumn_change(
    expr: str, start: str, expected: list[str]
) -> None:
    assert [t.split("T")[1] for t in fires(expr, start, 4)] == expected


def test_wildcard_hours_skip_the_hour_that_does_not_exist() -> None:
    assert fires("0 * * * *", "2025-03-30T00:30:00+01:00", 3) == [
        "2025-03-30T01:00:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-30T04:00:00+02:00",
    ]


@pytest.mark.parametrize("expr", ["0 0 30 2 *", "0 0 31 4,6 *", "0 0 31 11 *"])
def test_a_cron_that_never_fires_is_refused(expr: str) -> None:
    with pytest.raises(InvalidJobRequest, match="never fires"):
        parse_cron(expr, "UTC")


def test_a_cron_that_fires_rarely_is_accepted() -> None:
    parse_cron("0 0 29 2 *", "Europe/Paris")  # leap days only
