"""Runs one task attempt on a pool thread and turns the outcome into plain data.

Nothing here touches the broker: the thread reports back to the event loop, which
alone publishes (conventions §5).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

import orjson

from shared.messages import MAX_RESULT_BYTES, safe_text, storable_json, truncate_text
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
    """Call the task; never raises (every failure becomes an Outcome). What it returns
    or raises is made into what every hop can carry (see ``storable_result``)."""
    try:
        result = definition.call(ctx, payload)
    except Cancelled:
        return Outcome(ok=False, error="cancelled", cancelled=True)
    except Exception as exc:
        lines = traceback.format_exc().rstrip().splitlines()
        return Outcome(
            ok=False,
            error=_text(f"{type(exc).__name__}: {_describe(exc)}"),
            traceback=_text("\n".join(lines[-MAX_TRACEBACK_LINES:]), keep="tail"),
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by a task
        return Outcome(
            ok=False, error=_text(f"{type(exc).__name__} raised by the task: {_describe(exc)}")
        )
    return storable_result(result)


def storable_result(result: Any) -> Outcome:
    """The task's return value as plain JSON the report, the scheduler and jsonb take:
    text made safe, anything else it cannot carry (a type JSON lacks, an integer
    beyond 64 bits, NaN, nesting too deep, more than MAX_RESULT_BYTES) fails the
    attempt with an error that says which."""
    try:
        clean = storable_json(result, limit=2**62, what="result", convert=True)
        plain = orjson.loads(orjson.dumps(clean))
    except (TypeError, ValueError) as exc:
        return Outcome(ok=False, error=_text(f"the task's result cannot be stored as JSON: {exc}"))
    size = len(orjson.dumps(plain))
    if size > MAX_RESULT_BYTES:
        return Outcome(
            ok=False,
            error=(
                f"the task's result is {size:,} bytes encoded; the limit is "
                f"{MAX_RESULT_BYTES:,} bytes (return less, or store it elsewhere and "
                "return where)"
            ),
        )
    return Outcome(ok=True, result=plain)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as inner:  # an exception whose __str__ raises
        return f"<unprintable: {type(inner).__name__}>"


def _text(value: str, *, keep: str = "head") -> str:
    return truncate_text(safe_text(value), keep=keep)
