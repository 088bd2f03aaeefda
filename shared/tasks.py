"""Moved to :mod:`switchyard.tasks`; this module re-exports it so old imports keep working.

Write ``from switchyard import task, TaskContext, TaskRegistry`` in new code.
"""

from __future__ import annotations

from switchyard.tasks import (
    Cancelled,
    TaskContext,
    TaskDefinition,
    TaskLogger,
    TaskRegistry,
    default_registry,
    load_task_modules,
    task,
)

__all__ = [
    "Cancelled",
    "TaskContext",
    "TaskDefinition",
    "TaskLogger",
    "TaskRegistry",
    "default_registry",
    "load_task_modules",
    "task",
]
