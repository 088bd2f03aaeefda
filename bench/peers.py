"""Celery and Dramatiq no-op peers, on the same broker and machine as our end to end.

The teams we want weigh Switchyard against Celery or Dramatiq on RabbitMQ, so the bench
runs them beside our own end-to-end runs, interleaved (ours, Celery, Dramatiq, repeated
``--runs`` times), with the same job count, and reports the ratio of the medians.

Each peer is a long-lived worker (like our stack, started once, warm across runs) and a
producer process per run that sends N no-op tasks in a loop. Neither keeps results, so
the worker counts executions itself (bench/peer_tally.py): a run's end to end is from
the producer's first send to the moment the worker finished the last of N distinct
tasks (both wall clocks of this machine). Our own is from the first batch POST to the
last ``finished_at`` in the database, so both include sending and everything after it.

Queues are our own names on the broker's default vhost (``bench-peer-<id>``), deleted
when the bench is done. A peer whose package is not installed is skipped with a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import psutil

from bench.peer_tally import read_done

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# A peer run that has not finished by then is recorded as failed (see Peers.run_each).
RUN_TIMEOUT_S = float(os.environ.get("BENCH_PEER_TIMEOUT", 600))
DEFAULT_THREADS = 8  # per peer worker; the wide series gives them as many as ours


@dataclass(frozen=True)
class PeerSpec:
    name: str
    package: str  # the distribution that must be installed; the peer is skipped without it
    app: str  # module with the task; run as __main__ it is the producer
    worker: tuple[str, ...]  # after ``python -m``
    settings: str  # what it runs with, for the JSON and docs
    queue_suffixes: tuple[str, ...]  # queues it declares beside ours, deleted after
    own_exchange: bool  # whether it declares an exchange named like the queue


PEERS = (
    PeerSpec(
        name="celery",
        package="celery",
        app="bench.peer_celery_app",
        worker=(
            "celery",
            "-A",
            "bench.peer_celery_app",
            "worker",
            "-P",
            "threads",
            "-c",
            "{threads}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ),
        settings="RabbitMQ broker, threads pool x {threads}, acks late, prefetch multiplier 4 "
        "(the default: 4 x threads in flight), no result backend, apply_async in a loop",
        queue_suffixes=("",),
        own_exchange=True,
    ),
    PeerSpec(
        name="dramatiq",
        package="dramatiq",
        app="bench.peer_dramatiq_app",
        worker=(
            "dramatiq",
            "bench.peer_dramatiq_app",
            "--processes",
            "1",
            "--threads",
            "{threads}",
        ),
        settings="RabbitmqBroker, 1 process x {threads} threads, default middleware and prefetch "
        "(2 x threads), no results, no publisher confirms, send in a loop",
        queue_suffixes=("", ".DQ", ".XQ"),
        own_exchange=False,
    ),
)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (Dramatiq forks its worker process)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _rabbitmq_cpu() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] == "beam.smp" and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


class PeerWorker:
    """One peer's worker process and its queues, for the length of the bench."""

    def __init__(self, spec: PeerSpec, done_dir: Path) -> None:
        self.spec = spec
        self.done_dir = done_dir
        self.queue = f"bench-peer-{spec.name}-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "PEER_QUEUE": self.queue, "PEER_DONE_DIR": str(done_dir)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = ROOT / "bench" / "results" / f"peer-{spec.name}.log"
        self.threads = DEFAULT_THREADS

    @property
    def settings(self) -> str:
        return self.spec.settings.format(threads=self.threads)

    async def start(self) -> None:
        self._spawn()
        await self._until_consuming(timeout=60)

    async def restart(self, threads: int) -> None:
        """The same worker on the same queue with ``threads`` threads."""
        self._terminate()
        self.threads = threads
        await self.start()

    async def start_afresh(self) -> None:
        """After a run that did not finish: the worker killed, what it left on its
        queues purged (so that the next run counts only its own tasks), started again."""
        self._terminate()
        async with await aio_pika.connect(AMQP_URL) as conn:
            channel = await conn.channel()
            # The broker requeues a killed worker's unacked messages once it sees the
            # connection gone: purged before that, they would come back.
            main = await channel.declare_queue(self.queue, passive=True)
            deadline = time.monotonic() + 30
            while main.declaration_result.consumer_count and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                main = await channel.declare_queue(self.queue, passive=True)
            for suffix in self.spec.queue_suffixes:
                await (await channel.get_queue(self.queue + suffix, ensure=False)).purge()
        await self.start()

    def _terminate(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _spawn(self) -> None:
        args = [a.format(threads=self.threads) for a in self.spec.worker]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def _until_consuming(self, timeout: float) -> None:
        """Ready when the broker shows a consumer on the peer's queue."""
        deadline = time.monotonic() + timeout
        async with await aio_pika.connect(AMQP_URL) as conn:
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                    channel = await conn.channel()
                    q = await channel.declare_queue(self.queue, passive=True)
                    consumers = q.declaration_result.consumer_count
                    await channel.close()
                    if consumers:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.spec.name} worker not consuming after {timeout} s: {self.log}")

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.spec.name} worker exited; log {self.log}:\n{tail}")

    async def run(self, n: int) -> dict[str, Any]:
        """One end-to-end run of ``n`` no-op tasks: jobs/s and CPU ms per job."""
        assert self.proc is not None
        run = uuid.uuid4().hex[:12]
        worker0, rabbit0 = _tree_cpu(self.proc.pid), _rabbitmq_cpu()
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.spec.app, run, str(n),
            cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(producer.communicate(), timeout=RUN_TIMEOUT_S)
        except TimeoutError:
            producer.kill()
            await producer.wait()
            what = f"{self.spec.name}: the producer did not finish in {RUN_TIMEOUT_S} s"
            raise TimeoutError(what) from None
        if producer.returncode != 0:
            raise RuntimeError(f"{self.spec.name} producer failed: {err.decode()[-2000:]}")
        sent = json.loads(out.decode().strip().splitlines()[-1])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (finished := read_done(self.done_dir, run)) is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spec.name}: {n} tasks not done in {RUN_TIMEOUT_S} s")
            await asyncio.sleep(0.1)
        worker1, rabbit1 = _tree_cpu(self.proc.pid), _rabbitmq_cpu()
        return {
            "jobs_per_s": n / (finished - sent["first_send"]),
            "send_per_s": n / sent["sent_s"],
            "cpu_ms_per_job": {
                "producer": 1000 * sent["cpu_s"] / n,
                "worker": 1000 * (worker1 - worker0) / n,
                "rabbitmq": 1000 * (rabbit1 - rabbit0) / n,
            },
        }

    async def stop(self) -> None:
        self._terminate()
        async with await aio_pika.connect(AMQP_URL) as conn:
            channel = await conn.channel()
            for suffix in self.spec.queue_suffixes:
                await channel.queue_delete(self.queue + suffix)
            if self.spec.own_exchange:
                await channel.exchange_delete(self.queue)


class Peers:
    """The installed peers, started for a ``with`` block; nothing when not ``enabled``."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.done_dir = Path(tempfile.gettempdir())  # made our own in __aenter__
        self.workers: list[PeerWorker] = []
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.failed: dict[str, list[str]] = {}  # why each run that did not finish failed

    async def __aenter__(self) -> Peers:
        if not self.enabled:
            return self
        self.done_dir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        for spec in PEERS:
            if importlib.util.find_spec(spec.package) is None:
                print(f"  peers: {spec.name} is not installed; skipped (pip install '.[dev]')")
                continue
            worker = PeerWorker(spec, self.done_dir)
            self.workers.append(worker)  # before start: stopped and cleaned up either way
            await worker.start()
            self.runs[spec.name] = []
            self.failed[spec.name] = []
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.workers:
            await worker.stop()
        if self.enabled:
            shutil.rmtree(self.done_dir, ignore_errors=True)

    async def run_each(self, n: int) -> None:
        """One run of every peer, in turn (called between our own runs).

        A run that does not finish in RUN_TIMEOUT_S is recorded as failed (the JSON's
        ``failed_runs``) and its worker started afresh: one hung peer does not end the
        bench and lose what was measured before it. A worker that exited still does."""
        for worker in self.workers:
            name = worker.spec.name
            try:
                self.runs[name].append(await worker.run(n))
            except TimeoutError as exc:
                print(f"  peer {name}: {exc}; the run counts as failed, the worker is restarted")
                self.failed[name].append(str(exc))
                await worker.start_afresh()

    async def reshape(self, threads: int) -> None:
        """Start a new series with ``threads`` threads per peer worker (beside another
        shape of our own stack): the runs so far are forgotten."""
        for worker in self.workers:
            await worker.restart(threads)
        # New lists: results() handed out the old ones (the series before keeps them).
        self.runs = {name: [] for name in self.runs}
        self.failed = {name: [] for name in self.failed}

    def results(self, ours_per_s: float | None) -> dict[str, Any]:
        """JSON keys: ``peers`` (each peer's medians) and, with our own end to end in
        the same run, ``end_to_end_vs_<peer>`` (our median over the peer's)."""
        out: dict[str, Any] = {}
        peers: dict[str, Any] = {}
        for worker in self.workers:
            name, runs = worker.spec.name, self.runs[worker.spec.name]
            failed = self.failed[name]
            if not runs:
                if failed:
                    peers[name] = {"settings": worker.settings, "failed_runs": failed}
                continue
            median = statistics.median(r["jobs_per_s"] for r in runs)
            peers[name] = {
                "version": importlib.metadata.version(worker.spec.package),
                "settings": worker.settings,
                "end_to_end_jobs_per_s": median,
                "end_to_end_runs": [round(r["jobs_per_s"], 1) for r in runs],
                "send_per_s": statistics.median(r["send_per_s"] for r in runs),
                "cpu_ms_per_job": {
                    k: round(statistics.median(r["cpu_ms_per_job"][k] for r in runs), 3)
                    for k in runs[0]["cpu_ms_per_job"]
                },
                **({"failed_runs": failed} if failed else {}),
            }
            if ours_per_s is not None:
                out[f"end_to_end_vs_{name}"] = ours_per_s / median
        if peers:
            out["peers"] = peers
        return out


def report(r: dict[str, Any]) -> None:
    """The peers' rows of the printed table."""
    for name, peer in r.get("peers", {}).items():
        for why in peer.get("failed_runs", []):
            print(f"{'  peer: ' + name:34} a run failed: {why}")
        if "end_to_end_jobs_per_s" not in peer:
            continue
        ratio = r.get(f"end_to_end_vs_{name}")
        print(
            f"{'  peer: ' + name + ' ' + peer['version']:34} "
            f"{peer['end_to_end_jobs_per_s']:10.0f}/s   "
            + (f"switchyard / {name} {ratio:.2f}" if ratio is not None else "(no e2e to compare)")
        )
        cpu = peer["cpu_ms_per_job"]
        print(
            f"{'    CPU ms per job':34} "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            + f"; total {sum(cpu.values()):.2f}"
        )
