"""Tasks that log as fast as they can: their worker holds them back while what it has
not sent yet is over its budget (``MAX_UNSENT_BYTES``), so its heartbeats still go out
within the lease, its memory stays bounded and every line is stored."""

from __future__ import annotations

import statistics
import threading

import psutil

from tests.e2e.conftest import Stack

SAMPLES = ("--tasks", "tests.e2e.sample_tasks")
LEASE_SECONDS = 3.0  # SWITCHYARD_WORKER_LEASE_SECONDS in the tests' environment


class Watch:
    """Samples, until stopped, how old the worker's last stored heartbeat is and the
    worker's resident memory."""

    def __init__(self, stack: Stack, worker_id: str, pid: int) -> None:
        self.stack, self.worker_id, self.pid = stack, worker_id, pid
        self.staleness: list[float] = []
        self.rss_mb: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # A watch that stopped early would leave the bounds checked on a few samples.
        assert self.error is None, f"the watch failed: {self.error!r}"
        assert len(self.rss_mb) >= 10, f"only {len(self.rss_mb)} samples"

    def _run(self) -> None:
        try:
            self._sample()
        except BaseException as exc:
            self.error = exc

    def _sample(self) -> None:
        process = psutil.Process(self.pid)
        query = (
            "SELECT extract(epoch FROM clock_timestamp() - last_heartbeat_at)::float AS s "
            "FROM workers WHERE id = $1"
        )
        while not self._stop.wait(0.1):
            self.staleness.append(self.stack.sql(query, self.worker_id)[0]["s"])
            self.rss_mb.append(process.memory_info().rss / 2**20)


def test_tasks_that_flood_the_log_leave_their_worker_alive_and_lose_no_line(
    stack: Stack,
) -> None:
    worker = stack.worker("flood", "--threads", "4")
    rss_before = psutil.Process(worker.proc.pid).memory_info().rss / 2**20
    lines = 100_000  # demo.log's most, in each of 4 tasks at once
    with Watch(stack, "flood", worker.proc.pid) as watch:
        ids = [stack.submit({"type": "demo.log", "payload": {"lines": lines}})["id"]
               for _ in range(4)]  # fmt: skip
        ended = [stack.wait_status(job_id, "completed", "failed", timeout=120) for job_id in ids]
    print(
        f"heartbeat age median {statistics.median(watch.staleness):.2f} s, max "
        f"{max(watch.staleness):.2f} s; worker rss {rss_before:.0f} MB before, "
        f"{max(watch.rss_mb):.0f} MB at most"
    )
    # Neither lost nor retried: the scheduler never went a lease without a heartbeat.
    assert [(j["status"], j["attempts"]) for j in ended] == [("completed", 1)] * 4, [
        j["error"] for j in ended
    ]
    assert max(watch.staleness) < LEASE_SECONDS, watch.staleness
    # The lines wait in the task, not in the worker's memory.
    assert max(watch.rss_mb) - rss_before < 100, (rss_before, watch.rss_mb)
    query = "SELECT count(*) AS n FROM job_logs WHERE job_id = ANY($1::uuid[])"
    stack.wait_for(
        lambda: stack.sql(query, ids)[0]["n"] == 4 * lines, timeout=120, what="every line stored"
    )


def test_large_lines_from_many_threads_of_a_task_stay_within_the_budget(stack: Stack) -> None:
    """What the task's threads have handed on and the loop has not yet put in the
    outbox counts too: eight threads of 64 KiB lines (150 MB in all) otherwise
    outrun the loop between two of its turns (the worker grew by 164 MB). What the
    worker grows by with a budget of 1 MiB (about 30 MB here, 12 MB with 256 KiB) is
    mostly the allocator's: freed lines of eight threads, each in its own arena
    unless ``MALLOC_ARENA_MAX`` says otherwise, as it does here."""
    worker = stack.start("worker", "--worker-id", "flood", *SAMPLES,
                         env={"MALLOC_ARENA_MAX": "2"})  # fmt: skip
    stack.wait_for(lambda: stack.worker_alive("flood"), what="worker up", proc=worker)
    rss_before = psutil.Process(worker.proc.pid).memory_info().rss / 2**20
    lines, threads = 300, 8
    payload = {"lines": lines, "chars": 65_536, "threads": threads}
    with Watch(stack, "flood", worker.proc.pid) as watch:
        job = stack.submit({"type": "sample.loud", "payload": payload})
        done = stack.wait_status(job["id"], "completed", "failed", timeout=120)
    print(f"worker rss {rss_before:.0f} MB before, {max(watch.rss_mb):.0f} MB at most")
    assert done["status"] == "completed", done["error"]
    assert max(watch.rss_mb) - rss_before < 50, (rss_before, watch.rss_mb)
    query = "SELECT count(DISTINCT seq) AS n FROM job_logs WHERE job_id = $1"
    stack.wait_for(
        lambda: stack.sql(query, job["id"])[0]["n"] == lines * threads,
        timeout=120, what="every line stored",
    )  # fmt: skip
