"""Fire times across daylight-saving changes (Europe/Paris: 2025-03-30 02:00 → 03:00,
2025-10-26 03:00 → 02:00), as docs/api.md describes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


@pytest.mark.parametrize(
    ("expr", "missed", "latest"),
    [
        ("* * * * * *", timedelta(days=3), datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)),
        ("*/5 * * * *", timedelta(days=3), datetime(2026, 3, 10, 12, 0, tzinfo=UTC)),
        ("0 3 * * *", timedelta(days=30), datetime(2026, 3, 10, 3, 0, tzinfo=UTC)),
        ("0 0 1 1 *", timedelta(days=400), datetime(2026, 1, 1, tzinfo=UTC)),
        ("* * * * *", timedelta(seconds=30), datetime(2026, 3, 10, 12, 0, tzinfo=UTC)),
    ],
)
def test_the_latest_missed_fire_is_found_in_a_few_steps(
    expr: str, missed: timedelta, latest: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen failing for the every-second schedule missed three days: 259,200 calls of
    next_fire (the scheduler stood still 44 s for it)."""
    import shared.schedules as schedules

    calls = 0
    real = schedules.next_fire

    def counted(*args: object) -> datetime:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(schedules, "next_fire", counted)
    now = datetime(2026, 3, 10, 12, 0, 0, 500000, tzinfo=UTC)
    due = latest - missed if latest - missed < now else latest
    due = real(expr, ZoneInfo("UTC"), due - timedelta(seconds=1))  # a fire time itself
    assert schedules.latest_missed_fire(expr, ZoneInfo("UTC"), due, now) == latest
    assert calls < 200, calls
