"""Runs one task attempt on a pool thread and turns the outcome into plain data.

Nothing here touches the broker: the thread reports back to the event loop, which
alone publishes (conventions §5).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import orjson

from shared.tasks import Cancelled, TaskContext, TaskDefinition

MAX_TRACEBACK_LINES = 30


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    cancelled: bool = False


def run_task(definition: TaskDefinition, ctx: TaskContext, payload: dict[str, Any]) -> Outcome:
    """Call the task; never raises (every failure becomes an Outcome)."""
    try:
        result = definition.call(ctx, payload)
    except Cancelled:
        return Outcome(ok=False, error="cancelled", cancelled=True)
    except Exception as exc:
        lines = traceback.format_exc().rstrip().splitlines()
        return Outcome(
            ok=False,
            error=f"{type(exc).__name__}: {exc}",
            traceback="\n".join(lines[-MAX_TRACEBACK_LINES:]),
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by a task
        return Outcome(ok=False, error=f"{type(exc).__name__} raised by the task: {exc}")
    try:
        result = orjson.loads(orjson.dumps(result))
    except TypeError as exc:
        return Outcome(
            ok=False,
            error=f"the task returned a value that is not JSON serializable: {exc}",
        )
    return Outcome(ok=True, result=result)
