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
