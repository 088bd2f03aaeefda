"""What the long scenario scripts (``make test-compose``, ``make test-hosts``) share:
a failure type, checks, waiting on a condition with a deadline, and how they end."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Failed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    """``probe()`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def finish(say: Callable[[str], None], main: Callable[[], int]) -> None:
    """Run a scenario's ``main`` as the script: a Failed check is said and exits 1."""
    try:
        sys.exit(main())
    except Failed as exc:
        say(f"FAILED: {exc}")
        sys.exit(1)


def passed(say: Callable[[str], None], figures: dict[str, Any]) -> int:
    """Say the scenario passed and print what it measured (JSON); the exit code."""
    say("PASSED; figures:")
    print(json.dumps(figures, indent=2))
    return 0
