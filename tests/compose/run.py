"""``make test-compose``: the compose stack on a real Docker engine, end to end.

Not a pytest module (it needs a Docker engine and takes minutes; ``make test`` never
collects it). Run after ``../shared/tools/compose-offline/setup.sh`` on these machines,
or anywhere with Docker and Compose v1 (``docker-compose``) or v2 (``docker compose``).

What it does, each step asserted, and the figures it prints:

1. A fresh copy of the working tree (what git would commit: tracked files and new files
   not ignored; no ``.venv``, no ``.env``) in a temporary directory, with a ``.env`` of
   random secrets and free host ports, so nothing of this checkout leaks in.
2. ``build``, ``up -d --scale worker=3``; every container healthy; AMQP not published.
3. 60 jobs complete, on all three workers; each worker offers its limits.
4. The queues, read from the management API on the published management port.
5. 60 more jobs, and while they run ``up -d --scale worker=1``: the removed workers
   drain on SIGTERM; every job completes exactly once, none left running.
6. A stopped loop is seen: SIGSTOP the logger, its healthcheck fails; SIGCONT, it passes.
7. ``down -v`` (also on failure), and the temporary copy removed.
"""

from __future__ import annotations

import collections
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.scripts import Failed, check, finish, passed, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "switchyard-composetest"
JOBS = 60
SLEEP_SECONDS = 2.0  # each job's demo.sleep: long enough to overlap the scale-down


def say(message: str) -> None:
    print(f"[test-compose] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    raise SystemExit(
        "no docker-compose: run ../shared/tools/compose-offline/setup.sh (or install Docker)"
    )


def fresh_copy(destination: Path) -> None:
    """The files a fresh clone of this working tree would have (uncommitted edits too)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        relative = raw.decode()
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


class Stack:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = {**os.environ, **env, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
        self.base = [*compose_command(), "-p", PROJECT]

    def run(self, *args: str, timeout: float = 900, capture: bool = True) -> str:
        result = subprocess.run(
            [*self.base, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=capture,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise Failed(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout or ""

    def container_ids(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).split()


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def health_of(container: str) -> str:
    return docker("inspect", "--format", "{{.Name}} {{.State.Health.Status}}", container).strip()


@contextmanager
def stack_in_a_fresh_copy() -> Iterator[tuple[Stack, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="switchyard-compose-") as tmp:
        directory = Path(tmp)
        fresh_copy(directory)
        secrets_env = {
            "RABBITMQ_PASSWORD": secrets.token_hex(16),
            "SWITCHYARD_API_KEYS": f"{secrets.token_hex(16)}:admin",
            "SWITCHYARD_API_PUBLISHED_PORT": str(free_port()),
            "RABBITMQ_MANAGEMENT_PORT": str(free_port()),
        }
        # What a user writes once; compose reads it for every command (down included).
        (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in secrets_env.items()))
        stack = Stack(directory, {})
        try:
            yield stack, secrets_env
        finally:
            say("down -v")
            try:
                stack.run("down", "-v", "--remove-orphans", timeout=300)
            except Exception as exc:  # report, and still remove the copy
                say(f"down -v failed: {exc}")


def submit_sleeps(api: httpx.Client, count: int, seconds: float, name: str) -> list[str]:
    ids = []
    for n in range(count):
        answer = api.post(
            "/jobs",
            json={"type": "demo.sleep", "payload": {"seconds": seconds}, "name": f"{name}-{n}"},
        )
        check(answer.status_code == 201, f"submit: {answer.status_code} {answer.text}")
        ids.append(answer.json()["id"])
    return ids


def statuses(api: httpx.Client, ids: list[str]) -> collections.Counter[str]:
    return collections.Counter(api.get(f"/jobs/{job_id}").json()["status"] for job_id in ids)


def all_completed(api: httpx.Client, ids: list[str]) -> collections.Counter[str] | None:
    counts = statuses(api, ids)
    return counts if counts["completed"] == len(ids) else None


def executions(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/jobs/{job_id}/logs", params={"limit": 1})
    check(answer.status_code == 200, f"logs of {job_id}: {answer.status_code}")
    return list(answer.json()["executions"])


def completed_once(api: httpx.Client, ids: list[str]) -> collections.Counter[str]:
    """Checks every job has exactly one completed execution and none still running;
    returns the completed executions per worker."""
    per_worker: collections.Counter[str] = collections.Counter()
    for job_id in ids:
        runs = executions(api, job_id)
        done = [run for run in runs if run["status"] == "completed"]
        check(len(done) == 1, f"job {job_id}: {len(done)} completed executions: {runs}")
        check(
            not [run for run in runs if run["status"] == "running"],
            f"job {job_id}: an execution left running: {runs}",
        )
        per_worker[done[0]["worker_id"]] += 1
    return per_worker


def main() -> int:
    started = time.monotonic()
    figures: dict[str, Any] = {}
    with stack_in_a_fresh_copy() as (stack, env):
        t = time.monotonic()
        say(f"build (fresh copy of the working tree in {stack.directory})")
        # SWITCHYARD_COMPOSE_NO_CACHE=1: build every layer again (pip install included).
        no_cache = ["--no-cache"] if os.environ.get("SWITCHYARD_COMPOSE_NO_CACHE") else []
        figures["build_cache"] = "no" if no_cache else "yes"
        stack.run("build", *no_cache, timeout=1800)
        figures["build_seconds"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        say("up -d --scale worker=3")
        stack.run("up", "-d", "--scale", "worker=3", timeout=600)
        long_running = [
            container
            for service in ("postgres", "rabbitmq", "api", "scheduler", "worker", "logger")
            for container in stack.container_ids(service)
        ]

        def every_one_healthy() -> list[str] | None:
            states = [health_of(c) for c in long_running]
            return states if all(s.endswith(" healthy") for s in states) else None

        states = wait_for("every container healthy", every_one_healthy, timeout=180, every=1.0)
        figures["up_to_all_healthy_seconds"] = round(time.monotonic() - t, 1)
        say("healthy: " + ", ".join(s.lstrip("/").split(" ")[0] for s in states))

        published = docker("port", stack.container_ids("rabbitmq")[0])
        amqp = [line for line in published.splitlines() if line.startswith("5672/")]
        check(not amqp, f"AMQP is published on the host: {amqp}")
        figures["rabbitmq_published"] = published.split("\n")[0].strip()

        key = env["SWITCHYARD_API_KEYS"].split(":")[0]
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{env['SWITCHYARD_API_PUBLISHED_PORT']}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )

        def three_alive_workers() -> list[dict[str, Any]] | None:
            alive = [w for w in api.get("/workers").json() if w["state"] == "alive"]
            return alive if len(alive) == 3 else None

        workers = wait_for("3 alive workers", three_alive_workers, timeout=60, every=1.0)
        figures["worker_capacity"] = sorted(
            f"{w['capacity']['cpu_units']:g} CPU, {w['capacity']['memory_mb']} MB, "
            f"{w['capacity']['slots']} slots"
            for w in workers
        )
        total_cpu = sum(w["capacity"]["cpu_units"] for w in workers)
        figures["fleet_cpu_units"] = round(total_cpu, 2)
        figures["machine_cpus"] = os.cpu_count()
        check(
            total_cpu <= (os.cpu_count() or 1) + 0.01,
            f"3 workers offer {total_cpu} CPUs on a {os.cpu_count()}-CPU machine",
        )

        # --- 60 jobs on three workers ---------------------------------------------
        t = time.monotonic()
        first = submit_sleeps(api, JOBS, 0.5, "spread")
        wait_for(
            f"{JOBS} jobs completed", lambda: all_completed(api, first), timeout=180, every=1.0
        )
        figures["jobs_60_seconds"] = round(time.monotonic() - t, 1)
        per_worker = completed_once(api, first)
        figures["jobs_per_worker"] = dict(sorted(per_worker.items()))
        check(len(per_worker) == 3, f"jobs ran on {len(per_worker)} workers, not 3")

        # --- the queues, from the management API ----------------------------------
        management = httpx.Client(
            base_url=f"http://127.0.0.1:{env['RABBITMQ_MANAGEMENT_PORT']}/api",
            auth=("switchyard", env["RABBITMQ_PASSWORD"]),
            timeout=10,
        )
        queues = management.get("/queues")
        check(queues.status_code == 200, f"management API: {queues.status_code}")
        figures["queues"] = {
            q["name"]: f"{q.get('messages', 0)} messages, {q.get('consumers', 0)} consumers"
            for q in queues.json()
        }
        check(
            sum(1 for name in figures["queues"] if ".worker." in name) >= 3,
            f"fewer than 3 worker queues: {sorted(figures['queues'])}",
        )
        guest = httpx.get(
            f"http://127.0.0.1:{env['RABBITMQ_MANAGEMENT_PORT']}/api/overview",
            auth=("guest", "guest"),
        )
        check(guest.status_code == 401, f"guest/guest answered {guest.status_code}")

        # --- scale 3 -> 1 while jobs run ------------------------------------------
        second = submit_sleeps(api, JOBS, SLEEP_SECONDS, "drain")

        def running_on_three() -> collections.Counter[str] | None:
            busy = collections.Counter(
                w["id"] for w in api.get("/workers").json() for _ in w.get("running") or []
            )
            return busy if len(busy) == 3 else None

        wait_for("jobs running on all 3 workers", running_on_three, timeout=60, every=0.2)
        t = time.monotonic()
        since = str(int(time.time()) - 1)
        say("up -d --scale worker=1 while jobs run")
        stack.run("up", "-d", "--scale", "worker=1", timeout=300)
        figures["scale_down_seconds"] = round(time.monotonic() - t, 1)
        # The removed containers are gone; Docker's events still say how each ended:
        # 0 is a drained worker, 137 one killed at the end of stop_grace_period.
        died = docker(
            "events", "--since", since, "--until", str(int(time.time()) + 1),
            "--filter", f"label=com.docker.compose.project={PROJECT}",
            "--filter", "label=com.docker.compose.service=worker",
            "--filter", "event=die",
            "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        )  # fmt: skip
        exits = dict(line.split() for line in died.splitlines() if line.strip())
        figures["removed_workers_exit_codes"] = exits
        check(len(exits) == 2, f"expected 2 workers to stop, Docker saw {exits}")
        check(set(exits.values()) == {"0"}, f"a removed worker did not drain: {exits}")
        wait_for(
            f"{JOBS} more jobs completed",
            lambda: all_completed(api, second),
            timeout=300,
            every=1.0,
        )
        figures["jobs_60_with_scale_down_seconds"] = round(time.monotonic() - t, 1)
        per_worker = completed_once(api, second)
        attempts = collections.Counter(api.get(f"/jobs/{i}").json()["attempts"] for i in second)
        figures["drain_jobs_per_worker"] = dict(sorted(per_worker.items()))
        figures["drain_attempts"] = dict(sorted(attempts.items()))
        figures["workers_after"] = {w["id"]: w["state"] for w in api.get("/workers").json()}
        check(len(stack.container_ids("worker")) == 1, "more than one worker container left")
        check(statuses(api, first + second)["completed"] == 2 * JOBS, "a job not completed")

        # --- a stopped loop fails its healthcheck ---------------------------------
        logger = stack.container_ids("logger")[0]
        docker("kill", "--signal", "STOP", logger)
        t = time.monotonic()
        try:

            def health_fails() -> str | None:
                probe = subprocess.run(
                    ["docker", "exec", logger, "python", "-m", "shared.health", "logger"],
                    capture_output=True,
                    text=True,
                )
                return probe.stderr.strip() if probe.returncode == 1 else None

            why = wait_for(
                "the stopped logger's health to fail", health_fails, timeout=90, every=1.0
            )
            figures["stopped_logger_health"] = f"{why} (after {time.monotonic() - t:.0f} s)"
        finally:
            docker("kill", "--signal", "CONT", logger)
        wait_for(
            "the logger healthy again",
            lambda: (
                subprocess.run(
                    ["docker", "exec", logger, "python", "-m", "shared.health", "logger"],
                    capture_output=True,
                ).returncode
                == 0
            ),
            timeout=30,
        )
    figures["total_seconds"] = round(time.monotonic() - started, 1)
    return passed(say, figures)


if __name__ == "__main__":
    finish(say, main)
