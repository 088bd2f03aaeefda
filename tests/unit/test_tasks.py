from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from shared import demo_tasks
from shared.errors import TaskDefinitionError
from shared.schemas import check_json_value
from shared.settings import Settings
from shared.tasks import TaskContext, TaskRegistry


class Params(BaseModel):
    n: int


def test_params_model_from_signature_and_defaults() -> None:
    reg = TaskRegistry()

    @reg.task("t.square", cpu_units=2, memory_mb=512, max_attempts=5, roles={"admin"})
    def square(ctx: TaskContext, params: Params) -> int:
        return params.n * params.n

    d = reg["t.square"]
    assert d.params is Params
    assert d.resources.cpu_units == 2 and d.resources.memory_mb == 512
    assert d.retry.max_attempts == 5
    assert d.roles == {"admin"}
    assert d.parameters_schema()["required"] == ["n"]
    ctx = TaskContext(job_id=uuid.uuid4(), attempt=1)
    assert d.call(ctx, {"n": 4}) == 16


def test_duplicate_name_fails_at_decoration() -> None:
    reg = TaskRegistry()

    @reg.task("dup")
    def one(ctx: TaskContext, payload: dict) -> None: ...

    with pytest.raises(TaskDefinitionError, match="already registered"):

        @reg.task("dup")
        def two(ctx: TaskContext, payload: dict) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"roles": {"root"}}, "unknown role"),
        ({"cpu_units": 0}, "cpu_units"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_options_fail(kwargs: dict, message: str) -> None:
    reg = TaskRegistry()
    with pytest.raises(TaskDefinitionError, match=message):

        @reg.task("bad", **kwargs)
        def f(ctx: TaskContext, payload: dict) -> None: ...


def test_unknown_option_and_bad_name_fail() -> None:
    reg = TaskRegistry()
    with pytest.raises(TypeError):
        reg.task("x", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(TaskDefinitionError, match="task name"):

        @reg.task("has space")
        def f(ctx: TaskContext, payload: dict) -> None: ...


def test_demo_tasks_are_the_designed_set() -> None:
    assert demo_tasks.registry.names() == [
        "demo.cpu", "demo.echo", "demo.fail", "demo.log", "demo.mean", "demo.progress", "demo.sleep",
    ]  # fmt: skip
    schema = demo_tasks.registry["demo.sleep"].parameters_schema()
    assert schema["required"] == ["seconds"]


def test_api_keys_setting_parses_and_rejects() -> None:
    s = Settings(_env_file=None, api_keys="a:admin, b:viewer")  # type: ignore[call-arg]
    assert s.api_keys == {"a": "admin", "b": "viewer"}
    with pytest.raises(ValueError, match="a role is one of"):
        Settings(api_keys="a:root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not 'key:role'"):
        Settings(api_keys="justakey")  # type: ignore[arg-type]


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@h:1/db")
    monkeypatch.setenv("SWITCHYARD_NAMESPACE", "ns1")
    monkeypatch.setenv("SWITCHYARD_API_KEYS", "k:submitter")
    monkeypatch.setenv("SWITCHYARD_MAX_BODY_BYTES", "10")
    s = Settings()
    assert (s.database_url, s.namespace, s.api_keys, s.max_body_bytes) == (
        "postgresql+asyncpg://u@h:1/db",
        "ns1",
        {"k": "submitter"},
        10,
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": float("nan")}, "NaN"),
        ({"a": [float("inf")]}, "NaN"),
        ({"a": "x\x00"}, "NUL"),
        ({"a": {"b": {"c": {"d": 1}}}}, "deeper than 3"),
    ],
)
def test_check_json_value(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_json_value(value, max_depth=3)
    check_json_value({"a": [1, 2.5, "ok", None, {"b": True}]}, max_depth=3)


def test_task_logger_numbers_and_formats_lines() -> None:
    from shared.tasks import TaskLogger

    lines: list[tuple[int, str, str]] = []
    log = TaskLogger(lambda seq, level, msg: lines.append((seq, level, msg)))
    log.info("hello %s", "world")
    log.warning("w")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    assert lines[:2] == [(1, "info", "hello world"), (2, "warning", "w")]
    assert lines[2][:2] == (3, "error") and "ValueError: boom" in lines[2][2]
    with pytest.raises(ValueError, match="unknown log level"):
        log.log("loud", "x")


def test_a_line_that_cannot_be_formatted_is_written_and_the_task_goes_on() -> None:
    """Seen failing: ``ctx.log.info("%s %s %d", "one")`` raised TypeError and failed the
    attempt; the logging module writes such a line and goes on."""
    from shared.tasks import TaskLogger

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    lines: list[str] = []
    log = TaskLogger(lambda seq, level, msg: lines.append(msg))
    log.info("%s %s %d", "one")
    log.info("%d", "not a number")
    log.info(Unprintable(), 1)
    assert lines == [
        "%s %s %d [not formatted with its 1 argument(s): TypeError]",
        "%d [not formatted with its 1 argument(s): TypeError]",
        "<Unprintable that cannot be printed> [not formatted with its 1 argument(s): RuntimeError]",
    ]
