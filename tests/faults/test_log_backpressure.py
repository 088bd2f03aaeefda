"""A task that logs while its worker cannot reach the broker waits for it: the lines
wait in the task (its thread, or its child's pipe), not in the worker's memory, and
every one is stored once the broker is back."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import ServiceProcess, Stack
from tests.faults.proxy import TcpProxy
from tests.faults.services import api_and

pytestmark = [
    pytest.mark.e2e,
    # Sockets the proxy aborts mid-stream are reported by the garbage collector at odd
    # moments; they are the test harness's, not the services'.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
LINES, CHARS = 6_000, 10_000  # 60 MB of text, sixty times the worker's budget
GROWTH_MB = 30  # what the worker may grow by while the broker is away


def worker_behind_a_proxy(
    start_service, settings, request, proxy: TcpProxy, *worker_args: str
) -> tuple[Stack, ServiceProcess]:  # type: ignore[no-untyped-def]
    """api, scheduler and logger, and worker "loud" whose link to the broker goes
    through ``proxy``; the lease outlasts the outage (the worker is away, not lost)."""
    env = {"SWITCHYARD_WORKER_LEASE_SECONDS": "60"}
    stack = api_and(start_service, settings, request, env, "scheduler", "logger")
    worker = stack.start(
        "worker", "--worker-id", "loud", "--tasks", "tests.e2e.sample_tasks", *worker_args,
        # Reconnect soon after the restore (the default waits 5 s).
        env={"AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2"},
    )  # fmt: skip
    stack.wait_for(lambda: stack.worker_alive("loud"), what="worker up", proc=worker)
    return stack, worker


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_task_that_logs_through_a_broker_outage_waits_for_it(
    start_service, settings, request, tmp_path: Path, isolation: str
) -> None:  # type: ignore[no-untyped-def]
    go_file = tmp_path / "go"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        stack, worker = worker_behind_a_proxy(
            start_service, settings, request, proxy, "--threads", "1", "--isolation", isolation
        )
        payload = {"lines": LINES, "chars": CHARS, "go_file": str(go_file)}
        job = stack.submit({"type": "sample.loud", "payload": payload})
        stack.wait_status(job["id"], "running")
        process = psutil.Process(worker.proc.pid)
        before_mb = process.memory_info().rss / 2**20
        proxy.cut()
        go_file.touch()  # the task logs from now on, with its worker cut off
        cut_at = time.monotonic()
        grown: list[float] = []
        # Long enough for the task to log everything if nothing held it back (under a
        # second here); it ends early once the worker has grown past the bound.
        while time.monotonic() - cut_at < 3 and (not grown or grown[-1] <= GROWTH_MB):
            time.sleep(0.1)
            grown.append(process.memory_info().rss / 2**20 - before_mb)
        proxy.restore()
        print(f"{isolation}: the worker grew by {max(grown):.0f} MB at most in the outage")
        assert max(grown) <= GROWTH_MB, grown
        done = stack.wait_status(job["id"], "completed", "failed", timeout=120)
        assert done["status"] == "completed", done["error"]
        query = "SELECT count(DISTINCT seq) AS n FROM job_logs WHERE job_id = $1"
        stack.wait_for(
            lambda: stack.sql(query, job["id"])[0]["n"] == LINES,
            timeout=120, what="every line stored",
        )  # fmt: skip
        worker.stop()  # while the proxy still carries its last heartbeat


def test_a_held_child_that_times_out_in_an_outage_is_replaced_at_once(
    start_service, settings, request, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The reader of a child held back stops waiting once the child is stopped: its
    exit is seen, and the pool starts a child in its place, without waiting for the
    broker to come back (nor does the pool's close, when the worker stops)."""
    go_file = tmp_path / "go"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        stack, worker = worker_behind_a_proxy(
            start_service, settings, request, proxy, "--threads", "1", "--isolation", "process"
        )
        payload = {"lines": 1_000_000, "chars": 1_000, "go_file": str(go_file)}
        job = stack.submit({"type": "sample.loud", "payload": payload, "timeout_seconds": 2})
        stack.wait_status(job["id"], "running")
        tree = psutil.Process(worker.proc.pid)
        before = {p.pid for p in tree.children(recursive=True)}
        proxy.cut()
        go_file.touch()

        def replaced() -> bool:
            return bool({p.pid for p in tree.children(recursive=True)} - before)

        # The timeout (2 s), the kill grace (1 s), a new child's start (its imports).
        stack.wait_for(replaced, timeout=15, what="a child started in the held one's place")
        proxy.restore()
        done = stack.wait_status(job["id"], "completed", "failed", timeout=60)
        assert done["status"] == "failed" and "timed out" in done["error"], done["error"]
        worker.stop()
