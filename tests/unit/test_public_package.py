"""The public ``switchyard`` package: its names, and that it stands apart from the server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

import switchyard
from switchyard.client import _closed
from switchyard.errors import ApiError

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = {"task", "TaskContext", "TaskRegistry", "Client", "AsyncClient", "ApiError", "JobStatus"}

# Runs in a fresh interpreter: author a task, build both clients, then list what got imported.
_PROBE = textwrap.dedent(
    """
    import sys
    from pydantic import BaseModel
    import switchyard
    from switchyard import AsyncClient, Client, JobStatus, TaskContext, TaskRegistry, task

    class Params(BaseModel):
        n: int

    registry = TaskRegistry()

    @registry.task("probe.square", roles={"admin"})
    def square(ctx: TaskContext, params: Params) -> int:
        return params.n * params.n

    @task("probe.module_level")
    def echo(ctx: TaskContext, payload: dict) -> dict:
        return payload

    client = Client()
    client.close()
    AsyncClient()
    assert JobStatus.COMPLETED == "completed"
    assert switchyard.__version__
    leaked = sorted(
        m for m in sys.modules if m.split(".")[0] in ("shared", "services")
    )
    print("leaked", leaked)
    """
)


def test_public_names_are_exactly_the_curated_list() -> None:
    assert set(switchyard.__all__) == PUBLIC
    assert len(switchyard.__all__) == len(PUBLIC)
    for name in switchyard.__all__:
        assert getattr(switchyard, name) is not None
    assert isinstance(switchyard.__version__, str) and switchyard.__version__


def test_importing_switchyard_loads_no_server_module_and_ignores_server_settings() -> None:
    env = dict(os.environ)
    # Garbage the server Settings would refuse: an SDK user must not care.
    env["SWITCHYARD_API_KEYS"] = "{{not json at all"
    env["SWITCHYARD_WORKER_THREADS"] = "lots"
    env["SWITCHYARD_API_KEY"] = "k-123"
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "leaked []" in result.stdout, result.stdout


def test_client_reads_only_url_and_key_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SWITCHYARD_API_KEYS", "{{not json at all")
    monkeypatch.setenv("SWITCHYARD_URL", "http://example.invalid:9/")
    monkeypatch.setenv("SWITCHYARD_API_KEY", "k-abc")
    from switchyard.client import _where

    assert _where(None, None) == (
        "http://example.invalid:9",
        "k-abc",
        {"Authorization": "Bearer k-abc"},
    )
    monkeypatch.delenv("SWITCHYARD_URL")
    monkeypatch.delenv("SWITCHYARD_API_KEY")
    assert _where(None, None) == ("http://127.0.0.1:8000", None, {})


def test_old_import_paths_give_the_same_objects() -> None:
    import shared.client
    import shared.errors
    import shared.schemas
    import shared.settings
    import shared.states
    import shared.tasks
    import switchyard.errors
    import switchyard.models
    import switchyard.states
    import switchyard.tasks

    assert shared.tasks.task is switchyard.task
    assert shared.tasks.TaskContext is switchyard.TaskContext
    assert shared.tasks.TaskRegistry is switchyard.TaskRegistry
    assert shared.tasks.default_registry is switchyard.tasks.default_registry
    assert shared.tasks.load_task_modules is switchyard.tasks.load_task_modules
    assert shared.client.Client is switchyard.Client
    assert shared.client.AsyncClient is switchyard.AsyncClient
    assert shared.client.ApiError is switchyard.ApiError
    assert shared.errors.SwitchyardError is switchyard.errors.SwitchyardError
    assert shared.errors.TaskDefinitionError is switchyard.errors.TaskDefinitionError
    assert issubclass(shared.errors.ConfigError, switchyard.errors.SwitchyardError)
    assert shared.states.JobStatus is switchyard.JobStatus
    assert shared.states.TERMINAL is switchyard.states.TERMINAL
    assert shared.settings.ROLES is switchyard.models.ROLES
    for name in ("Resources", "RetryPolicy", "JobRead", "JobLogs", "Priority"):
        assert getattr(shared.schemas, name) is getattr(switchyard.models, name)


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (1008, "invalid or revoked API key", 401),
        (1008, "missing API key: send 'Authorization: Bearer <key>'", 401),
        (1008, "too many sockets for this key", 429),
        (1008, "unknown parameter 'jobid'; this stream takes job_id, type", 422),
        (1013, "too many requests with this API key: retry after 2 s", 429),
        (1013, "the database is unavailable; nothing was changed, retry shortly", 503),
        (1011, "internal error 0123456789abcdef", 500),
    ],
)
def test_a_streams_close_is_the_http_code_it_stands_for(
    code: int, reason: str, status: int
) -> None:
    """Seen failing: a bad parameter was a 401, the database unavailable a 429 ('too many
    requests'), an unexpected error (its id lost) a quiet end of the stream."""
    closed = ConnectionClosed(Close(code, reason), None)
    with pytest.raises(ApiError) as refused:
        _closed(closed)
    assert (refused.value.status, refused.value.detail) == (status, reason)


def test_a_normal_close_ends_the_stream_quietly() -> None:
    _closed(ConnectionClosed(Close(1000, ""), None))
    _closed(ConnectionClosed(None, None))  # the connection lost: no close frame
