"""Prometheus metrics (prometheus-client), one registry per app.

Counters and histograms come from the ``job.state`` events this replica receives.
Every API replica receives every event, so each reports the whole cluster's counts:
aggregate them across replicas with ``max``, not ``sum``. Submissions are counted by
the replica that accepted them (``sum`` is right for those). Gauges (queue depth,
workers, the ready backlog, the fleet's free capacity) are read from the database at
scrape time, so every replica reports the same value: aggregate them with ``max``.

The ready backlog (``switchyard_ready_jobs``) is what an autoscaler should watch, not the
RabbitMQ queues: dispatch queues are short by design, the backlog lives in PostgreSQL.
It is counted from what holds exactly the ready jobs, both carrying ``type``: the ready
queue (``ready_jobs``, the claimable ones) and the partial covering index of the parked
ones (``jobs_parked_idx``): a scan over the backlog, never over the finished jobs,
whatever the table's size (docs/operations.md, "Metrics").
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.summaries import StateSummary
from shared.db import fetch
from shared.messages import JobStateChanged, Message
from shared.states import TERMINAL
from shared.stats import depth_by_status_and_priority, list_workers

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# The parked half matches the partial index's predicate word for word, so the planner
# can answer it with an index-only scan of that index (checked by a test with EXPLAIN).
READY_JOBS_BY_TYPE = """
SELECT type, false AS parked, count(*) AS n FROM ready_jobs GROUP BY type
UNION ALL
SELECT type, true AS parked, count(*) AS n FROM jobs
WHERE status = 'ready' AND parked GROUP BY type
"""
FREE_RESOURCES = ("cpu_units", "memory_mb", "slots")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(
            "switchyard_jobs_submitted",
            "Jobs accepted by this API replica",
            ["type", "priority"],
            registry=r,
        )
        self.finished = Counter(
            "switchyard_jobs_finished",
            "Jobs that reached a terminal status (completed, failed, cancelled)",
            ["type", "outcome"],
            registry=r,
        )
        self.attempts_ended = Counter(
            "switchyard_attempts_ended",
            "Attempts that ended, by the status that came next",
            ["type", "next_status"],
            registry=r,
        )
        self.duration = Histogram(
            "switchyard_job_duration_seconds",
            "Run time of an attempt, start to end, by type and outcome",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "switchyard_dispatch_latency_seconds",
            "Time from ready to dispatched (running), by priority-blind type",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "switchyard_queue_depth",
            "Unfinished jobs by status and priority",
            ["status", "priority"],
            registry=r,
        )
        self.workers = Gauge(
            "switchyard_workers", "Workers seen in the last hour by state", ["state"], registry=r
        )
        self.worker_capacity = Gauge(
            "switchyard_worker_capacity",
            "Capacity of each live worker",
            ["worker", "resource"],
            registry=r,
        )
        self.worker_allocated = Gauge(
            "switchyard_worker_allocated",
            "Resources allocated on each live worker",
            ["worker", "resource"],
            registry=r,
        )

        self.ready_jobs = Gauge(
            "switchyard_ready_jobs",
            'Ready jobs waiting for a worker, by task type; parked="true": no live worker '
            "could run them even empty (its type runs nowhere, or they are too large)",
            ["task_type", "parked"],
            registry=r,
        )
        self.free = {
            resource: Gauge(
                f"switchyard_free_{resource}",
                f"Free {resource.replace('_', ' ')} over the live workers that take work "
                "(capacity minus allocated; draining and dead workers count nothing)",
                registry=r,
            )
            for resource in FREE_RESOURCES
        }

    def observe(self, message: Message | StateSummary) -> None:
        """Listener for the event hub: a whole event, or a state event's summary."""
        if not isinstance(message, JobStateChanged | StateSummary) or message.old_status is None:
            return
        new = message.new_status
        if new == "running" and message.wait_seconds is not None:
            self._child(self.dispatch_latency, message.type).observe(message.wait_seconds)
        if message.old_status == "running" and new != "running":
            self._child(self.attempts_ended, message.type, new).inc()
            if message.duration_seconds is not None:
                self._child(self.duration, message.type, new).observe(message.duration_seconds)
        if new in TERMINAL:
            self._child(self.finished, message.type, new).inc()

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: every event of every job comes
        here, and ``labels`` validates and locks on each call. (These metrics are never
        cleared, so a child, once made, stays the one the registry reports.)"""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def render(self, session: AsyncSession, *, lease_seconds: float) -> bytes:
        self.queue_depth.clear()
        for status, priority, n in await depth_by_status_and_priority(session):
            self.queue_depth.labels(status, priority).set(n)
        self.ready_jobs.clear()
        for row in await fetch(session, READY_JOBS_BY_TYPE):
            self.ready_jobs.labels(row["type"], "true" if row["parked"] else "false").set(row["n"])
        workers = await list_workers(session, lease_seconds=lease_seconds)
        self.workers.clear()
        self.worker_capacity.clear()
        self.worker_allocated.clear()
        counts: dict[str, int] = {"alive": 0, "draining": 0, "dead": 0}
        free = dict.fromkeys(FREE_RESOURCES, 0.0)
        for w in workers:
            counts[w["state"]] = counts.get(w["state"], 0) + 1
            if w["state"] == "dead":
                continue
            if w["state"] == "alive":
                for resource in FREE_RESOURCES:
                    room = w["capacity"][resource] - w["allocated"][resource]
                    free[resource] += max(0.0, room)
            for resource in ("cpu_units", "memory_mb", "slots"):
                self.worker_capacity.labels(w["id"], resource).set(w["capacity"][resource])
                self.worker_allocated.labels(w["id"], resource).set(w["allocated"][resource])
        for state, n in counts.items():
            self.workers.labels(state).set(n)
        for resource, amount in free.items():
            self.free[resource].set(amount)
        return generate_latest(self.registry)
