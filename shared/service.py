"""What every service's ``main`` shares: logging, settings, signals, one asyncio run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from shared import health
from shared.errors import ConfigError, SwitchyardError
from shared.settings import Settings, get_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (every service's loop is busy with
    small socket writes: uvloop makes each one cheaper; see docs/performance-history.md)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# The collector's thresholds as this interpreter started, before any task module ran.
_STARTING_THRESHOLDS = gc.get_threshold()


def tune_gc(*, keep_user_thresholds: bool = False) -> None:
    """Cheaper cyclic garbage collection for a long-running service (call once started).

    What exists now (modules, settings, compiled validators and queries) is frozen out
    of every later collection, and the youngest generation is collected every 20,000
    allocations instead of 700. Requests and cycles allocate many short-lived objects
    that reference counting frees anyway; with the defaults a 2,000-job batch set off
    several full collections that walked every object of the process.

    ``keep_user_thresholds``: a worker's heap is its tasks' too, so where its task
    modules set the collector's thresholds or disabled it, theirs stay (the startup
    objects are frozen either way)."""
    gc.collect()
    gc.freeze()
    user_set = not gc.isenabled() or gc.get_threshold() != _STARTING_THRESHOLDS
    if not (keep_user_thresholds and user_set):
        gc.set_threshold(20_000, 10, 10)


# Which Settings fields a service's --help lists beside the common ones. A field named
# in no set here is listed by every service (a new field shows up everywhere until it is
# placed, never nowhere); the CLI's and the SDK's own fields are listed by none.
SERVICE_FIELDS: dict[str, frozenset[str]] = {
    "api": frozenset(
        {"api_host", "api_port", "api_keys", "api_keys_set", "dev", "max_body_bytes"}
        | {"worker_lease_seconds", "demo_tasks", "metrics_require_key"}
        | {"key_refused_cache_seconds", "audit_unauthenticated_rows_per_minute"}
        | {"audit_detail_max_chars", "max_payload_bytes", "max_json_depth"}
        | {"max_dependencies", "max_batch_jobs", "max_name_search_seconds"}
    ),
    "scheduler": frozenset(
        {"scheduler_tick_seconds", "scheduler_batch_size", "monitoring_seconds"}
        | {"event_linger_seconds", "vacuum_seconds", "queue_vacuum_seconds", "retention_days"}
        | {"retention_sweep_seconds", "audit_retention_days", "aging_seconds"}
        | {"worker_lease_seconds"}
    ),
    "worker": frozenset(
        {"worker_id", "worker_threads", "worker_cpu_units", "worker_memory_mb"}
        | {"worker_tasks", "worker_grace_seconds", "cancel_grace_seconds"}
        | {"heartbeat_seconds", "demo_tasks"}
    ),
    "logger": frozenset(),
}
SERVICE_PREFIXES = {"api": ("ws_", "rate_limit_")}
CLIENT_FIELDS = frozenset({"url", "api_key"})


def _reads(service: str, field: str) -> bool:
    if field in CLIENT_FIELDS:
        return False
    if field in SERVICE_FIELDS[service] or field.startswith(SERVICE_PREFIXES.get(service, ())):
        return True
    return not any(
        field in fields or field.startswith(SERVICE_PREFIXES.get(other, ()))
        for other, fields in SERVICE_FIELDS.items()
    )


def _variable(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return " / ".join(str(choice) for choice in alias.choices)
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "empty"
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "empty"
    if isinstance(value, str) and "://" in value:
        return value
    return repr(value) if isinstance(value, str) else str(value)


def settings_help(service: str) -> str:
    """One line per variable ``service`` reads, with its default, from Settings itself
    (so the help never drifts from what the process reads)."""
    lines = []
    for name, info in Settings.model_fields.items():
        if _reads(service, name):
            line = f"  {_variable(name, info)} (default {_default(info)})"
            if info.description:
                line += f": {info.description}"
            lines.append(line)
    return "\n".join(lines)


def service_parser(service: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m services.<service>``: --help says what the service does,
    its flags, the variables it reads (see ``settings_help``) and where the docs are, and
    exits without reading the environment; an unknown flag exits 2. Add flags to it."""
    return argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=textwrap.fill(f"switchyard {service}: {description}", width=88),
        epilog=(
            "environment variables (an invalid value stops the service with exit code 2):\n"
            f"{settings_help(service)}\n\n"
            "Meanings and the full table: docs/operations.md (Configuration)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class StartupError(SwitchyardError):
    """A service cannot start as configured (a flag, a task module that fails to
    import): ``run_service`` prints it and exits 2, as for an invalid setting."""


def run_service(
    name: str,
    serve: Callable[[Settings, asyncio.Event], Awaitable[int | None]],
    *,
    prepare: Callable[[Settings], None] | None = None,
    gc_tuning: bool = True,
) -> int:
    """Read the settings, call ``prepare(settings)`` if given (before the event loop
    exists), then run ``serve(settings, stop)``; SIGTERM/SIGINT set ``stop``, and
    ``serve`` drains and returns in its own time (a second signal changes nothing).
    While it runs, the loop touches the service's heartbeat file (``shared.health``).

    Returns the exit code: 2 for a bad configuration (an invalid setting, or a
    StartupError from ``prepare``), else what ``serve`` returns (None: 0).
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"switchyard {name}: {exc}", file=sys.stderr)
        return 2
    try:
        if prepare is not None:
            prepare(settings)
    except StartupError as exc:
        print(f"switchyard {name}: {exc}", file=sys.stderr)
        return 2

    async def main() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if gc_tuning:
            tune_gc()
        # The healthcheck reads this task's file: it is touched only while the loop runs.
        beating = asyncio.create_task(health.beat(name), name=f"{name}-health")
        try:
            return await serve(settings, stop)
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    return run_async(main()) or 0
