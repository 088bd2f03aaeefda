"""A worker told to stop while it cannot reach the broker still stops: within its grace
and the bounded waits for the broker (cancelling its consumer, flushing its outbox,
closing the connection), never waiting for a reconnection that may not come, and
saying what it could not send."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.proxy import TcpProxy
from tests.faults.services import api_and

pytestmark = [
    pytest.mark.e2e,
    # Sockets the proxy aborts mid-stream are reported by the garbage collector at odd
    # moments; they are the test harness's, not the services'.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
# SWITCHYARD_WORKER_GRACE_SECONDS (10) + the consumer's cancel (5) + the outbox's
# flush (10) + the connection's close (5) in the tests' environment, and a margin.
STOP_WITHIN = 40.0


def test_a_worker_stops_within_its_bounds_while_the_broker_is_away(
    start_service, settings, request
) -> None:  # type: ignore[no-untyped-def]
    env = {"SWITCHYARD_WORKER_LEASE_SECONDS": "60"}
    stack = api_and(start_service, settings, request, env, "scheduler")
    with TcpProxy("127.0.0.1", 5672) as proxy:
        worker = stack.start(
            "worker", "--worker-id", "away", "--threads", "2",
            env={"AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.2"},
        )  # fmt: skip
        stack.wait_for(lambda: stack.worker_alive("away"), what="worker up", proc=worker)
        job = stack.submit({"type": "demo.sleep", "payload": {"seconds": 120}})
        stack.wait_status(job["id"], "running")
        proxy.cut()
        stack.wait_for(lambda: "Reconnecting" in worker.output(), what="the worker lost its link")
        asked = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(timeout=STOP_WITHIN + 20)
        took = time.monotonic() - asked
    print(f"the worker exited {code} after {took:.1f} s")
    assert code == 0, worker.output()[-3000:]
    assert took < STOP_WITHIN
    # Its hand-back could not be sent, and it says so (the lease retries the job).
    assert "outbox closed before" in worker.output()
