"""Start the real services as processes, each with this test's database and namespace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import ADMIN_KEY, ROOT, TEST_KEYS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One ``python -m services.<name>`` process; its output goes to a log file."""

    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, args: list[str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", *(args or [])],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def service_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "AMQP_URL": settings.amqp_url,
            "SWITCHYARD_NAMESPACE": settings.namespace,
            "SWITCHYARD_API_KEYS": ",".join(f"{k}:{r}" for k, r in TEST_KEYS.items()),
            "SWITCHYARD_HEARTBEAT_SECONDS": "0.5",
            "SWITCHYARD_WORKER_LEASE_SECONDS": "3",
            "SWITCHYARD_SCHEDULER_TICK_SECONDS": "0.1",
            "SWITCHYARD_MONITORING_SECONDS": "1",
            "SWITCHYARD_CANCEL_GRACE_SECONDS": "1",
            "SWITCHYARD_WORKER_GRACE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def start_service(service_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    started: list[ServiceProcess] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(name, {**service_env, **(env or {})}, tmp_path, list(args))
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


def wait_http_ok(url: str, proc: ServiceProcess, *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with {proc.proc.returncode}:\n{proc.output()}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not healthy after {timeout}s:\n{proc.output()}")


@pytest.fixture
def api_url(start_service: object) -> str:
    port = free_port()
    proc = start_service("api", env={"SWITCHYARD_API_PORT": str(port)})  # type: ignore[operator]
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc)
    return url


class Stack:
    """The real services as processes plus a small HTTP client for the tests."""

    def __init__(self, start: object, api_url: str, database_url: str) -> None:
        self._start = start
        self.url = api_url
        self.http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        )
        self.database_url = database_url.replace("postgresql+asyncpg://", "postgresql://")

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        return self._start(name, *args, env=env)  # type: ignore[operator,no-any-return]

    def worker(self, worker_id: str, *args: str, wait: bool = True) -> ServiceProcess:
        proc = self.start("worker", "--worker-id", worker_id, *args)
        if wait:
            self.wait_for(
                lambda: self.worker_alive(worker_id),
                what=f"worker {worker_id} registered",
                proc=proc,
            )
        return proc

    def worker_alive(self, worker_id: str) -> bool:
        return bool(self.sql("SELECT 1 FROM workers WHERE id = $1 AND state = 'alive'", worker_id))

    def submit(self, body: dict, expect: int = 201) -> dict:
        r = self.http.post("/jobs", json=body)
        assert r.status_code == expect, r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def logs(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}/logs").json()  # type: ignore[no-any-return]

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 20.0) -> dict:
        found: dict = {}

        def check() -> bool:
            found.update(self.job(job_id))
            return found["status"] in statuses

        self.wait_for(
            check, timeout=timeout, what=f"job {job_id} in {statuses} (last: {found.get('status')})"
        )
        return found

    def sql(self, query: str, *args: object) -> list:
        import asyncio

        import asyncpg

        async def run() -> list:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    @staticmethod
    def job_count_stable(expected: int, count: object) -> bool:
        """True once ``count()`` has stayed at ``expected`` for 2 s (used for "nothing more")."""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if len(count()) != expected:  # type: ignore[operator]
                raise AssertionError(f"count moved from {expected}")
            time.sleep(0.2)
        return True

    @staticmethod
    def wait_for(
        check: object, *, timeout: float = 20.0, what: str = "", proc: ServiceProcess | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            if proc is not None and proc.proc.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def stack(start_service: object, api_url: str, settings: Settings) -> Iterator[Stack]:
    """api (already up), scheduler and logger; tests start the workers they need."""
    s = Stack(start_service, api_url, settings.database_url)
    s.scheduler = s.start("scheduler")  # type: ignore[attr-defined]
    s.logger = s.start("logger")  # type: ignore[attr-defined]
    yield s
    s.http.close()
