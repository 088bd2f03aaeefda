"""What a task gives back runs the task's own code when it is read (a result's
comparisons or items(), an exception's __str__): whatever that code does, the attempt
ends with an outcome, so it is reported (found by a helper acting as a hostile task:
each case below left its job running for ever, cancel included, its slot held)."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

import pytest

from services.worker.attempt import thread_outcome
from services.worker.runner import Outcome, run_task
from switchyard import TaskContext, TaskRegistry

registry = TaskRegistry()


class EvilInt(int):
    def __ge__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    def __le__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")


class EvilDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise RuntimeError("no items")


def _raising_str(kind: type[BaseException]) -> BaseException:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise kind()

    return Unprintable()


@registry.task("hostile.output")
def hostile(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    match payload["kind"]:
        case "evil_int":
            return {"x": EvilInt(5)}
        case "evil_dict":
            return EvilDict(a=1)
        case "str_exits":
            raise _raising_str(SystemExit)
        case "str_interrupts":
            raise _raising_str(KeyboardInterrupt)
        case "str_raises":
            raise _raising_str(ValueError)
    return None


@pytest.mark.parametrize("kind", ["evil_int", "evil_dict", "str_exits", "str_interrupts",
                                  "str_raises"])  # fmt: skip
def test_every_hostile_output_fails_the_attempt_with_an_error(kind: str) -> None:
    """Seen failing: RuntimeError, SystemExit and KeyboardInterrupt escaped run_task."""
    ctx = TaskContext(job_id=uuid.uuid4(), attempt=1)
    outcome = run_task(registry["hostile.output"], ctx, {"kind": kind})
    assert outcome.ok is False and outcome.error, outcome


def test_a_thread_that_raised_is_a_failed_attempt_not_a_silent_one() -> None:
    """The worker's done-callback called f.result(), which re-raises: the attempt was
    never reported. (A helper function new with the fix: this test has no 'before'.)"""
    future: Future[Outcome | None] = Future()
    future.set_exception(RuntimeError("a bug in the worker"))
    outcome = thread_outcome(future)
    assert outcome is not None and outcome.ok is False
    assert outcome.error == "the worker could not run the task: RuntimeError"
    done: Future[Outcome | None] = Future()
    done.set_result(Outcome(ok=True, result=1))
    assert thread_outcome(done) == Outcome(ok=True, result=1)
