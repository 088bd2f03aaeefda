"""A task module that sets the collector's thresholds when imported, as a user tuning
their own workload might (``--tasks tests.e2e.gc_tasks_own_thresholds``)."""

from __future__ import annotations

import gc

from shared.tasks import TaskContext, TaskRegistry
from tests.e2e.gc_tasks import collector_state

gc.set_threshold(1234, 7, 7)

registry = TaskRegistry()


@registry.task("gcprobe.own_state", cpu_units=0.1, memory_mb=16)
def own_state(ctx: TaskContext, params: dict[str, object]) -> dict[str, object]:
    return collector_state()
