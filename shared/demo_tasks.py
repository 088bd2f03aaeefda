"""The built-in demo tasks (design.md), loaded by every worker unless disabled."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.tasks import TaskContext, TaskRegistry

registry = TaskRegistry()


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SleepParams(_Params):
    seconds: float = Field(ge=0, le=86_400)


class FailParams(_Params):
    fail_times: int = Field(ge=0, le=1000)
    message: str | None = Field(default=None, max_length=1000)


class CpuParams(_Params):
    seconds: float = Field(ge=0, le=3600)


class MeanParams(_Params):
    values: list[float] = Field(max_length=1_000_000)


class LogParams(_Params):
    lines: int = Field(ge=0, le=100_000)
    level: str = Field(default="info", pattern="^(debug|info|warning|error|critical)$")


class ProgressParams(_Params):
    steps: int = Field(ge=1, le=100_000)
    delay_seconds: float = Field(default=0.1, ge=0, le=3600)


@registry.task("demo.echo", cpu_units=0.1, memory_mb=16)
def echo(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload unchanged."""
    return payload


@registry.task("demo.sleep", cpu_units=0.1, memory_mb=16)
def sleep(ctx: TaskContext, params: SleepParams) -> dict[str, float]:
    """Sleep in small steps, stopping early when cancelled."""
    start = time.monotonic()
    deadline = start + params.seconds
    while (left := deadline - time.monotonic()) > 0:
        if ctx.sleep(min(left, 0.05)):
            ctx.log.info("cancelled after %.2f s", time.monotonic() - start)
            break
        ctx.progress(time.monotonic() - start, params.seconds)
    return {"slept": round(time.monotonic() - start, 3)}


@registry.task("demo.fail", cpu_units=0.1, memory_mb=16)
def fail(ctx: TaskContext, params: FailParams) -> dict[str, int]:
    """Raise on attempts 1..fail_times, then succeed."""
    if ctx.attempt <= params.fail_times:
        raise RuntimeError(
            params.message or f"demo.fail: failing attempt {ctx.attempt} of {params.fail_times}"
        )
    return {"attempt": ctx.attempt}


@registry.task("demo.cpu", cpu_units=1, memory_mb=32)
def cpu(ctx: TaskContext, params: CpuParams) -> dict[str, int]:
    """Keep one core busy for ``seconds``."""
    deadline = time.monotonic() + params.seconds
    spins = 0
    while time.monotonic() < deadline and not ctx.is_cancelled:
        for _ in range(10_000):
            spins += 1
    return {"spins": spins}


@registry.task("demo.mean", cpu_units=0.1, memory_mb=64)
def mean(ctx: TaskContext, params: MeanParams) -> dict[str, float]:
    """Return the mean of ``values`` as a prediction."""
    if not params.values:
        raise ValueError("values is empty: the mean of no numbers is undefined")
    return {"prediction": sum(params.values) / len(params.values)}


@registry.task("demo.log", cpu_units=0.1, memory_mb=16)
def log_lines(ctx: TaskContext, params: LogParams) -> dict[str, int]:
    """Emit ``lines`` log lines at ``level``."""
    emit = getattr(ctx.log, params.level)
    for i in range(params.lines):
        emit("line %d of %d", i + 1, params.lines)
    return {"lines": params.lines}


@registry.task("demo.progress", cpu_units=0.1, memory_mb=16)
def progress(ctx: TaskContext, params: ProgressParams) -> dict[str, int]:
    """Report progress step by step."""
    for step in range(1, params.steps + 1):
        if ctx.sleep(params.delay_seconds):
            break
        ctx.log.info("step %d of %d", step, params.steps)
        ctx.progress(step, params.steps, f"step {step} of {params.steps}")
    return {"steps": params.steps}
