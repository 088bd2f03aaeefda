"""``make test-hosts``: workers on other hosts, each behind a link that can be cut.

Not a pytest module: it needs root (network namespaces) and iproute2, and
``make test`` never collects it. Run as ``python -m tests.hosts.run``.

The yard: api, scheduler and logger on this host (the local PostgreSQL and RabbitMQ,
on loopback, with a database and a broker namespace of this run's own). Three "hosts"
are network namespaces, each joined to this one by a veth pair (10.231.N.2 inside,
10.231.N.1 here). Inside, 127.0.0.1 is the namespace's own loopback: a worker there
reaches PostgreSQL and RabbitMQ only through a forwarder bound to 10.231.N.1 on this
side of its link (``tests/hosts/forwarder.py``; the system services are not touched).
No address is used but those of these links and loopback.

1. Each host is shown to reach nothing on this host's loopback.
2. 30 short jobs run; each host runs some.
3. 30 jobs of 4 s; while host 1 runs some, its link is set down. After the lease its
   attempts are `lost` and retried on the other hosts; the link comes back once host 1
   has finished them locally, so its late results arrive and must be fenced.
4. Every job completed exactly once (one completed execution, attempt 1 on host 1 stays
   `lost`), no job and no execution left `running`, host 1 alive again.

Namespaces, processes, the database and the broker namespace are removed at the end,
also on failure (the services' logs too, unless SWITCHYARD_HOSTS_KEEP_LOGS=1).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shared.broker import Broker
from shared.dbtools import upgrade
from tests.hosts.forwarder import Forwarder
from tests.scripts import Failed, check, finish, passed, wait_for

ROOT = Path(__file__).resolve().parents[2]
PG = ("127.0.0.1", 5432)
AMQP = ("127.0.0.1", 5672)
HOSTS = 3
LEASE_SECONDS = 3.0
LONG_JOB_SECONDS = 4.0
SUBNET = "10.231"


def say(message: str) -> None:
    print(f"[test-hosts] {message}", flush=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Host:
    """A network namespace joined to this one by a veth pair."""

    def __init__(self, number: int, tag: str) -> None:
        self.number = number
        self.netns = f"sy{tag}h{number}"
        self.outer = f"sy{tag}h{number}o"  # this side of the link
        self.inner = f"sy{tag}h{number}i"
        self.outer_address = f"{SUBNET}.{number}.1"
        self.inner_address = f"{SUBNET}.{number}.2"
        self.worker_id = f"host{number}"

    def create(self) -> None:
        ip("netns", "add", self.netns)
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.netns)
        ip("addr", "add", f"{self.outer_address}/30", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        inside = ("netns", "exec", self.netns, "ip")
        ip(*inside, "addr", "add", f"{self.inner_address}/30", "dev", self.inner)
        ip(*inside, "link", "set", self.inner, "up")
        ip(*inside, "link", "set", "lo", "up")

    def remove(self) -> None:
        # Deleting the namespace deletes the veth pair with it.
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)

    def cut(self) -> None:
        ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        ip("link", "set", self.outer, "up")

    def reaches(self, host: str, port: int) -> bool:
        probe = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c",
             f"import socket; socket.create_connection(({host!r}, {port}), timeout=2)"],
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        return probe.returncode == 0


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])


def admin_sql(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(
            host=PG[0], port=PG[1], user="postgres", database="postgres"
        )
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def query(database: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(
            host=PG[0], port=PG[1], user="postgres", database=database
        )
        try:
            return list(await connection.fetch(sql))
        finally:
            await connection.close()

    return asyncio.run(run())


def delete_broker_namespace(namespace: str) -> None:
    async def run() -> None:
        broker = Broker(f"amqp://guest:guest@{AMQP[0]}:{AMQP[1]}/", namespace, name="hosts-cleanup")
        await broker.connect(timeout=10)
        try:
            await broker.delete_namespace()
        finally:
            await broker.close()

    asyncio.run(run())


@contextlib.contextmanager
def yard() -> Iterator[tuple[list[Host], dict[str, Any]]]:
    """Namespaces, forwarders, database, broker namespace and services; all removed after."""
    tag = f"{os.getpid() % 10000:04d}"
    database = f"switchyard_hosts_{uuid.uuid4().hex[:8]}"
    namespace = f"hosts-{uuid.uuid4().hex[:8]}"
    hosts = [Host(n, tag) for n in range(1, HOSTS + 1)]
    processes: list[Process] = []
    logs = Path(tempfile.mkdtemp(prefix="switchyard-hosts-"))
    failed = True
    with contextlib.ExitStack() as stack:
        try:
            url = f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{database}"
            upgrade(url, wait_seconds=10)
            for host in hosts:
                host.create()
                stack.enter_context(
                    Forwarder(
                        [(host.outer_address, PG[1], PG), (host.outer_address, AMQP[1], AMQP)]
                    )
                )
            api_port = free_port()
            key = uuid.uuid4().hex
            base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
            base.update(
                {
                    "SWITCHYARD_NAMESPACE": namespace,
                    "SWITCHYARD_API_KEYS": f"{key}:admin",
                    "SWITCHYARD_HEARTBEAT_SECONDS": "0.5",
                    "SWITCHYARD_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
                    "SWITCHYARD_SCHEDULER_TICK_SECONDS": "0.1",
                    "SWITCHYARD_MONITORING_SECONDS": "1",
                    "SWITCHYARD_WORKER_GRACE_SECONDS": "10",
                    "SWITCHYARD_HEALTH_DIR": str(logs),
                    "PYTHONUNBUFFERED": "1",
                }
            )
            here = {
                **base,
                "DATABASE_URL": url,
                "AMQP_URL": f"amqp://guest:guest@{AMQP[0]}:{AMQP[1]}/",
                "SWITCHYARD_API_PORT": str(api_port),
            }
            for service in ("api", "scheduler", "logger"):
                argv = [sys.executable, "-m", f"services.{service}"]
                processes.append(Process(service, argv, here, logs))
            for host in hosts:
                over_the_link = {
                    **base,
                    "DATABASE_URL": f"postgresql+asyncpg://postgres@{host.outer_address}:{PG[1]}/{database}",
                    "AMQP_URL": f"amqp://guest:guest@{host.outer_address}:{AMQP[1]}/",
                    "SWITCHYARD_HEALTH_DIR": str(logs / host.netns),
                }
                (logs / host.netns).mkdir()
                argv = ["ip", "netns", "exec", host.netns, sys.executable, "-m", "services.worker",
                        "--worker-id", host.worker_id, "--threads", "4",
                        "--cpu-units", "2", "--memory-mb", "1024"]  # fmt: skip
                processes.append(Process(host.worker_id, argv, over_the_link, logs))
            yield hosts, {"api": f"http://127.0.0.1:{api_port}", "key": key, "database": database}
            failed = False
        finally:
            if failed:
                for process in processes:
                    say(f"{process.name} log (last lines):\n{process.tail()}")
            for process in reversed(processes):
                process.stop()
            stack.close()  # the forwarders
            for host in hosts:
                host.remove()
            with contextlib.suppress(Exception):
                delete_broker_namespace(namespace)
            with contextlib.suppress(Exception):
                admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            if os.environ.get("SWITCHYARD_HOSTS_KEEP_LOGS"):
                say(f"service logs kept in {logs}")
            else:
                shutil.rmtree(logs, ignore_errors=True)
            left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            say("cleaned up" + (f" (namespaces still listed: {left})" if tag in left else ""))


def submit(api: httpx.Client, count: int, kind: str, payload: dict[str, Any]) -> list[str]:
    answer = api.post(
        "/jobs/batch",
        json={"jobs": [{"ref": f"j{n}", "type": kind, "payload": payload} for n in range(count)]},
    )
    check(answer.status_code == 201, f"batch: {answer.status_code} {answer.text}")
    return [job["id"] for job in answer.json()["jobs"]]


def history(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/jobs/{job_id}/logs", params={"limit": 1})
    check(answer.status_code == 200, f"logs of {job_id}: {answer.status_code}")
    return sorted(answer.json()["executions"], key=lambda run: run["attempt"])


def all_terminal(api: httpx.Client, ids: list[str]) -> collections.Counter[str] | None:
    counts = collections.Counter(api.get(f"/jobs/{i}").json()["status"] for i in ids)
    terminal = counts["completed"] + counts["failed"] + counts["cancelled"]
    return counts if terminal == len(ids) else None


def main() -> int:
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("test-hosts needs root and iproute2 (ip netns)", file=sys.stderr)
        return 2
    figures: dict[str, Any] = {}
    started = time.monotonic()
    with yard() as (hosts, where):
        api = httpx.Client(
            base_url=where["api"], headers={"Authorization": f"Bearer {where['key']}"}, timeout=10
        )
        for host in hosts:
            check(not host.reaches(*PG), f"{host.netns} reaches PostgreSQL on its own loopback")
            check(host.reaches(host.outer_address, PG[1]), f"{host.netns}: no link to PostgreSQL")
        figures["isolation"] = (
            "no host reaches 127.0.0.1:5432 inside its namespace; all reach it over their link"
        )

        def api_up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return api.get("/healthz").status_code == 200
            return False

        wait_for("the API", api_up, timeout=30)

        def alive() -> set[str]:
            return {w["id"] for w in api.get("/workers").json() if w["state"] == "alive"}

        ids = {h.worker_id for h in hosts}
        wait_for("a worker alive on every host", lambda: alive() >= ids or None, timeout=60)

        # --- jobs on every host -----------------------------------------------------
        t = time.monotonic()
        short = submit(api, 30, "demo.sleep", {"seconds": 0.3})
        wait_for("30 short jobs", lambda: all_terminal(api, short), timeout=60)
        figures["short_jobs_30_seconds"] = round(time.monotonic() - t, 1)
        per_host = collections.Counter(
            run["worker_id"]
            for job in short
            for run in history(api, job)
            if run["status"] == "completed"
        )
        figures["short_jobs_per_host"] = dict(sorted(per_host.items()))
        check(set(per_host) == ids, f"jobs ran only on {sorted(per_host)}")

        # --- cut host 1 mid-job -----------------------------------------------------
        # One log line a second: the last ones of host 1's attempts are written behind
        # the cut link, so finding them stored proves its late messages got through.
        steps = {"steps": int(LONG_JOB_SECONDS), "delay_seconds": 1.0}
        long = submit(api, 30, "demo.progress", steps)
        cut_host = hosts[0]

        def running_on(worker_id: str) -> list[str] | None:
            # A worker's `running` (its last heartbeat) can still list short jobs that
            # completed since: only this batch's jobs, and only those the database has
            # running there as attempt 1 (the attempt that must end `lost`).
            workers = {w["id"]: w for w in api.get("/workers").json()}
            listed = [str(j) for j in workers.get(worker_id, {}).get("running") or []]
            running = []
            for j in listed:
                if j not in long:
                    continue
                job = api.get(f"/jobs/{j}").json()
                if (job["status"], job["worker_id"], job["attempts"]) == ("running", worker_id, 1):
                    running.append(j)
            return running if len(running) >= 2 else None

        on_cut_host = wait_for(
            f"jobs running on {cut_host.worker_id}",
            lambda: running_on(cut_host.worker_id),
            timeout=30,
        )
        cut_at = time.monotonic()
        cut_host.cut()
        say(f"link of {cut_host.netns} down; it runs {len(on_cut_host)} jobs")

        def all_lost() -> bool:
            # The execution of attempt 1 turns `lost` when the lease runs out; the
            # retry then waits for room on the other hosts like any ready job.
            return all(any(run["status"] == "lost" for run in history(api, j)) for j in on_cut_host)

        try:
            wait_for("the cut host's attempts declared lost", all_lost, timeout=LEASE_SECONDS + 20)
        except Failed:
            for j in on_cut_host:  # what each cut job and its executions look like
                job = api.get(f"/jobs/{j}").json()
                say(f"job {j}: {job['status']} attempt {job['attempts']} on {job['worker_id']}")
                say(f"  executions: {history(api, j)}")
            raise
        figures["cut_to_attempts_lost_seconds"] = round(time.monotonic() - cut_at, 1)

        def retried_elsewhere() -> bool:
            jobs = [api.get(f"/jobs/{j}").json() for j in on_cut_host]
            return all(j["attempts"] >= 2 and j["worker_id"] != cut_host.worker_id for j in jobs)

        wait_for(
            "the cut host's jobs retried elsewhere", retried_elsewhere, timeout=LEASE_SECONDS + 20
        )
        figures["cut_to_retried_elsewhere_seconds"] = round(time.monotonic() - cut_at, 1)
        # Host 1 finishes its attempts behind the cut link: their results are late.
        time.sleep(max(0.0, LONG_JOB_SECONDS + 1 - (time.monotonic() - cut_at)))
        cut_host.restore()
        restored_at = time.monotonic()
        figures["link_down_seconds"] = round(restored_at - cut_at, 1)
        wait_for(
            f"{cut_host.worker_id} alive again",
            lambda: cut_host.worker_id in alive() or None,
            timeout=60,
        )
        figures["restore_to_alive_seconds"] = round(time.monotonic() - restored_at, 1)
        wait_for("30 long jobs terminal", lambda: all_terminal(api, long), timeout=120)
        figures["long_jobs_30_seconds_from_cut"] = round(time.monotonic() - cut_at, 1)

        # --- exactly once, fenced, nothing left running ---------------------------
        statuses = collections.Counter(api.get(f"/jobs/{j}").json()["status"] for j in short + long)
        check(statuses == {"completed": 60}, f"statuses: {dict(statuses)}")
        per_host = collections.Counter()
        for job in short + long:
            runs = history(api, job)
            done = [run for run in runs if run["status"] == "completed"]
            check(len(done) == 1, f"job {job}: {len(done)} completed executions: {runs}")
            per_host[done[0]["worker_id"]] += 1
            if job in on_cut_host:
                shape = [(run["attempt"], run["worker_id"], run["status"]) for run in runs]
                check(
                    shape[0] == (1, cut_host.worker_id, "lost") and done[0]["attempt"] >= 2,
                    f"job {job} on the cut host: history {shape}",
                )
                figures["cut_job_history"] = [f"attempt {a} on {w}: {st}" for a, w, st in shape]
        figures["long_jobs_per_host"] = dict(sorted(per_host.items()))
        leftovers = query(
            where["database"],
            "SELECT (SELECT count(*) FROM jobs WHERE status = 'running') AS jobs,"
            " (SELECT count(*) FROM job_executions WHERE status = 'running') AS executions",
        )[0]
        check(
            leftovers["jobs"] == 0 and leftovers["executions"] == 0,
            f"running leftovers: {dict(leftovers)}",
        )
        attempts = collections.Counter(
            row["attempts"] for row in query(where["database"], "SELECT attempts FROM jobs")
        )
        figures["attempts"] = dict(sorted(attempts.items()))
        figures["jobs_on_cut_host_fenced"] = len(on_cut_host)

        last_line = f"step {steps['steps']} of {steps['steps']}"

        def late_lines_stored() -> bool:
            for job in on_cut_host:
                lines = api.get(f"/jobs/{job}/logs", params={"limit": 100}).json()["lines"]
                if not any(x["attempt"] == 1 and x["message"] == last_line for x in lines):
                    return False
            return True

        wait_for("host 1's late log lines stored", late_lines_stored, timeout=30)
        figures["late_lines_of_cut_attempts"] = f"'{last_line}' of attempt 1 stored for all"
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    return passed(say, figures)


if __name__ == "__main__":
    finish(say, main)
