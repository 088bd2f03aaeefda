"""One exception tree for Switchyard. HTTP codes are chosen only in the API."""

from __future__ import annotations

# The root and the errors the public package raises live there, so one tree spans both.
from switchyard.errors import ApiError, SwitchyardError, TaskDefinitionError

__all__ = [
    "ApiError",
    "BrokerUnavailable",
    "ConfigError",
    "DecodeError",
    "InvalidJobRequest",
    "InvalidTransition",
    "JobConflict",
    "JobNotFound",
    "JobRequestError",
    "PermissionDenied",
    "SearchTooBroad",
    "SwitchyardError",
    "TaskDefinitionError",
    "UnknownDependency",
]


class ConfigError(SwitchyardError):
    """The configuration cannot work (e.g. no API keys outside dev mode)."""


class DecodeError(SwitchyardError):
    """A message body is not a valid Switchyard message."""


class BrokerUnavailable(SwitchyardError):
    """RabbitMQ did not accept or confirm a publish in time."""


class InvalidTransition(SwitchyardError):
    """A job status change that the state machine does not allow."""

    def __init__(self, old: str | None, new: str) -> None:
        super().__init__(f"job status cannot go from {old!r} to {new!r}")
        self.old = old
        self.new = new


class JobRequestError(SwitchyardError):
    """A job submission or action was refused; ``code`` says why."""

    code = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidJobRequest(JobRequestError):
    code = "invalid"


class SearchTooBroad(InvalidJobRequest):
    """A selection with a name prefix that could not be read within
    ``SWITCHYARD_MAX_NAME_SEARCH_SECONDS``: narrower filters are needed."""


class UnknownDependency(JobRequestError):
    code = "unknown_dependency"


class JobNotFound(JobRequestError):
    code = "not_found"


class JobConflict(JobRequestError):
    """The job's current state forbids the action (e.g. cancel a finished job)."""

    code = "conflict"


class PermissionDenied(JobRequestError):
    code = "forbidden"
