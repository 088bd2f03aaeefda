"""An attempt's progress is thinned where the task reports it: the first update at
once, a final one always, at most one per interval between, the latest held for the
attempt's end (services/worker/progress.py)."""

from __future__ import annotations

from services.worker.progress import ProgressThrottle, is_final


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_at_once_then_one_per_interval_the_latest_held_between() -> None:
    clock = Clock()
    throttle = ProgressThrottle(0.2, clock)
    assert throttle.offer(1, 10, "one") == (1, 10, "one")
    clock.now = 100.05
    assert throttle.offer(2, 10, None) is None
    clock.now = 100.1
    assert throttle.offer(3, 10, "three") is None  # replaces 2 as the held one
    clock.now = 100.25  # past the interval since the last sent: due, nothing stays held
    assert throttle.offer(4, 10, None) == (4, 10, None)
    assert throttle.take_held() is None
    clock.now = 100.3
    assert throttle.offer(5, 10, None) is None
    assert throttle.take_held() == (5, 10, None)
    assert throttle.take_held() is None  # once


def test_a_final_update_is_never_held_and_clears_the_held_one() -> None:
    clock = Clock()
    throttle = ProgressThrottle(0.2, clock)
    assert throttle.offer(1, 3, None) is not None
    assert throttle.offer(2, 3, None) is None
    assert throttle.offer(3, 3, "done") == (3, 3, "done")
    assert throttle.take_held() is None
    assert throttle.offer(4, 3, None) == (4, 3, None)  # past the total: final too


def test_figures_that_do_not_compare_are_no_final_and_never_raise() -> None:
    class Ambiguous:
        def __ge__(self, other: object) -> bool:
            raise ValueError("the truth value of an array is ambiguous")

    assert not is_final(Ambiguous(), 1)
    assert not is_final("half", 2)
    assert not is_final(1, None)
    assert is_final(2.0, 2)
    throttle = ProgressThrottle(0.2, Clock())
    assert throttle.offer(Ambiguous(), 1, None) is not None  # type: ignore[arg-type]
    assert throttle.offer("half", 2, None) is None  # type: ignore[arg-type]
