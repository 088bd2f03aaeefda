"""Switchyard as a user installs it: a fresh venv, a non-editable install, a user project
with its own ``shared`` and ``services`` packages.

First the client-only install (the SDK and the CLI, and what it refuses to do without
the server extra), then the same venv with ``[server]``: from the user's directory the
database is migrated with ``switchyard db upgrade``, a worker runs the user's tasks with
``switchyard worker --tasks``, and jobs are submitted and waited for through the SDK and
the CLI. The services run from the installed package, never from this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AMQP_URL, ROOT, TEST_KEYS, _admin, async_url
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e

SOURCES = ("pyproject.toml", "README.md", "switchyard", "shared", "services")
SERVER_ONLY = ("aio-pika", "sqlalchemy", "fastapi", "asyncpg", "alembic", "uvicorn", "psutil")

USER_PROJECT = {
    # The user's own packages, named like ours: a task imports them.
    "shared/__init__.py": 'OWNER = "the user"\n',
    "shared/util.py": "def double(x: int) -> int:\n    return 2 * x\n",
    "services/__init__.py": 'NAME = "the user\'s services"\n',
    "usertasks.py": """
        from switchyard import TaskContext, task

        from services import NAME
        from shared import OWNER
        from shared.util import double


        @task("user.double")
        def double_it(ctx: TaskContext, payload: dict) -> dict:
            for step in range(1, 4):
                ctx.progress(step, 3, f"step {step}")
                ctx.log.info("step %d", step)
                ctx.sleep(0.5)
            return {"value": double(payload["x"]), "owner": OWNER, "services": NAME}


        @task("user.fail", max_attempts=1)
        def fail(ctx: TaskContext, payload: dict) -> None:
            raise ValueError("as asked")
    """,
    "sdk_script.py": """
        import sys
        from datetime import datetime, timedelta

        from switchyard import Client, JobStatus

        seen = []
        with Client() as sy:
            first = sy.enqueue_job("user.double", {"x": 4}, name="sdk-first")
            # The SDK's own types: a job object in depends_on, a datetime for run_at.
            second = sy.enqueue_job(
                "user.double",
                {"x": 5},
                depends_on=[first],
                run_at=datetime.now() - timedelta(seconds=1),
            )
            done = sy.wait(second.id, timeout=60, on_progress=lambda j: seen.append(j.progress))
            assert done.status == JobStatus.COMPLETED, done
            assert sy.get_status(first).status == JobStatus.COMPLETED
            assert second.depends_on == [first.id]
            print("result", done.result["value"], done.result["owner"], done.result["services"])
            print("progress seen", len(seen))
    """,
}


@dataclass
class Venv:
    root: Path
    project: Path
    wheel_dir: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.project,
            env=env or clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def packages(self) -> set[str]:
        out = self.run(self.bin / "python", "-m", "pip", "list", "--format=json")
        assert out.returncode == 0, out.stderr
        return {p["name"].lower() for p in json.loads(out.stdout)} - {"pip", "setuptools"}

    def install(self, requirement: str) -> None:
        out = self.run(
            self.bin / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
            requirement, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no SWITCHYARD_* of the test run: only what a user would set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWITCHYARD_", "PYTHON", "VIRTUAL_ENV")) and k != "DATABASE_URL"
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    wheels = base / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    root = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    project = base / "project"
    for relative, text in USER_PROJECT.items():
        (project / relative).parent.mkdir(parents=True, exist_ok=True)
        (project / relative).write_text(textwrap.dedent(text).lstrip())
    yield Venv(root=root, project=project, wheel_dir=wheels)


def wheel(venv: Venv, extra: str = "") -> str:
    (path,) = venv.wheel_dir.glob("switchyard-*.whl")
    return f"switchyard{extra} @ {path.as_uri()}"


def test_client_install_has_the_sdk_and_cli_only(venv: Venv) -> None:
    before = venv.packages()
    venv.install(wheel(venv))
    client_packages = venv.packages() - before
    print(f"client-only install: {len(client_packages)} packages: {sorted(client_packages)}")
    assert "switchyard" in client_packages
    assert not client_packages & set(SERVER_ONLY), "server dependencies in the client install"

    probe = venv.run(
        venv.bin / "python",
        "-c",
        "import shared, switchyard; from switchyard import Client, task; "
        "print(shared.OWNER, switchyard.__version__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("the user "), "the user's own shared package lost"
    version = venv.run(venv.bin / "switchyard", "--version")
    assert version.returncode == 0 and version.stdout.startswith("switchyard "), version

    # The server commands say what is missing instead of a traceback.
    for command in (("worker", "--tasks", "usertasks"), ("db", "upgrade")):
        out = venv.run(venv.bin / "switchyard", *command)
        assert out.returncode == 1, out
        assert "pip install 'switchyard[server]'" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture
def fresh_database() -> Iterator[str]:
    import asyncio

    name = f"swy_pkg_{uuid.uuid4().hex[:12]}"
    yield async_url(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"{Path(args[0]).name}-{len(self.started)}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started.append((proc, log))
        return proc

    def output(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self.started
        )

    def stop(self) -> None:
        for proc, _ in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until(check, what: str, processes: Processes, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s\n{processes.output()}")


def test_server_install_runs_a_users_tasks_from_their_directory(
    venv: Venv, fresh_database: str, namespace: str, tmp_path: Path
) -> None:
    if not (venv.bin / "switchyard").exists():
        venv.install(wheel(venv))
    before = venv.packages()
    venv.install(wheel(venv, "[server]"))
    added = venv.packages() - before
    print(f"server extra adds {len(added)} packages; total {len(venv.packages())}")
    assert set(SERVER_ONLY) <= venv.packages()

    # Every non-Python file the services read at run time made it into the install.
    site = next((venv.root / "lib").glob("python3*/site-packages"))
    for folder in ("services/api/ui", "shared/migrations"):
        shipped = {p.relative_to(ROOT) for p in (ROOT / folder).rglob("*") if p.is_file()}
        shipped = {p for p in shipped if "__pycache__" not in p.parts}
        missing = sorted(str(p) for p in shipped if not (site / p).is_file())
        assert not missing, f"not in the installed package: {missing}"

    port = free_port()
    server_env = clean_env(
        SWITCHYARD_DATABASE_URL=fresh_database,
        AMQP_URL=AMQP_URL,
        SWITCHYARD_NAMESPACE=namespace,
        SWITCHYARD_API_KEYS=",".join(f"{k}:{r}" for k, r in TEST_KEYS.items()),
        SWITCHYARD_API_PORT=str(port),
        SWITCHYARD_HEARTBEAT_SECONDS="0.5",
        SWITCHYARD_SCHEDULER_TICK_SECONDS="0.1",
    )
    migrated = venv.run(venv.bin / "switchyard", "db", "upgrade", env=server_env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "migrated to head" in migrated.stdout

    processes = Processes(tmp_path)
    neutral = tmp_path / "elsewhere"
    neutral.mkdir()
    try:
        for service in ("api", "scheduler", "logger"):
            processes.start(
                [str(venv.bin / "python"), "-m", f"services.{service}"], neutral, server_env
            )
        # The worker from the user's directory, over the user's tasks.
        processes.start(
            [str(venv.bin / "switchyard"), "worker", "--tasks", "usertasks", "--worker-id", "u1"],
            venv.project,
            server_env,
        )
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

        def worker_ready() -> bool:
            try:
                workers = httpx.get(f"{url}/workers", headers=headers, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return False
            return any("user.double" in w["task_types"] for w in workers)

        wait_until(worker_ready, "the user's worker registered", processes)
        user_env = clean_env(SWITCHYARD_URL=url, SWITCHYARD_API_KEY=ADMIN_KEY)

        sdk = venv.run(venv.bin / "python", "sdk_script.py", env=user_env)
        assert sdk.returncode == 0, sdk.stdout + sdk.stderr + processes.output()
        assert "result 10 the user the user's services" in sdk.stdout
        assert int(sdk.stdout.split("progress seen")[1]) >= 1

        cli = venv.bin / "switchyard"
        # Options after the subcommand; --json gives the API's document.
        submitted = venv.run(
            cli, "submit", "user.double", "--payload", '{"x": 21}', "--json", env=user_env
        )
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        waited = venv.run(cli, "wait", job["id"], "--timeout", "60", env=user_env)
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert f"job {job['id']} completed" in waited.stdout and '"value": 42' in waited.stdout
        assert "progress [" in waited.stderr  # the bar, one line per step off a terminal
        status = venv.run(cli, "status", job["id"], "--json", env=user_env)
        assert json.loads(status.stdout)["result"]["value"] == 42
        human = venv.run(cli, "status", job["id"], env=user_env)
        assert "completed" in human.stdout and "{'" not in human.stdout

        failed = venv.run(cli, "submit", "user.fail", "--wait", env=user_env)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "ValueError: as asked" in failed.stdout
        failed_id = failed.stdout.split()[0]

        def logged_failed() -> subprocess.CompletedProcess[str] | None:
            # The logger writes an attempt's end in a batch, after the scheduler.
            out = venv.run(cli, "logs", failed_id, env=user_env)
            return out if "attempt 1  failed  on u1" in out.stdout else None

        wait_until(lambda: logged_failed() is not None, "the failed attempt logged", processes)
        logs = logged_failed()
        assert logs is not None and logs.returncode == 0
        assert "traceback:" in logs.stdout and 'raise ValueError("as asked")' in logs.stdout
    finally:
        processes.stop()
