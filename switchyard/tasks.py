"""The ``@task`` decorator, the task registry, and the context a running task gets.

A task module::

    from pydantic import BaseModel
    from switchyard import TaskContext, task

    class Resize(BaseModel):
        url: str
        width: int

    @task("images.resize", cpu_units=1, memory_mb=512, timeout_seconds=60)
    def resize(ctx: TaskContext, params: Resize) -> dict:
        ctx.log.info("resizing %s", params.url)
        ...

Duplicate names, unknown roles and bad defaults fail at import time.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import BaseModel, ValidationError

from switchyard.errors import TaskDefinitionError
from switchyard.models import ROLES, Resources, RetryPolicy

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$")

#: Where a worker runs an attempt: on one of its threads (cheap, shares the GIL and the
#: worker's memory), or in a warm child process it can kill (hard timeout, memory limit,
#: a core of its own). docs/isolation.md says when to choose which.
Isolation = Literal["thread", "process"]
ISOLATIONS: tuple[str, ...] = get_args(Isolation)


class Cancelled(Exception):
    """Raised by :meth:`TaskContext.check_cancelled` once the attempt is cancelled."""


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    func: Callable[..., Any]
    params: type[BaseModel] | None
    resources: Resources
    timeout_seconds: float | None
    retry: RetryPolicy
    roles: frozenset[str]
    description: str = ""
    isolation: Isolation = "thread"

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the payload (what the API validates submissions against)."""
        if self.params is None:
            return {"type": "object"}
        return self.params.model_json_schema()

    def parse_payload(self, payload: dict[str, Any]) -> Any:
        """The value handed to the function: the params model, or the dict itself."""
        if self.params is None:
            return payload
        return self.params.model_validate(payload)

    def call(self, ctx: TaskContext, payload: dict[str, Any]) -> Any:
        return self.func(ctx, self.parse_payload(payload))


def _params_from_signature(func: Callable[..., Any]) -> type[BaseModel] | None:
    """Use the annotation of the second parameter when it is a pydantic model."""
    parameters = list(inspect.signature(func).parameters.values())
    if len(parameters) < 2:
        raise TaskDefinitionError(
            f"{func.__qualname__} must take (ctx, payload): a TaskContext and the payload"
        )
    hint = parameters[1].annotation
    if isinstance(hint, str):  # postponed annotations: resolve only this one
        try:
            hint = eval(hint, getattr(func, "__globals__", {}))
        except Exception as exc:
            raise TaskDefinitionError(
                f"{func.__qualname__}: cannot resolve the payload annotation {hint!r} ({exc}); "
                "pass params=Model to @task"
            ) from exc
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


class TaskRegistry:
    """Task definitions by name. The worker is given one; the API reads what workers announce."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDefinition] = {}

    def task(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        cpu_units: float = 1.0,
        memory_mb: int = 128,
        timeout_seconds: float | None = None,
        max_attempts: int = 3,
        initial_delay_seconds: float = 1.0,
        backoff_multiplier: float = 2.0,
        max_delay_seconds: float = 300.0,
        roles: set[str] | frozenset[str] | None = None,
        description: str | None = None,
        isolation: Isolation = "thread",
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as task ``name`` (defaults apply per job)."""

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            model = params if params is not None else _params_from_signature(func)
            try:
                resources = Resources(cpu_units=cpu_units, memory_mb=memory_mb)
                retry = RetryPolicy(
                    max_attempts=max_attempts,
                    initial_delay_seconds=initial_delay_seconds,
                    backoff_multiplier=backoff_multiplier,
                    max_delay_seconds=max_delay_seconds,
                )
            except ValidationError as exc:
                raise TaskDefinitionError(f"task {name!r}: {exc}") from exc
            if timeout_seconds is not None and timeout_seconds <= 0:
                raise TaskDefinitionError(f"task {name!r}: timeout_seconds must be > 0")
            if isolation not in ISOLATIONS:
                raise TaskDefinitionError(
                    f"task {name!r}: isolation {isolation!r} is not one of "
                    + ", ".join(repr(i) for i in ISOLATIONS)
                )
            self.register(
                TaskDefinition(
                    name=name,
                    func=func,
                    params=model,
                    resources=resources,
                    timeout_seconds=timeout_seconds,
                    retry=retry,
                    roles=frozenset(roles or ()),
                    description=description or (inspect.getdoc(func) or "").split("\n")[0],
                    isolation=isolation,
                )
            )
            return func

        return decorate

    def register(self, definition: TaskDefinition) -> None:
        if not _NAME.match(definition.name):
            raise TaskDefinitionError(
                f"task name {definition.name!r}: use letters, digits, '.', '_', ':' or '-'"
            )
        unknown = definition.roles - set(ROLES)
        if unknown:
            raise TaskDefinitionError(
                f"task {definition.name!r}: unknown role(s) {sorted(unknown)}; "
                f"roles are {', '.join(ROLES)}"
            )
        existing = self._tasks.get(definition.name)
        if existing is not None and existing.func is not definition.func:
            raise TaskDefinitionError(f"task {definition.name!r} is already registered")
        self._tasks[definition.name] = definition

    def include(self, other: TaskRegistry) -> None:
        for definition in other:
            self.register(definition)

    def __getitem__(self, name: str) -> TaskDefinition:
        return self._tasks[name]

    def get(self, name: str) -> TaskDefinition | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDefinition]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks)


#: The registry ``@task`` (module-level) registers into.
default_registry = TaskRegistry()
task = default_registry.task


def load_task_modules(modules: list[str], registry: TaskRegistry) -> None:
    """Import each module; tasks it registers in ``default_registry`` or in a module-level
    ``registry`` object are added to ``registry``."""
    for module_name in modules:
        module = importlib.import_module(module_name)
        own = getattr(module, "registry", None)
        if isinstance(own, TaskRegistry) and own is not registry:
            registry.include(own)
    if default_registry is not registry:
        registry.include(default_registry)


class TaskLogger:
    """What ``ctx.log`` is: the logging.Logger methods, each line sent as ``job.logs``.

    Lines are numbered per attempt (``seq``) so readers keep their order. Safe to call
    from any thread of the task.
    """

    LEVELS = ("debug", "info", "warning", "error", "critical")

    def __init__(self, emit: Callable[[int, str, str], None]) -> None:
        self._emit = emit
        self._seq = itertools.count(1)

    def log(self, level: str, msg: object, *args: object, exc_info: bool = False) -> None:
        level = level.lower()
        if level not in self.LEVELS:
            raise ValueError(f"unknown log level {level!r}; use one of {', '.join(self.LEVELS)}")
        text = _line(msg, args)
        if exc_info:
            text = f"{text}\n{traceback.format_exc().rstrip()}"
        self._emit(next(self._seq), level, text)

    def debug(self, msg: object, *args: object) -> None:
        self.log("debug", msg, *args)

    def info(self, msg: object, *args: object) -> None:
        self.log("info", msg, *args)

    def warning(self, msg: object, *args: object) -> None:
        self.log("warning", msg, *args)

    warn = warning

    def error(self, msg: object, *args: object) -> None:
        self.log("error", msg, *args)

    def exception(self, msg: object, *args: object) -> None:
        self.log("error", msg, *args, exc_info=True)

    def critical(self, msg: object, *args: object) -> None:
        self.log("critical", msg, *args)


def _line(msg: object, args: tuple[object, ...]) -> str:
    """``msg % args``, as the logging module writes it; a line that cannot be formatted
    is still written, saying why, and the task goes on (as logging does: a bad format
    once failed the attempt)."""
    try:
        return str(msg) % args if args else str(msg)
    except Exception as exc:
        try:
            text = str(msg)
        except Exception:
            text = f"<{type(msg).__name__} that cannot be printed>"
        return f"{text} [not formatted with its {len(args)} argument(s): {type(exc).__name__}]"


def _discard(seq: int, level: str, message: str) -> None:
    """Default log sink when a context is built outside a worker (tests, scripts)."""


@dataclass
class TaskContext:
    """What a task function receives first. Safe to use from the task's thread.

    ``log`` lines become ``job.logs`` messages; ``progress()`` becomes
    ``job.progress`` (throttled by the worker); ``cancelled`` is set when the
    attempt is cancelled or times out, and a task should stop soon after.
    """

    job_id: UUID
    attempt: int
    log: TaskLogger = field(default_factory=lambda: TaskLogger(_discard))
    cancelled: threading.Event = field(default_factory=threading.Event)
    _report_progress: Callable[[float, float | None, str | None], None] | None = None

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"job {self.job_id} attempt {self.attempt} was cancelled")

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True early if cancelled meanwhile."""
        return self.cancelled.wait(seconds)

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self._report_progress is not None:
            self._report_progress(done, total, message)
