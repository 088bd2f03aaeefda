"""Scenario 9: a job longer than RabbitMQ's consumer_timeout completes, once, with no
channel error.

RabbitMQ 3.10 only has the node-wide ``consumer_timeout``, checked about once a minute,
so the test starts a private node (its own port, data directory and config, no
plugins) with a 10 s timeout, and runs the whole stack against it. A control consumer
that holds one delivery unacked proves the timeout really bites on that node: the
broker closes its channel. The job (80 s, longer than the timeout plus the check
interval) runs on the same node meanwhile and must complete as attempt 1.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest

from tests.e2e.conftest import free_port
from tests.faults.test_outages import stack_with

pytestmark = [pytest.mark.e2e, pytest.mark.slow_fault, pytest.mark.timeout(400)]

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
TIMEOUT_MS = 10_000


def _rabbitmq_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        return None


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[str]:
    """A RabbitMQ node of our own with consumer_timeout = 10 s; yields its AMQP URL."""
    user = _rabbitmq_user()
    if not SERVER.exists() or user is None or os.geteuid() != 0:
        pytest.skip("needs Debian's rabbitmq-server and root (to run it as user rabbitmq)")
    port, dist = free_port(), free_port()
    # Not under tmp_path: pytest's temporary root is private to root, and the node runs
    # as user rabbitmq.
    base = Path(tempfile.mkdtemp(prefix="swy-rabbit-"))
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True)
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {port}\nconsumer_timeout = {TIMEOUT_MS}\n"
    )
    (base / "enabled_plugins").write_text("[].\n")
    shutil.chown(base, user.pw_uid, user.pw_gid)
    for path in base.rglob("*"):
        shutil.chown(path, user.pw_uid, user.pw_gid)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": user.pw_dir,  # the node's Erlang cookie
        "RABBITMQ_NODENAME": f"swy-timeout-{port}@localhost",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
    }
    log = open(tmp_path / "rabbit-node.out", "wb")
    node = subprocess.Popen(
        ["runuser", "-u", "rabbitmq", "--", str(SERVER)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                asyncio.run(_ping(url))
                break
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                if node.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"private RabbitMQ node did not start ({exc!r}): "
                        + (tmp_path / "rabbit-node.out").read_text()[-2000:]
                    ) from exc
                time.sleep(0.5)
        yield url
    finally:
        node.terminate()
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


async def _ping(url: str) -> None:
    connection = await aio_pika.connect(url, timeout=3)
    await connection.close()


async def _hold_one_unacked(url: str, seconds: float) -> str | None:
    """Consume one message and never ack it; what closed the channel (None: nothing)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("control-unacked", auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
        closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_close(_sender: object, exc: BaseException | None) -> None:
            if not closed.done():
                closed.set_result(repr(exc))

        channel.close_callbacks.add(on_close)

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            """Received, never acked."""

        await queue.consume(keep)
        try:
            return await asyncio.wait_for(closed, timeout=seconds)
        except TimeoutError:
            return None
    finally:
        await connection.close()


def test_job_longer_than_consumer_timeout(  # type: ignore[no-untyped-def]
    private_rabbitmq, start_service, settings, request, tmp_path
) -> None:
    env = {"AMQP_URL": private_rabbitmq}
    stack, _ = stack_with(start_service, settings, request, env, threads=2)
    job = stack.submit(
        {"type": "demo.sleep", "payload": {"seconds": 80}, "retry": {"max_attempts": 1}}
    )
    stack.wait_status(job["id"], "running", timeout=20)
    # Meanwhile, the control: an unacked delivery on this node is timed out by it.
    reason = asyncio.run(_hold_one_unacked(private_rabbitmq, seconds=TIMEOUT_MS / 1000 + 75))
    assert reason is not None and "PRECONDITION_FAILED" in reason, reason
    done = stack.wait_status(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed" and done["attempts"] == 1, done

    def history() -> list[tuple[int, str]]:
        rows = stack.sql("SELECT attempt, status FROM job_executions WHERE job_id = $1", job["id"])
        return [(r["attempt"], r["status"]) for r in rows]

    # The logger writes the end of the attempt shortly after the scheduler's commit.
    stack.wait_for(lambda: history() == [(1, "completed")], timeout=20, what="one execution")
    # No service's channel was closed by the broker (each service logs to tmp_path).
    logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*-*.log")}
    assert {"api", "scheduler", "logger", "worker"} <= {n.split("-")[0] for n in logs}
    for name, text in logs.items():
        assert "PRECONDITION_FAILED" not in text, f"{name}: {text[-2000:]}"
