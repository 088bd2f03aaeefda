"""``python -m bench.scheduler_alone``: the ceiling of one active scheduler, measured alone.

A real scheduler (``python -m services.scheduler``, its own database and namespace) and
synthetic workers that answer instantly: a small asyncio program (``--fleet-of``, run
as a child process so its CPU is counted apart) that heartbeats like
``services.worker`` and, for each dispatch, reports its start and completion at once
(in one report, as a worker does for an attempt that ends before its start is sent).
No API and no logger: the jobs are inserted ready in bulk before the clock starts,
and the clock stops at the last ``finished_at``. So the figure is placements +
completions per second through the scheduler's loop, PostgreSQL and RabbitMQ, with
nothing else in the way (docs/scaling.md).

Two other measures for docs/scaling.md:

* ``--parallel K``: K such yards (each a database, namespace, scheduler and fleet) at
  once, summed: what K partitions with a leader each would give on this machine.
* ``--db-claim``: placement in the database, no scheduler: C clients each claiming ready
  jobs with ``SELECT ... FOR UPDATE SKIP LOCKED`` and completing them at once (the
  scheduler's own completion statement), at concurrency 1, 2 and 4.

The machine is shared and noisy: each figure is a median of ``--runs``, with the load
average beside it; compare figures of one run of this command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psutil

from bench.databases import (
    ADMIN,
    AMQP,
    create_migrated,
    delete_namespace,
    drop,
    dsn_of,
    sqlalchemy_url,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TASK_TYPE = "bench.noop"
# The bench's own connections (insert, poll, sampler) are named so that their backends'
# CPU is not counted as the yard's.
BENCH_APP = "scheduler-alone-bench"


async def bench_connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"application_name": BENCH_APP})


JOB_CPU, JOB_MEMORY_MB = 1.0, 64  # each synthetic worker slot fits one job exactly


# ---------------------------------------------------------------- the synthetic fleet


async def serve_fleet(namespace: str, workers: int, slots: int, reports: str) -> None:
    """W workers on one connection: each consumes its dispatch queue and answers every
    dispatch at once (``--reports``: one completion carrying its start, as a worker's
    outbox folds them; the two apart; or only ``completed``), and
    heartbeats every ``heartbeat_seconds`` as a real worker does. Runs until SIGTERM."""
    from shared.bodies import fold_starts
    from shared.broker import Broker, Delivery, Topology
    from shared.messages import (
        JobDispatch,
        JobStatusReport,
        WorkerCapacity,
        WorkerHeartbeat,
        _Message,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    capacity = WorkerCapacity(
        cpu_units=slots * JOB_CPU, memory_mb=slots * JOB_MEMORY_MB, slots=slots
    )
    idle = WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    started_at = datetime.now(UTC)
    ids = [f"synthetic-{uuid.uuid4().hex[:6]}-{i}" for i in range(workers)]

    def heartbeat(worker_id: str) -> WorkerHeartbeat:
        # Nothing is ever running for long: the instant answers went out before this.
        return WorkerHeartbeat(
            worker_id=worker_id,
            capacity=capacity,
            allocated=idle,
            task_types=[TASK_TYPE],
            started_at=started_at,
        )

    def report(
        worker_id: str, d: JobDispatch, status: Literal["started", "completed"]
    ) -> JobStatusReport:
        return JobStatusReport(job_id=d.job_id, attempt=d.attempt, worker_id=worker_id,
                               status=status)  # fmt: skip

    async with Broker(AMQP, namespace, name="bench-synthetic-fleet") as broker:

        def answerer(worker_id: str) -> Any:
            async def on_delivery(delivery: Delivery) -> None:
                sent: list[_Message] = []
                for d in delivery.messages:
                    if not isinstance(d, JobDispatch):
                        continue  # a cancel: nothing runs long enough to cancel
                    if reports != "completed":
                        sent.append(report(worker_id, d, "started"))
                    sent.append(report(worker_id, d, "completed"))
                if reports == "folded":
                    sent = fold_starts(sent)  # as a worker's outbox does
                out: list[tuple[_Message, str | None]] = [(m, None) for m in sent]
                if out:
                    await broker.publish_many(out)  # batched, confirmed before the ack
                await delivery.ack()

            return on_delivery

        consumers = [
            await broker.consume(
                broker.topology.worker_queue(w),
                Topology.worker_bindings(w),
                answerer(w),
                prefetch=slots * 2,
                arguments={"x-expires": 600_000},
            )
            for w in ids
        ]
        while not stop.is_set():
            await broker.publish_many([(heartbeat(w), None) for w in ids])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
        for c in consumers:
            await c.close()
        await broker.publish_many(
            [(heartbeat(w).model_copy(update={"state": "stopped"}), None) for w in ids]
        )


# ---------------------------------------------------------------- one yard


@dataclass
class Yard:
    """A database, a namespace, a real scheduler and a synthetic fleet."""

    workers: int
    slots: int
    reports: str
    # What runs the scheduler (an A/B can run a variant: ``--scheduler-command``).
    scheduler_command: tuple[str, ...] = ("-m", "services.scheduler")
    index: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def db(self) -> str:
        return f"swy_sched_{self.tag}"

    @property
    def dsn(self) -> str:
        return dsn_of(self.db)

    @property
    def namespace(self) -> str:
        return f"sched-alone-{self.tag}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
            "DATABASE_URL": sqlalchemy_url(self.dsn),
            "AMQP_URL": AMQP,
            "SWITCHYARD_NAMESPACE": self.namespace,
        }

    def _start(self, name: str, *args: str) -> None:
        # Overwritten by the next invocation (yards of one invocation have their index).
        log = open(RESULTS / f"scheduler-alone-{name}{self.index}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    async def __aenter__(self) -> Yard:
        await create_migrated(self.db)
        self._start("scheduler", *self.scheduler_command)
        self._start(
            "fleet",
            "-m",
            "bench.scheduler_alone",
            "--fleet-of",
            self.namespace,
            "--workers",
            str(self.workers),
            "--slots",
            str(self.slots),
            "--reports",
            self.reports,
        )
        try:
            await self._until_alive()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _until_alive(self) -> None:
        """The scheduler has stored every synthetic worker's heartbeat (it knows them)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for name, p in self.procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"{name} exited with {p.returncode}: see its log")
                alive = await conn.fetchval("SELECT count(*) FROM workers WHERE state = 'alive'")
                if alive >= self.workers:
                    return
                await asyncio.sleep(0.1)
            raise RuntimeError("the synthetic workers did not come alive within 60 s")
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        await delete_namespace(self.namespace)  # reports rather than raises
        await drop(self.db)


# ---------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds of named processes, of this yard's PostgreSQL backends (and of all
    postgres processes: the machine is shared) and of RabbitMQ (shared too)."""

    def __init__(self, procs: dict[str, int], databases: list[str]) -> None:
        self._procs = procs
        self._databases = databases

    async def snapshot(self) -> dict[str, Any]:
        own_pids: set[int] = set()
        conn = await bench_connect(ADMIN)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])"
                " AND application_name <> $2",
                self._databases,
                BENCH_APP,
            )
            own_pids = {r["pid"] for r in rows}
        finally:
            await conn.close()
        per_pid: dict[int, float] = {}
        rabbit = 0.0
        for proc in psutil.process_iter(["name", "cpu_times"]):
            t = proc.info["cpu_times"]
            if t is None:
                continue
            if proc.info["name"] == "postgres":
                per_pid[proc.pid] = t.user + t.system
            elif proc.info["name"] == "beam.smp":
                rabbit += t.user + t.system
        named: dict[str, float] = {}
        for name, pid in self._procs.items():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                named[name] = t.user + t.system
        return {"named": named, "pg": per_pid, "own": own_pids, "rabbitmq": rabbit}

    @staticmethod
    def per_job_ms(before: dict[str, Any], after: dict[str, Any], jobs: int) -> dict[str, float]:
        out = {
            name: after["named"][name] - before["named"].get(name, 0.0) for name in after["named"]
        }
        # Backends of this yard that lived through the run (or started in it).
        out["postgresql_own_backends"] = sum(
            after["pg"].get(pid, 0.0) - before["pg"].get(pid, 0.0) for pid in after["own"]
        )
        out["postgresql_all"] = sum(
            cpu - before["pg"].get(pid, 0.0) for pid, cpu in after["pg"].items()
        )
        out["rabbitmq"] = after["rabbitmq"] - before["rabbitmq"]
        return {k: round(1000 * v / jobs, 4) for k, v in out.items()}


# ---------------------------------------------------------------- one measured run

INSERT_READY = f"""
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at)
SELECT gen_random_uuid(), '{TASK_TYPE}', 'ready', 2, '{{}}'::jsonb, {JOB_CPU}, {JOB_MEMORY_MB},
       3, 1, 2, 60, now(), now()
FROM generate_series(1, $1)
"""


async def insert_ready(dsn: str, n: int) -> datetime:
    """N ready jobs in one transaction; returns the database's time just after it
    committed (the clock starts there: no job was claimable before)."""
    conn = await bench_connect(dsn)
    try:
        await conn.execute(INSERT_READY, n)
        started: datetime = await conn.fetchval("SELECT clock_timestamp()")
        return started
    finally:
        await conn.close()


async def wake(namespace: str) -> None:
    """The API's wake-up hint (without it the scheduler finds them on its next tick)."""
    from shared.broker import Broker
    from shared.messages import JobSubmitted

    async with Broker(AMQP, namespace, name="bench-hint") as broker:
        await broker.publish(JobSubmitted(job_id=uuid.uuid4(), type=TASK_TYPE, priority="normal"))


async def until_completed(dsn: str, timeout: float) -> datetime:
    """The last ``finished_at`` once no job is ready or running (the yard's database
    holds only this bench's jobs, and runs go one after another): two index probes per
    poll (counting the ready ones took a tenth of PostgreSQL's samples)."""
    conn = await bench_connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        left = True
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT EXISTS (SELECT FROM ready_jobs)"
                " OR EXISTS (SELECT FROM jobs WHERE status = 'running')"
            )
            if not left:
                other = await conn.fetchval("SELECT count(*) FROM jobs WHERE status <> 'completed'")
                if other:
                    raise RuntimeError(f"{other} job(s) ended other than completed: see the logs")
                last: datetime = await conn.fetchval(
                    "SELECT max(finished_at) FROM jobs WHERE finished_at IS NOT NULL"
                )
                return last
            await asyncio.sleep(0.1)
        raise TimeoutError(f"jobs still ready or running after {timeout:.0f} s")
    finally:
        await conn.close()


@dataclass
class Run:
    jobs_per_s: float
    seconds: float
    cpu_ms_per_job: dict[str, float]
    load: tuple[float, float, float]


async def vacuum(dsn: str) -> None:
    conn = await bench_connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) jobs, ready_jobs")
    finally:
        await conn.close()


async def measure(yards: list[Yard], jobs: int, *, profile: Path | None = None) -> Run:
    """One run: ``jobs`` ready jobs in each yard at once, until all are completed."""
    procs = {
        f"{name}{i if len(yards) > 1 else ''}": p.pid
        for i, y in enumerate(yards)
        for name, p in y.procs.items()
    }
    meter = CpuMeter(procs, [y.db for y in yards])
    async with _profiling(yards[0], profile) as sampler:
        t0s = await asyncio.gather(*(insert_ready(y.dsn, jobs) for y in yards))
        # After the insert (not the scheduler's work); the wake-up hint comes after it.
        # (The scheduler's own tick may start on them a few ms earlier: not counted.)
        before = await meter.snapshot()
        await asyncio.gather(*(wake(y.namespace) for y in yards))
        ends = await asyncio.gather(*(until_completed(y.dsn, timeout=600) for y in yards))
        after = await meter.snapshot()
    if sampler is not None:
        sampler.save(profile / "pg_stat_activity.json")  # type: ignore[operator]
    seconds = (max(ends) - min(t0s)).total_seconds()
    total = jobs * len(yards)
    return Run(total / seconds, seconds, CpuMeter.per_job_ms(before, after, total), os.getloadavg())


class ActivitySampler:
    """What this yard's backends are doing, sampled every 10 ms (pg_stat_activity)."""

    def __init__(self, dsn: str, db: str) -> None:
        self._dsn, self._db = dsn, db
        self.samples = 0
        self.seen: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        conn = await bench_connect(self._dsn)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT state, wait_event_type, wait_event, left(regexp_replace(query,"
                    " '\\s+', ' ', 'g'), 90) AS q FROM pg_stat_activity WHERE datname = $1"
                    " AND application_name <> $2 AND state <> 'idle'",
                    self._db,
                    BENCH_APP,
                )
                self.samples += 1
                for r in rows:
                    wait = f"{r['wait_event_type']}:{r['wait_event']}" if r["wait_event"] else "cpu"
                    self.seen[f"[{r['state']}, {wait}] {r['q']}"] += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def save(self, out: Path) -> None:
        top = [
            {"share_of_samples": round(n / max(1, self.samples), 3), "what": what}
            for what, n in self.seen.most_common(25)
        ]
        out.write_text(json.dumps({"samples": self.samples, "top": top}, indent=2))


@contextlib.asynccontextmanager
async def _profiling(yard: Yard, out: Path | None) -> AsyncIterator[ActivitySampler | None]:
    """With ``out``: py-spy on the scheduler (raw stacks) and pg_stat_activity sampled."""
    if out is None:
        yield None
        return
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(yard.procs["scheduler"].pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out / "scheduler.txt"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sampler = ActivitySampler(yard.dsn, yard.db)
    sampler.start()
    try:
        yield sampler
    finally:
        await sampler.stop()
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(timeout=60)


# ---------------------------------------------------------------- placement in the database

# A worker's own claim: the oldest ready jobs it can take, rows others hold skipped, in
# the same statement as the dispatch (running, a new attempt number: the same fence).
# One priority and one type here; a real claim needs the four heads and the capacity
# test of the scheduler's CLAIM_READY_HEADS_AND_FITTING.
# The job's row is locked first, as every writer of jobs locks it before the queue's
# trigger touches its ready_jobs row: the queue is read in order, not locked.
DB_CLAIM = """
WITH c AS (
    SELECT j.id FROM ready_jobs q,
        LATERAL (SELECT id FROM jobs WHERE id = q.id AND status = 'ready' AND NOT parked
                 FOR UPDATE SKIP LOCKED) j
    WHERE q.priority = 2 ORDER BY q.run_at, q.id LIMIT $1)
UPDATE jobs j
SET status = 'running', attempts = j.attempts + 1, runs = j.runs + 1, worker_id = $2,
    dispatched_at = now(), lease_expires_at = now() + interval '10 seconds',
    waiting_reason = NULL, error = NULL, started_at = NULL, updated_at = now()
FROM c WHERE j.id = c.id
RETURNING j.id, j.type, j.payload, j.cpu_units, j.memory_mb, j.timeout_seconds, j.attempts
"""


async def db_claim_rate(dsn: str, jobs: int, clients: int, per_claim: int) -> tuple[float, float]:
    """Jobs per second claimed and completed by ``clients`` connections, each a worker
    that claims ``per_claim`` jobs, then completes them (the scheduler's completion
    statement), until none is left; and the CPU milliseconds per job of their backends."""
    from shared.jobs import sql

    conns = [await bench_connect(dsn) for _ in range(clients)]
    backends = [psutil.Process(c.get_server_pid()) for c in conns]
    done = 0

    async def worker(conn: asyncpg.Connection, name: str) -> None:
        nonlocal done
        claim = await conn.prepare(DB_CLAIM)
        complete = await conn.prepare(sql.APPLY_SUCCESSES)
        while True:
            rows = await claim.fetch(per_claim, name)
            if not rows:
                return
            now = datetime.now(UTC)
            n = len(rows)
            await complete.fetch(
                [r["id"] for r in rows], [r["attempts"] for r in rows], [name] * n,
                ["null"] * n, [now] * n, [True] * n, now,
            )  # fmt: skip
            done += n

    def backends_cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in backends)

    try:
        await insert_ready(dsn, jobs)
        cpu = backends_cpu()
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, f"claimer-{i}") for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - start
        return done / elapsed, 1000 * (backends_cpu() - cpu) / max(1, done)
    finally:
        for c in conns:
            await c.close()


async def db_claim(jobs: int, runs: int, concurrency: list[int], per_claim: list[int]) -> Any:
    tag = uuid.uuid4().hex[:8]
    db = f"swy_claim_{tag}"
    out: list[dict[str, Any]] = []
    try:
        dsn = await create_migrated(db)
        for k in per_claim:
            for c in concurrency:
                rates, pg = [], []
                for _ in range(runs):
                    rate, cpu = await db_claim_rate(dsn, jobs, c, k)
                    rates.append(rate)
                    pg.append(cpu)
                row: dict[str, Any] = {
                    "clients": c,
                    "per_claim": k,
                    "jobs_per_s": round(statistics.median(rates)),
                    "runs": [round(r) for r in rates],
                    "claim_backends_cpu_ms_per_job": round(statistics.median(pg), 4),
                    "load": os.getloadavg(),
                }
                print(
                    f"  db claim: {c} client(s) x {k} per claim: {row['jobs_per_s']:,} jobs/s"
                    f" (runs {row['runs']}), its backends {row['claim_backends_cpu_ms_per_job']} ms/job,"
                    f" load {row['load'][0]:.2f}"
                )
                out.append(row)
    finally:
        await drop(db)
    return out


# ---------------------------------------------------------------- main


async def scheduler_ceiling(args: argparse.Namespace, parallel: int) -> dict[str, Any]:
    """Medians of ``--runs`` runs with ``parallel`` yards at once (one warm-up run first:
    pools, plans and caches)."""
    command = tuple(args.scheduler_command.split())
    yards = [Yard(args.workers, args.slots, args.reports, command, i) for i in range(parallel)]
    async with contextlib.AsyncExitStack() as stack:
        for y in yards:
            await stack.enter_async_context(y)
        await measure(yards, min(args.jobs, 2000))
        runs: list[Run] = []
        for i in range(args.runs):
            profile = args.profile if (args.profile and i == 0 and parallel == 1) else None
            if args.vacuum_between:
                await asyncio.gather(*(vacuum(y.dsn) for y in yards))
            run = await measure(yards, args.jobs, profile=profile)
            print(
                f"  {parallel} scheduler(s), run {i + 1}: {run.jobs_per_s:,.0f} jobs/s"
                f" ({run.seconds:.2f} s), load {run.load[0]:.2f}"
            )
            runs.append(run)
    keys = runs[0].cpu_ms_per_job.keys()
    return {
        "schedulers": parallel,
        "jobs_per_scheduler": args.jobs,
        "placements_completions_per_s": round(statistics.median(r.jobs_per_s for r in runs)),
        "runs_per_s": [round(r.jobs_per_s) for r in runs],
        "cpu_ms_per_job": {k: statistics.median(r.cpu_ms_per_job[k] for r in runs) for k in keys},
        "load_average": [r.load for r in runs],
    }


def report(results: dict[str, Any]) -> None:
    print(
        f"\nscheduler alone, {results['jobs']:,} jobs per run, median of {results['runs']}"
        f" ({results['workers']} synthetic workers x {results['slots']} slots,"
        f" reports: {results['reports']}; uptime at start: {results['uptime']})"
    )
    for row in results["ceilings"]:
        cpu = row["cpu_ms_per_job"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(cpu.items()))
        print(
            f"  {row['schedulers']} scheduler(s): {row['placements_completions_per_s']:>7,}"
            f" placements+completions/s  (runs {row['runs_per_s']})"
        )
        whose = " (of all the yards' jobs together)" if row["schedulers"] > 1 else ""
        print(f"      CPU ms per job{whose}: {parts}")
    for row in results.get("db_claim", []):
        print(
            f"  placement in the database, {row['clients']} client(s) x {row['per_claim']}:"
            f" {row['jobs_per_s']:>7,} jobs/s, its backends"
            f" {row['claim_backends_cpu_ms_per_job']:.3f} ms CPU per job"
        )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cores": os.cpu_count(),
        "jobs": args.jobs,
        "runs": args.runs,
        "workers": args.workers,
        "slots": args.slots,
        "reports": args.reports,
        "scheduler_command": args.scheduler_command,
        "vacuum_between": args.vacuum_between,
        "ceilings": [],
    }
    for k in sorted(set(args.parallel) - {0}):
        results["ceilings"].append(await scheduler_ceiling(args, k))
    if args.db_claim:
        results["db_claim"] = await db_claim(
            args.claim_jobs, args.runs, concurrency=[1, 2, 4], per_claim=args.per_claim
        )
    results["uptime_at_end"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    return results


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.scheduler_alone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--jobs", type=int, default=20_000, help="jobs per run (per scheduler)")
    p.add_argument("--workers", type=int, default=4, help="synthetic workers")
    p.add_argument("--slots", type=int, default=250, help="slots per synthetic worker")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--reports",
        choices=("folded", "started+completed", "completed"),
        default="folded",
        help="what a synthetic worker reports per dispatch: one completion carrying its"
        " start (what a worker sends for an attempt that ends at once), the two reports"
        " apart, or the completion alone",
    )
    p.add_argument(
        "--parallel",
        type=int,
        nargs="+",
        default=[1],
        help="yards at once (e.g. 1 2: one scheduler, then two summed; 0: none)",
    )
    p.add_argument(
        "--db-claim",
        action="store_true",
        help="also measure placement in the database (no scheduler)",
    )
    p.add_argument(
        "--per-claim",
        type=int,
        nargs="+",
        default=[1, 50],
        help="jobs per claim statement for --db-claim",
    )
    p.add_argument(
        "--vacuum-between",
        action="store_true",
        help="VACUUM jobs and the ready queue before each run (off the clock): no dead entries of earlier runs",
    )
    p.add_argument(
        "--claim-jobs",
        type=int,
        default=5_000,
        help="jobs per run of --db-claim (one per claim is slow: a commit per job)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the scheduler and sample pg_stat_activity in the first run",
    )
    p.add_argument(
        "--scheduler-command",
        default="-m services.scheduler",
        help="python arguments that run the scheduler (an A/B of a variant)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "scheduler-alone.json")
    p.add_argument("--fleet-of", metavar="NAMESPACE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cli(argv: list[str]) -> int:
    args = parse(argv)
    if args.fleet_of:
        asyncio.run(serve_fleet(args.fleet_of, args.workers, args.slots, args.reports))
        return 0
    results = asyncio.run(main(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    report(results)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
