"""Task modules that report the worker's garbage collector as their tasks see it; this
one leaves the collector as it found it (``--tasks tests.e2e.gc_tasks``)."""

from __future__ import annotations

import gc

from shared.tasks import TaskContext, TaskRegistry

registry = TaskRegistry()


def collector_state() -> dict[str, object]:
    return {
        "threshold": list(gc.get_threshold()),
        "enabled": gc.isenabled(),
        "frozen": gc.get_freeze_count(),
    }


@registry.task("gcprobe.state", cpu_units=0.1, memory_mb=16)
def state(ctx: TaskContext, params: dict[str, object]) -> dict[str, object]:
    return collector_state()
