"""Switchyard's public package: write tasks and talk to the API.

    from switchyard import Client, TaskContext, task

The names in ``__all__`` are the public, stable surface; every other module (here and in
``shared`` / ``services``) may change between releases. Nothing here imports the server,
so an SDK user needs no database, broker or server settings.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from switchyard.client import AsyncClient, Client
from switchyard.errors import ApiError
from switchyard.states import JobStatus
from switchyard.tasks import TaskContext, TaskRegistry, task

try:
    __version__ = version("switchyard")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "JobStatus",
    "TaskContext",
    "TaskRegistry",
    "task",
]
