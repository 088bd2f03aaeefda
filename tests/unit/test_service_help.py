"""``python -m services.<name> --help`` prints what the service does, its flags and the
variables it reads, and exits 0 without a database, a broker or any SWITCHYARD_*
variable; an unknown flag exits 2 (the service never starts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["api", "scheduler", "worker", "logger"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def _run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.pop("DATABASE_URL", None)
    env.pop("AMQP_URL", None)
    env["SWITCHYARD_DATABASE_URL"] = f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none"
    env["SWITCHYARD_AMQP_URL"] = f"amqp://nobody:nobody@127.0.0.1:{port}/"
    # A service that tried to start would fail on this (exit 2): help never reads it.
    env["SWITCHYARD_NAMESPACE"] = "not a valid namespace!"
    return subprocess.run(
        [sys.executable, "-m", f"services.{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("name", SERVICES)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_names_the_service_and_its_variables(name: str, flag: str) -> None:
    done = _run(name, flag)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"usage: python -m services.{name}")
    assert f"switchyard {name}" in out
    assert "SWITCHYARD_NAMESPACE" in out and "DATABASE_URL" in out
    assert "docs/operations.md" in out
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("name", "own"),
    [
        ("api", "SWITCHYARD_API_PORT"),
        ("scheduler", "SWITCHYARD_SCHEDULER_TICK_SECONDS"),
        ("worker", "SWITCHYARD_WORKER_THREADS"),
    ],
)
def test_help_lists_the_services_own_variables_only(name: str, own: str) -> None:
    out = _run(name, "--help").stdout
    assert own in out
    others = {
        "SWITCHYARD_API_PORT",
        "SWITCHYARD_SCHEDULER_TICK_SECONDS",
        "SWITCHYARD_WORKER_THREADS",
    }
    assert not any(var in out for var in others - {own})


@pytest.mark.parametrize("name", SERVICES)
def test_an_unknown_flag_exits_2_and_names_it(name: str) -> None:
    done = _run(name, "--frobnicate")
    assert done.returncode == 2
    assert "unrecognized arguments: --frobnicate" in done.stderr


def test_every_setting_but_the_clients_is_listed_by_some_service() -> None:
    from shared.service import CLIENT_FIELDS, settings_help
    from shared.settings import Settings

    listed = "\n".join(settings_help(name) for name in SERVICES)
    for field in Settings.model_fields.keys() - CLIENT_FIELDS:
        assert f"{field.upper()} (default" in listed, field
    assert "SWITCHYARD_URL " not in listed and "SWITCHYARD_API_KEY " not in listed
