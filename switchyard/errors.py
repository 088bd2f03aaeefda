"""The root of Switchyard's exception tree and the errors the public package raises.

The server's errors (``shared/errors.py``) subclass :class:`SwitchyardError` from here,
so one ``except SwitchyardError`` catches both.
"""

from __future__ import annotations

from typing import Any


class SwitchyardError(Exception):
    """Root of every error Switchyard raises on purpose."""


class TaskDefinitionError(SwitchyardError):
    """A @task declaration is wrong (duplicate name, unknown option...)."""


class ApiError(SwitchyardError):
    """The API refused a request; ``status`` and ``detail`` are what it said."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
