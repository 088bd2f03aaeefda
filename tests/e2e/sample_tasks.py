"""A user's task module, loaded by a worker with ``--tasks tests.e2e.sample_tasks``."""

from __future__ import annotations

from pydantic import BaseModel

from shared.tasks import TaskContext, TaskRegistry

registry = TaskRegistry()


class Greeting(BaseModel):
    name: str
    times: int = 1


@registry.task("sample.greet", cpu_units=0.5, memory_mb=64, timeout_seconds=10)
def greet(ctx: TaskContext, params: Greeting) -> dict[str, str]:
    """Say hello ``times`` times."""
    for i in range(params.times):
        ctx.log.info("hello %s (%d)", params.name, i + 1)
        ctx.progress(i + 1, params.times)
    return {"greeting": f"hello {params.name}"}


class Size(BaseModel):
    chars: int


# What os.listdir returns for a file name that is not valid UTF-8 (surrogateescape).
UNDECODABLE_NAME = b"report-\xff.txt".decode("utf-8", "surrogateescape")


@registry.task("sample.bad_text", max_attempts=1)
def bad_text(ctx: TaskContext, payload: dict[str, object]) -> None:
    """Logs and raises text no UTF-8 encoder takes (lone surrogates)."""
    ctx.log.info("opening %s", UNDECODABLE_NAME)
    raise OSError(f"cannot open {UNDECODABLE_NAME}")


@registry.task("sample.big_result", max_attempts=1)
def big_result(ctx: TaskContext, params: Size) -> str:
    """Returns a string of ``chars`` characters."""
    return "x" * params.chars


class Count(BaseModel):
    count: int


@registry.task("sample.many_zeros", max_attempts=1)
def many_zeros(ctx: TaskContext, params: Count) -> list[int]:
    """Returns ``count`` zeros: two bytes each encoded ("0,")."""
    return [0] * params.count
