"""A dispatch the broker refuses (a nack) is put back and runs later, once.

The scheduler awaits dispatch confirms beside its cycle loop; a refused one must still
be undone: the job goes back to ready (its run given back), is placed again, and runs
exactly once when the broker takes its dispatches again. The refusal is real: a
RabbitMQ policy caps the worker's queue at 0 messages with ``reject-publish``."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from shared.settings import Settings
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def test_refused_dispatch_is_put_back_and_runs_once_later(stack: Stack, settings: Settings) -> None:
    policy = f"refuse-{settings.namespace}"
    queue = f"{settings.namespace}.worker.wrefused"
    rabbitmqctl(
        "set_policy", "--apply-to", "queues", policy, f"^{re.escape(queue)}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        stack.worker("wrefused")
        job = stack.submit({"type": "demo.echo", "payload": {"x": 1}})
        job_id = uuid.UUID(job["id"])

        def refused_twice() -> bool:
            return stack.scheduler.output().count("dispatch publish(es) failed") >= 2  # type: ignore[attr-defined]

        stack.wait_for(refused_twice, what="the scheduler sees its dispatches refused")
        row = stack.sql("SELECT status, attempts, runs FROM jobs WHERE id = $1", job_id)[0]
        assert row["status"] in ("ready", "running")  # put back (or placed again)
        assert row["attempts"] >= 2  # each refused attempt was numbered (and is fenced)
        assert row["runs"] <= 1  # each undo gave its run back
    finally:
        rabbitmqctl("clear_policy", policy)
    done = stack.wait_status(job["id"], "completed", timeout=30)
    assert done["result"] == {"x": 1}
    # The logger writes the execution a moment after the scheduler's completion.
    stack.wait_for(lambda: stack.logs(job["id"])["executions"], what="the execution row")
    executions = stack.logs(job["id"])["executions"]
    assert [(e["attempt"], e["status"]) for e in executions] == [(done["attempts"], "completed")]
