"""``make bench`` / ``python -m bench``: throughput and latency of a real local stack.

Starts its own stack (fresh database, own namespace, api + scheduler + logger + 2
workers, and the bare FastAPI + asyncpg baseline), measures, prints a table and writes
JSON to ``bench/results/``. Each figure is the median of ``--runs`` runs; the machine
is shared and noisy, so compare ratios measured in the same run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import httpx
import orjson
import psutil

from bench.databases import create_migrated, delete_namespace, drop, dsn_of, sqlalchemy_url
from bench.loadgen import LightClient
from bench.peers import DEFAULT_THREADS, Peers
from bench.peers import report as report_peers
from bench.scale import run_scale
from shared.broker.topology import Topology
from shared.states import TERMINAL, JobStatus

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key"
HIGH_RATE = 1000  # single submits per second offered in the second latency measure
MEASURES = ("submit", "batch", "e2e", "peers", "wide", "logging", "latency", "saturation", "scale")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class WorkerShape:
    """What each of the bench's workers offers: threads and CPU units (``demo.echo``
    needs 0.1 unit, so the in-flight jobs per worker are min(threads, 10 x units))."""

    name: str
    threads: int
    cpu_units: float

    @classmethod
    def default(cls) -> WorkerShape:
        return cls("narrow", env_int("BENCH_THREADS", 32), env_float("BENCH_CPU_UNITS", 2.0))

    @classmethod
    def wide(cls) -> WorkerShape:
        threads = env_int("BENCH_WIDE_THREADS", 128)
        return cls("wide", threads, env_float("BENCH_WIDE_CPU_UNITS", threads / 10))

    @property
    def in_flight(self) -> int:
        return min(self.threads, int(self.cpu_units * 10 + 1e-9))

    def describe(self, workers: int) -> dict[str, Any]:
        return {"workers": workers, "threads": self.threads, "cpu_units": self.cpu_units,
                "jobs_in_flight": workers * self.in_flight}  # fmt: skip


class Stack:
    def __init__(self, workers: int) -> None:
        self.db = f"swy_bench_{uuid.uuid4().hex[:8]}"
        self.dsn = dsn_of(self.db)
        self.port, self.bare_port = free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
            "DATABASE_URL": sqlalchemy_url(self.dsn),
            "SWITCHYARD_NAMESPACE": f"bench-{uuid.uuid4().hex[:8]}",
            "SWITCHYARD_API_KEYS": f"{KEY}:admin",
            # The runs offer more requests per second from one key and address than the
            # default limits let through (500 and 1,000/s): what is measured is the
            # yard, not its limiter (which still runs, and costs what it costs).
            "SWITCHYARD_RATE_LIMIT_KEY_PER_SECOND": "1000000",
            "SWITCHYARD_RATE_LIMIT_ADDRESS_PER_SECOND": "1000000",
            "SWITCHYARD_API_PORT": str(self.port),
            "BARE_DSN": self.dsn,
        }
        self.workers = workers
        self.worker_ids: list[str] = []  # every one started: each has a queue of its own
        self.procs: list[subprocess.Popen[bytes]] = []
        self.services: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.bare_url = f"http://127.0.0.1:{self.bare_port}"

    def profile(self, out: Path) -> list[subprocess.Popen[bytes]]:
        """Start py-spy on every service process; raw (collapsed) stacks go to ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        return [
            subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(p.pid),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out / f"{name}.txt"),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, p in self.services.items()
        ]

    @contextlib.contextmanager
    def paused_downstream(self) -> Iterator[None]:
        """Scheduler, logger and workers stopped (SIGSTOP) meanwhile, resumed after."""
        paused = [p for name, p in self.services.items() if name != "api"]
        for p in paused:
            p.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for p in paused:
                p.send_signal(signal.SIGCONT)

    def _start(self, name: str, *args: str) -> None:
        with open(ROOT / "bench" / "results" / f"{name}.log", "wb") as log:  # the child keeps it
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.services[name] = proc

    async def __aenter__(self) -> Stack:
        await create_migrated(self.db)
        self._start("api", "-m", "services.api")
        self._start("scheduler", "-m", "services.scheduler")
        self._start("logger", "-m", "services.logger")
        self._start_workers(WorkerShape.default())
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--port", str(self.bare_port), "--log-level", "warning"],
            cwd=ROOT, env=self.env))  # fmt: skip
        try:
            await self._until_up()
        except BaseException:
            await self.__aexit__()  # no service outlives a stack that did not come up
            raise
        return self

    def _start_workers(self, shape: WorkerShape) -> None:
        self.shape = shape
        for i in range(self.workers):
            worker_id = f"bench-{shape.name}-w{i}"
            self.worker_ids.append(worker_id)
            self._start(f"worker{i}", "-m", "services.worker", "--worker-id", worker_id,
                        "--threads", str(shape.threads), "--cpu-units", str(shape.cpu_units))  # fmt: skip

    async def reshape_workers(self, shape: WorkerShape) -> None:
        """Replace the workers by ones of ``shape`` (the old ones drain and exit first,
        so no job is handed to a worker on its way out)."""
        old = [self.services.pop(f"worker{i}") for i in range(self.workers)]
        for p in old:
            p.terminate()
        for p in old:
            p.wait(timeout=60)
            self.procs.remove(p)
        self._start_workers(shape)
        await self._until_up()

    async def _until_up(self) -> None:
        async with httpx.AsyncClient() as c:
            for url in (f"{self.url}/healthz", f"{self.bare_url}/docs"):
                for _ in range(300):
                    try:
                        if (await c.get(url)).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"{url} did not come up")
        conn = await asyncpg.connect(self.dsn)
        try:
            for _ in range(300):
                alive = await conn.fetchval(
                    "SELECT count(*) FROM workers WHERE state = 'alive' AND id LIKE $1",
                    f"bench-{self.shape.name}-%",
                )
                if alive >= self.workers:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"the {self.shape.name} workers did not register in 30 s")
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        topology = Topology(self.env["SWITCHYARD_NAMESPACE"])
        await delete_namespace(
            topology.namespace, [topology.worker_queue(w) for w in self.worker_ids]
        )
        if os.environ.get("BENCH_KEEP_DATABASE"):
            print(f"kept: {self.dsn}")
            return
        await drop(self.db)


async def submit_rate(url: str, n: int, concurrency: int) -> float:
    """Jobs per second through POST /jobs with ``concurrency`` requests in flight."""
    headers = {"Authorization": f"Bearer {KEY}"}
    # Expire idle connections before uvicorn's 5 s keep-alive does (else a reused one
    # can be closed under a request: ReadError).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2
    )
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as c:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        failures: list[str] = []

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    r = await c.post("/jobs", json={"type": "demo.echo", "payload": {"i": i}})
                except httpx.HTTPError as exc:  # counted and reported, not fatal
                    failures.append(repr(exc))
                    continue
                if r.status_code != 201:
                    failures.append(f"{r.status_code} {r.text[:100]}")

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        if failures:
            print(f"  {url}: {len(failures)} of {n} requests failed, first: {failures[0]}")
        return (n - len(failures)) / elapsed


JobMaker = Callable[[int, int], dict[str, Any]]  # (batch, index) -> one job of a batch


def echo_job(b: int, i: int) -> dict[str, Any]:
    return {"type": "demo.echo", "payload": {"b": b, "i": i}}


def logging_job(b: int, i: int) -> dict[str, Any]:
    """A job that logs one line (``demo.log``): what most real tasks do at least."""
    return {"type": "demo.log", "payload": {"lines": 1}}


async def batch_rate_prepared(url: str, batches: int, size: int) -> float:
    """``batches`` ``POST /jobs/batch`` of ``size`` ``demo.echo`` jobs, one after another:
    the bodies encoded before the clock starts and sent by the light client, so the
    figure is the yard's, not the client's (httpx and its JSON encoding took 14-15 ms of
    CPU a batch of 2,000 on the two cores the yard runs on, the light client 3)."""
    bodies = [orjson.dumps({"jobs": [echo_job(b, i) for i in range(size)]}) for b in range(batches)]
    client = light_client(url, connections=1)
    try:
        start = time.perf_counter()
        for body in bodies:
            status, answer = await client.post("/jobs/batch", body)
            assert status == 201, answer[:300]
        return batches * size / (time.perf_counter() - start)
    finally:
        client.close()


async def batch_rate(url: str, batches: int, size: int, job: JobMaker = echo_job) -> float:
    """The same through httpx, each body built and encoded in the timed loop (the
    end-to-end runs submit this way; the batch measure's figure until the
    thirty-fourth session)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as c:
        start = time.perf_counter()
        for b in range(batches):
            jobs = [job(b, i) for i in range(size)]
            r = await c.post("/jobs/batch", json={"jobs": jobs})
            assert r.status_code == 201, r.text[:300]
        return batches * size / (time.perf_counter() - start)


# The bench's polls read one row until the run's last-submitted job has finished, and
# only then whether any of its jobs is unfinished (a walk of the status index's
# unfinished ranges, dead entries included: 8-18 ms a poll while the run goes on).
# Counting the unfinished jobs five times a second took a tenth of PostgreSQL's time in
# a narrow run, on the machine being measured (its CPU counts in PostgreSQL's share per
# job); counting the completed ones read every row of the run.
UNFINISHED = [str(s) for s in JobStatus if s not in TERMINAL]
LAST_SUBMITTED = (
    "SELECT id FROM jobs WHERE created_at >= $1 ORDER BY created_at DESC, id DESC LIMIT 1"
)
STILL_UNFINISHED = "SELECT status = ANY($2::text[]) FROM jobs WHERE id = $1"
UNFINISHED_SINCE = "SELECT count(*) FROM jobs WHERE status = ANY($1::text[]) AND created_at >= $2"


async def wait_all_completed(dsn: str, since: datetime, n: int, timeout: float) -> datetime:
    """The last ``finished_at`` of the ``n`` jobs submitted since ``since``, once none of
    them is unfinished; raises if they did not all complete."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        last_submitted = await conn.fetchval(LAST_SUBMITTED, since)
        polls = (
            (STILL_UNFINISHED, last_submitted, UNFINISHED),
            (UNFINISHED_SINCE, UNFINISHED, since),
        )
        for poll, *args in polls:
            while await conn.fetchval(poll, *args):
                if time.monotonic() > deadline:
                    left = await conn.fetchval(UNFINISHED_SINCE, UNFINISHED, since)
                    raise TimeoutError(f"{left} of {n} jobs still unfinished after {timeout} s")
                await asyncio.sleep(0.2)
        done, last = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'completed'), max(finished_at) FROM jobs "
            "WHERE created_at >= $1",
            since,
        )
        if done < n:
            raise RuntimeError(
                f"only {done} of {n} jobs completed; the others failed or were cancelled"
            )
        return last  # type: ignore[no-any-return]
    finally:
        await conn.close()


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time used so far by each service, by RabbitMQ and by PostgreSQL (all backends)."""
    out: dict[str, float] = {}
    for name, p in stack.services.items():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(p.pid).cpu_times()
            out[name] = t.user + t.system
    for proc in psutil.process_iter(["name", "cpu_times"]):
        owner = {"beam.smp": "rabbitmq", "postgres": "postgresql"}.get(proc.info["name"] or "")
        if owner and proc.info["cpu_times"] is not None:
            t = proc.info["cpu_times"]
            out[owner] = out.get(owner, 0.0) + t.user + t.system
    return out


_TABLE_WRITES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
"""
_DB_TOTALS = """
SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal
FROM pg_stat_database WHERE datname = current_database()
"""


# Tables whose counters move while the yard is idle (heartbeats, key use): not waited on.
_IDLE_WRITES = ("workers.", "task_types.", "api_keys.")
# A PostgreSQL 15 backend reports its counters at most once a second while busy and 10 s
# after it went idle: the counters are read once they stayed the same this long.
_STATS_SETTLED = 11.0


async def database_writes(dsn: str) -> dict[str, float]:
    """Row writes per table, commits and WAL bytes so far, once the job tables' counters
    have settled (at most 40 s)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 40
        last: dict[str, float] = {}
        since = time.monotonic()
        while True:
            now: dict[str, float] = {}
            for r in await conn.fetch(_TABLE_WRITES):
                for col in ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del"):
                    now[f"{r['relname']}.{col.removeprefix('n_tup_')}"] = r[col]
            totals = await conn.fetchrow(_DB_TOTALS)
            if any(now[k] != last.get(k) for k in now if not k.startswith(_IDLE_WRITES)):
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= _STATS_SETTLED:
                now["commits"], now["wal_bytes"] = totals["xact_commit"], float(totals["wal"])
                return now
            if time.monotonic() > deadline:
                print("  database writes: the counters did not settle in 40 s; read as they are")
                now["commits"], now["wal_bytes"] = totals["xact_commit"], float(totals["wal"])
                return now
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


async def end_to_end(
    stack: Stack,
    n: int,
    profile: Path | None = None,
    job: JobMaker = echo_job,
    log_lines_per_job: int = 0,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Jobs per second from the first submit to the last one completed in the database,
    and the CPU milliseconds each process spent per job meanwhile.

    Also what each job cost the database: row writes per table (inserts, updates, of
    which HOT, deletes), commits and WAL bytes per job, over the run and the quiet
    moment after it (``wal_bytes`` is the whole cluster's).

    With ``profile``, py-spy samples every service process meanwhile (see --profile).
    With ``log_lines_per_job``, the CPU is read once the logger has stored every line
    too (it writes them a moment after the jobs complete); the rate is still up to the
    last completion."""
    batches, size = max(1, n // 500), min(500, n)
    spies = stack.profile(profile) if profile else []
    writes_before = await database_writes(stack.dsn)
    lines_before = await last_log_line(stack.dsn) if log_lines_per_job else 0
    before = cpu_seconds(stack)
    t0 = datetime.now(UTC)
    await batch_rate(stack.url, batches, size, job)
    last = await wait_all_completed(stack.dsn, t0, batches * size, timeout=600)
    if log_lines_per_job:
        await wait_log_lines_stored(stack.dsn, lines_before, batches * size * log_lines_per_job)
    after = cpu_seconds(stack)
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for spy in spies:
        spy.wait(timeout=60)
    total = batches * size
    cpu = {k: round(1000 * (after[k] - before.get(k, 0.0)) / total, 3) for k in after}
    writes_after = await database_writes(stack.dsn)
    writes = {
        k: round((v - writes_before.get(k, 0.0)) / total, 3)
        for k, v in writes_after.items()
        if v != writes_before.get(k, 0.0)
    }
    return total / (last - t0).total_seconds(), cpu, writes


EndToEnd = tuple[float, dict[str, float], dict[str, float]]  # jobs/s, CPU, writes per job


def median_cpu(runs: list[EndToEnd]) -> dict[str, float]:
    return {k: median_of([cpu[k] for _, cpu, _ in runs]) for k in runs[0][1]}


async def last_log_line(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT coalesce(max(id), 0) FROM job_logs")  # type: ignore[no-any-return]
    finally:
        await conn.close()


async def wait_log_lines_stored(dsn: str, after: int, n: int, timeout: float = 60) -> None:
    """Until ``n`` log lines are stored past line id ``after`` (the run's own: nothing
    else writes lines into the bench's database); raises if they are not within
    ``timeout`` (a line lost is a bug, not a slow run). Each poll walks only the new
    lines' ids, not the jobs: the machine being measured runs it."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM job_logs WHERE id > $1"
        while (stored := await conn.fetchval(query, after)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stored} of {n} log lines stored after {timeout:.0f} s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def logging_end_to_end(stack: Stack, n: int, runs: int) -> dict[str, Any]:
    """The end-to-end runs with jobs that each log one line (``demo.log``): a line is a
    message from the worker to the logger (and every API replica), stored in
    ``job_logs``; every line must be stored after each run."""
    done: list[EndToEnd] = []
    for _ in range(runs):
        done.append(await end_to_end(stack, n, job=logging_job, log_lines_per_job=1))
        await wait_idle(stack)
    return {
        "task": "demo.log, one line per job",
        "jobs_per_s": median_of([r for r, _, _ in done]),
        "runs": [round(r, 1) for r, _, _ in done],
        "cpu_ms_per_job": median_cpu(done),
    }


async def wide_end_to_end(stack: Stack, peers: Peers, n: int, runs: int) -> dict[str, Any]:
    """The end-to-end runs again with wide workers (``WorkerShape.wide``), each followed
    by a run of every peer given as many threads per worker: how the figures move with
    the jobs in flight (a no-op's round trip is mostly waiting on commits and hops). The
    workers, ours and the peers', are the default ones again afterwards."""
    shape = WorkerShape.wide()
    await stack.reshape_workers(shape)
    # Each peer is one worker process: it gets all our workers' threads (the same
    # number of jobs executing at once).
    await peers.reshape(threads=stack.workers * shape.threads)
    wide: list[EndToEnd] = []
    for _ in range(runs):
        wide.append(await end_to_end(stack, n))
        await peers.run_each(n)
    ours = median_of([r for r, _, _ in wide])
    by_peer = peers.results(ours)
    await stack.reshape_workers(WorkerShape.default())
    await peers.reshape(threads=DEFAULT_THREADS)
    return {
        **shape.describe(stack.workers),
        "jobs_per_s": ours,
        "runs": [round(r, 1) for r, _, _ in wide],
        "cpu_ms_per_job": median_cpu(wide),
        **{k.removeprefix("end_to_end_"): v for k, v in by_peer.items() if k.startswith("end_to_end_vs_")},
        "peers": {name: {"jobs_per_s": p.get("end_to_end_jobs_per_s"), "settings": p["settings"],
                         **({"failed_runs": p["failed_runs"]} if "failed_runs" in p else {})}
                  for name, p in by_peer.get("peers", {}).items()},
    }  # fmt: skip


def _client_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


# The load generators the latency runs can use (``client``): the light one is the
# target figures' (bench/loadgen.py), aiohttp's runs stay beside it for comparison with
# the earlier sessions' figures, httpx is still selectable.
CLIENTS = ("light", "aiohttp", "httpx")
Post = Callable[[dict[str, Any]], Awaitable[tuple[int, bytes]]]


def light_client(url: str, *, connections: int) -> LightClient:
    """The light load generator to ``url``, as the bench's key, over at most
    ``connections`` keep-alive connections."""
    where = urlsplit(url)
    return LightClient(where.hostname or "127.0.0.1", where.port or 80,
                       {"Authorization": f"Bearer {KEY}"}, limit=connections)  # fmt: skip


@contextlib.asynccontextmanager
async def job_poster(url: str, client: str, *, connections: int) -> AsyncIterator[Post]:
    """``POST /jobs`` with a JSON body through ``client``, over at most ``connections``
    keep-alive connections: the answer's status and body."""
    headers = {"Authorization": f"Bearer {KEY}"}
    if client == "light":
        light = light_client(url, connections=connections)

        async def post_light(body: dict[str, Any]) -> tuple[int, bytes]:
            return await light.post("/jobs", orjson.dumps(body))

        try:
            yield post_light
        finally:
            light.close()
    elif client == "aiohttp":
        # Expire idle connections before uvicorn's 5 s keep-alive does.
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=2)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            url, headers=headers, connector=connector, timeout=timeout
        ) as session:

            async def post_aiohttp(body: dict[str, Any]) -> tuple[int, bytes]:
                async with session.post("/jobs", json=body) as r:
                    return r.status, await r.read()

            yield post_aiohttp
    elif client == "httpx":
        limits = httpx.Limits(max_connections=connections, keepalive_expiry=2)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=120, limits=limits
        ) as c:

            async def post_httpx(body: dict[str, Any]) -> tuple[int, bytes]:
                r = await c.post("/jobs", json=body)
                return r.status_code, r.content

            yield post_httpx
    else:
        raise ValueError(f"unknown load generator {client!r}: one of {', '.join(CLIENTS)}")


async def latency(
    stack: Stack, rate: float, seconds: float, client: str = "light"
) -> dict[str, float]:
    """Submit single jobs at a fixed offered rate; submit -> started quantiles.

    The load generator shares the 2 cores with the stack, so its own CPU is part of the
    experiment: the light client costs a fraction of aiohttp's ~0.4 ms of CPU per
    request here, httpx 1.3-3 ms (at 200/s up to two thirds of a core taken from the
    stack). ``client`` picks it; ``client_cpu_ms_per_request`` says what it used."""
    n = int(rate * seconds)
    since = datetime.now(UTC)
    cpu0 = _client_cpu()
    async with job_poster(stack.url, client, connections=64) as post:
        answers = await _paced(rate, n, lambda i: post({"type": "demo.echo", "payload": {"i": i}}))
    client_ms = 1000 * (_client_cpu() - cpu0) / max(1, n)
    accepted = sum(1 for a in answers if isinstance(a, tuple) and a[0] == 201)
    if accepted < n:
        print(f"  latency run ({client}): {n - accepted} of {n} submissions failed")
    q = await started_quantiles(stack, since, accepted)
    return {**q, "client_cpu_ms_per_request": round(client_ms, 3)}


async def _paced(rate: float, n: int, one: Any) -> list[Any]:
    """Start ``one(i)`` at ``i / rate`` seconds, whatever the earlier ones are doing."""
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    return await asyncio.gather(*tasks, return_exceptions=True)


async def latency_offered(
    stack: Stack, rate: float, seconds: float, client: str = "light"
) -> dict[str, Any]:
    """Single submits offered at ``rate`` whether or not the API keeps up: submit ->
    started from the moment each request was due to be sent (the client's clock, the
    same machine's), so time spent queued before the API took it counts, the client's
    own lag included; and the rate the API accepted them at."""
    due: dict[str, float] = {}
    last_answer = 0.0
    first = time.time()
    cpu0 = _client_cpu()
    async with job_poster(stack.url, client, connections=256) as post:

        async def one(i: int) -> int:
            nonlocal last_answer
            status, body = await post({"type": "demo.echo", "payload": {"i": i}})
            last_answer = max(last_answer, time.time())
            if status == 201:
                due[orjson.loads(body)["id"]] = first + i / rate
            return status

        statuses = await _paced(rate, int(rate * seconds), one)
    client_ms = 1000 * (_client_cpu() - cpu0) / max(1, len(statuses))
    # A status, or the name of what the request raised (a timeout, a reset connection).
    refused = collections.Counter(
        type(st).__name__ if isinstance(st, BaseException) else str(st)
        for st in statuses
        if st != 201
    )
    if refused:
        print(f"  latency run ({rate:g}/s offered, {client}): of {len(statuses)} submissions,"
              f" refused or failed: {dict(refused)}")  # fmt: skip
    if not due:
        raise RuntimeError(f"no submission of the {rate:g}/s run was accepted")
    started = await started_times(stack.dsn, list(due), timeout=600)
    ms = sorted(1000 * (started[job] - at) for job, at in due.items())
    return {
        "offered_per_s": rate,
        "accepted_per_s": round(len(due) / max(1e-9, last_answer - first), 1),
        **({"refused": dict(refused)} if refused else {}),
        **{f"p{q}": round(ms[min(len(ms) - 1, int(len(ms) * q / 100))], 1) for q in (50, 95, 99)},
        "client_cpu_ms_per_request": round(client_ms, 3),
    }


async def started_times(dsn: str, ids: list[str], timeout: float) -> dict[str, float]:
    """When each job started (epoch seconds), once all have completed."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch(
                "SELECT id::text, EXTRACT(EPOCH FROM started_at)::float8 AS started FROM jobs"
                " WHERE id = ANY($1::uuid[]) AND status = 'completed'",
                ids,
            )
            if len(rows) == len(ids):
                return {r["id"]: r["started"] for r in rows}
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(rows)} of {len(ids)} jobs completed in {timeout} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def latency_saturated(stack: Stack, seconds: float) -> dict[str, float]:
    """Submit batches of 500 as fast as the API takes them for ``seconds``: the
    pipeline is saturated; submit -> started quantiles (mostly time spent queued)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    since = datetime.now(UTC)
    n = 0
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=120) as c:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            jobs = [{"type": "demo.echo", "payload": {"i": i}} for i in range(500)]
            r = await c.post("/jobs/batch", json={"jobs": jobs})
            assert r.status_code == 201, r.text[:300]
            n += 500
    return await started_quantiles(stack, since, n)


async def started_quantiles(stack: Stack, since: datetime, n: int) -> dict[str, float]:
    await wait_all_completed(stack.dsn, since, n, timeout=600)
    conn = await asyncpg.connect(stack.dsn)
    try:
        rows = await conn.fetch(
            "SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000 AS ms,"
            " EXTRACT(EPOCH FROM dispatched_at - created_at) * 1000 AS placed"
            " FROM jobs WHERE created_at >= $1",
            since,
        )
    finally:
        await conn.close()
    ms = sorted(float(r["ms"]) for r in rows)
    q = statistics.quantiles(ms, n=100)
    # Where the time goes: submit -> placed (the scheduler's claim transaction) is the
    # scheduler's share, the rest is dispatch delivery and the worker picking it up.
    placed = statistics.quantiles(sorted(float(r["placed"]) for r in rows), n=100)
    return {
        "p50": statistics.median(ms), "p95": q[94], "p99": q[98], "jobs": len(ms),
        "placed_p50": placed[49], "placed_p99": placed[98],
    }  # fmt: skip


def median_of(runs: list[float]) -> float:
    return statistics.median(runs)


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: median_of([run[k] for run in runs]) for k in keys}


async def by_client(
    stack: Stack, runs: int, measure: Callable[[str], Awaitable[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """``measure`` with the light load generator and with aiohttp, taken in turn
    ``runs`` times, the stack idle before each run; the runs by client."""
    done: dict[str, list[dict[str, Any]]] = {"light": [], "aiohttp": []}
    for _ in range(runs):
        for client, client_runs in done.items():
            client_runs.append(await measure(client))
            await wait_idle(stack)
    return done


async def machine(stack: Stack) -> dict[str, Any]:
    conn = await asyncpg.connect(stack.dsn)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    rabbit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        rabbit = out or rabbit
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "postgresql": pg,
        "rabbitmq": rabbit,
        "platform": sys.platform,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    runs = args.runs
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "runs": runs,
        "jobs": args.jobs,
        "worker_threads": int(os.environ.get("BENCH_THREADS", "32")),
        "worker_cpu_units": float(os.environ.get("BENCH_CPU_UNITS", "2")),
    }
    want = set(args.only.split(",")) if args.only else set(MEASURES)
    async with Stack(workers=2) as stack:
        results["machine"] = await machine(stack)
        for key, conc in (("sequential", 1), ("concurrent", 32)):
            if "submit" not in want:
                break
            # The baseline first, on a quiet stack: Switchyard's own runs leave jobs
            # that its services are still working off for a while.
            bare = [await submit_rate(stack.bare_url, args.submits, conc) for _ in range(runs)]
            ours = [await submit_rate(stack.url, args.submits, conc) for _ in range(runs)]
            results[f"submit_{key}_per_s"] = median_of(ours)
            results[f"bare_endpoint_{key}_per_s"] = median_of(bare)
            results[f"submit_{key}_ratio"] = median_of(ours) / median_of(bare)
            await wait_idle(stack)
            # The API's own share: the same requests with the scheduler, logger and
            # workers paused (SIGSTOP), so only the API, PostgreSQL and RabbitMQ work.
            # Informative: the target is the figure above, with the stack running.
            with stack.paused_downstream():
                alone = [await submit_rate(stack.url, args.submits, conc) for _ in range(runs)]
            results[f"submit_{key}_api_alone_per_s"] = median_of(alone)
            await wait_idle(stack)
        if "batch" in want:
            prepared, through_httpx = [], []
            for _ in range(runs):  # the two clients in turn
                prepared.append(await batch_rate_prepared(stack.url, 5, 2000))
                through_httpx.append(await batch_rate(stack.url, 5, 2000))
            results["submit_batch_per_s"] = median_of(prepared)
            results["submit_batch_httpx_per_s"] = median_of(through_httpx)
            await wait_idle(stack)
        # Celery and Dramatiq on the same broker (bench/peers.py), interleaved with our
        # own end-to-end runs: ours, Celery, Dramatiq, ``runs`` times; same job count.
        e2e: list[EndToEnd] = []
        async with Peers(enabled="peers" in want) as peers:
            for _ in range(runs if want & {"e2e", "peers"} else 0):
                if "e2e" in want:
                    e2e.append(await end_to_end(stack, args.jobs, args.profile))
                await peers.run_each(args.jobs)
            if e2e:
                results["end_to_end_jobs_per_s"] = median_of([r for r, _, _ in e2e])
                results["end_to_end_runs"] = [round(r, 1) for r, _, _ in e2e]  # peers' order
                results["end_to_end_workers"] = stack.shape.describe(stack.workers)
                results["cpu_ms_per_job"] = median_cpu(e2e)
                results["database_writes_per_job"] = {
                    k: median_of([w.get(k, 0.0) for _, _, w in e2e])
                    for k in sorted({k for _, _, w in e2e for k in w})
                }
            results.update(peers.results(results.get("end_to_end_jobs_per_s")))
            if e2e and "wide" in want:
                results["end_to_end_wide"] = await wide_end_to_end(stack, peers, args.jobs, runs)
        if "logging" in want:
            results["end_to_end_logging"] = await logging_end_to_end(stack, args.jobs, runs)
        keys = ("p50", "p95", "p99", "placed_p50", "placed_p99")
        if "latency" in want:
            # The target figures with the light load generator; the same runs with
            # aiohttp beside them, taken in turn, for comparison.
            lat = await by_client(stack, runs, lambda c: latency(stack, args.rate, args.seconds, c))
            for key, client in (("latency_ms", "light"), ("latency_aiohttp_client_ms", "aiohttp")):
                results[key] = {
                    "offered_per_s": args.rate, "seconds": args.seconds, "client": client,
                    **medians(lat[client], (*keys, "client_cpu_ms_per_request")),
                }  # fmt: skip
            # The second rate, offered whether or not the API keeps up.
            high = await by_client(
                stack, runs, lambda c: latency_offered(stack, HIGH_RATE, args.seconds / 3, c)
            )
            for key, client in (
                ("latency_high_rate_ms", "light"), ("latency_high_rate_aiohttp_client_ms", "aiohttp")
            ):  # fmt: skip
                results[key] = {
                    "offered_per_s": HIGH_RATE, "seconds": args.seconds / 3,
                    "from": "when each request was due to be sent", "client": client,
                    **medians(high[client],
                              ("accepted_per_s", "p50", "p95", "p99", "client_cpu_ms_per_request")),
                }  # fmt: skip
        if "saturation" in want:
            sat = [await latency_saturated(stack, args.saturation_seconds) for _ in range(runs)]
            results["latency_saturation_ms"] = {
                "offered_per_s": "as many as accepted in batches of 500", "seconds": args.saturation_seconds,
                **medians(sat, keys),
            }  # fmt: skip
    if args.scale and "scale" in want:
        results["scale"] = await run_scale([10_000, 1_000_000, 5_000_000])
    return results


def save(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {out}")


def print_cpu(cpu: dict[str, float]) -> None:
    """The indented line of CPU milliseconds per job under an end-to-end figure."""
    print(f"{'  CPU ms per job':34} " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
          + f"; total {sum(cpu.values()):.2f}")  # fmt: skip


def report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nSwitchyard benchmark: {r['runs']} run(s) each, medians; {m['cores']} cores, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}, RabbitMQ {m['rabbitmq']}"
    )
    print("The machine is shared and noisy: read the ratios.\n")
    print(f"{'measure':34} {'switchyard':>12} {'bare FastAPI+asyncpg':>22} {'ratio':>7}")
    for key, label in (
        ("sequential", "POST /jobs sequential"),
        ("concurrent", "POST /jobs 32 concurrent"),
    ):
        if f"submit_{key}_per_s" in r:
            ours, bare = r[f"submit_{key}_per_s"], r[f"bare_endpoint_{key}_per_s"]
            print(f"{label:34} {ours:10.0f}/s {bare:20.0f}/s {ours / bare:7.2f}")
            alone = r.get(f"submit_{key}_api_alone_per_s")
            if alone:
                print(f"{'  the API alone (downstream paused)':34} {alone:10.0f}/s "
                      f"{'':20}   {alone / bare:7.2f}")  # fmt: skip
    if "submit_batch_per_s" in r:
        print(f"{'POST /jobs/batch (2,000/request)':34} {r['submit_batch_per_s']:10.0f}/s")
        if "submit_batch_httpx_per_s" in r:
            print(f"{'  the same through httpx':34} {r['submit_batch_httpx_per_s']:10.0f}/s")
    if "end_to_end_jobs_per_s" in r:
        print(
            f"{'end to end (demo.echo)':34} {r['end_to_end_jobs_per_s']:10.0f}/s   "
            f"({r['jobs']:,} jobs, 2 workers x {r['worker_threads']} threads, "
            f"{r['end_to_end_workers']['jobs_in_flight']} jobs in flight)"
        )
        print_cpu(r["cpu_ms_per_job"])
        writes = r.get("database_writes_per_job", {})
        if writes:
            print(f"{'  database writes per job':34} "
                  + ", ".join(f"{k} {v:g}" for k, v in writes.items() if k != "wal_bytes")
                  + f"; WAL {writes.get('wal_bytes', 0) / 1024:.1f} KiB")  # fmt: skip
    report_peers(r)
    wide = r.get("end_to_end_wide")
    if wide:
        ratios = ", ".join(
            f"switchyard / {k.removeprefix('vs_')} {v:.2f}"
            for k, v in wide.items()
            if k.startswith("vs_")
        )
        print(
            f"{'end to end, wide workers':34} {wide['jobs_per_s']:10.0f}/s   "
            f"({wide['workers']} workers x {wide['threads']} threads, {wide['cpu_units']:g} cpu units: "
            f"{wide['jobs_in_flight']} jobs in flight); {ratios}"
        )
        print_cpu(wide["cpu_ms_per_job"])
        for name, peer in wide["peers"].items():
            for why in peer.get("failed_runs", []):
                print(f"{'  wide peer: ' + name:34} a run failed: {why}")
    logging = r.get("end_to_end_logging")
    if logging:
        print(f"{'end to end, a log line per job':34} {logging['jobs_per_s']:10.0f}/s   "
              f"(demo.log; runs {', '.join(f'{x:.0f}' for x in logging['runs'])})")  # fmt: skip
        print_cpu(logging["cpu_ms_per_job"])
    for key, label in (
        ("latency_high_rate_ms", "submit -> started, 1,000/s offered"),
        ("latency_high_rate_aiohttp_client_ms", "  the same, aiohttp load generator"),
        ("latency_ms", "submit -> started"),
        ("latency_aiohttp_client_ms", "  the same, aiohttp load generator"),
        ("latency_saturation_ms", "  at saturation"),
    ):
        if key in r:
            la = r[key]
            if "accepted_per_s" in la:  # offered whether or not the API keeps up
                where = (f"from when each request was due; the API accepted "
                         f"{la['accepted_per_s']:.0f}/s")  # fmt: skip
            else:
                where = (f"offered: {la['offered_per_s']}/s for {la['seconds']:g} s; submit "
                         f"-> placed p50 {la['placed_p50']:.1f} ms, p99 {la['placed_p99']:.1f} ms")  # fmt: skip
            print(f"{label:34} p50 {la['p50']:.1f} ms, p95 {la['p95']:.1f} ms, "
                  f"p99 {la['p99']:.1f} ms ({where})")  # fmt: skip
            if "client" in la:
                print(f"{'':34} load generator: {la['client']}, "
                      f"{la['client_cpu_ms_per_request']:.2f} ms CPU per request")  # fmt: skip
    if "scale" in r:
        ms, ratio = r["scale"]["ms"], r["scale"]["ratio_to_smallest"]
        sizes = list(ms)
        print(
            f"\n{'scale (median ms; ratio to ' + sizes[0] + ' rows)':34} "
            + "".join(f"{s:>18}" for s in sizes)
        )
        for op in ms[sizes[0]]:
            cells = "".join(f"{ms[s][op]:>9.3f} ({ratio[s][op]:>4.2f}x)" for s in sizes)
            print(f"{op:34} {cells}")


async def wait_idle(stack: Stack, timeout: float = 300) -> None:
    """Let the stack work off what a measure left (so the next starts from quiet)."""
    conn = await asyncpg.connect(stack.dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE status = ANY($1::text[])", UNFINISHED
            )
            if left == 0:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{left} jobs still not finished after {timeout} s")
    finally:
        await conn.close()


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        type=int,
        default=env_int("BENCH_RUNS", 3),
        help="runs per measure (medians are reported)",
    )
    p.add_argument(
        "--jobs", type=int, default=env_int("BENCH_JOBS", 20_000), help="jobs in the end-to-end run"
    )
    p.add_argument("--submits", type=int, default=500, help="requests per submit-rate run")
    p.add_argument("--rate", type=float, default=200, help="offered rate for the latency run")
    p.add_argument(
        "--seconds",
        type=float,
        default=float(env_int("BENCH_SECONDS", 30)),
        help="duration of each latency run",
    )
    p.add_argument(
        "--saturation-seconds", type=float, default=5, help="duration of each saturation run"
    )
    p.add_argument(
        "--scale",
        type=int,
        default=env_int("BENCH_SCALE", 1),
        help="1: measure claim/status/list at 10k, 1M, 5M rows",
    )
    p.add_argument(
        "--out",
        default=os.environ.get("BENCH_OUT") or str(ROOT / "bench" / "results" / "latest.json"),
    )
    p.add_argument(
        "--only",
        default=os.environ.get("BENCH_ONLY", ""),
        help=f"comma-separated subset of {','.join(MEASURES)} (default: all; for development;"
        " the committed results come from full runs)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy every service during the end-to-end runs (raw stacks into this directory)",
    )
    arguments = p.parse_args()
    measured = asyncio.run(main(arguments))
    report(measured)
    save(measured, Path(arguments.out))
