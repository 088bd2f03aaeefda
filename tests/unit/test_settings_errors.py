"""A bad setting stops a service with a message that names the variable and what is
wrong with it, and never shows its value (SWITCHYARD_API_KEYS holds secrets)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.errors import ConfigError
from shared.settings import get_settings

SECRET = "sy_top-secret-0123456789"


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (f"{SECRET}:superuser", "entry 1 of SWITCHYARD_API_KEYS has role 'superuser'"),
        (f"ok:viewer,{SECRET}", "entry 2 of SWITCHYARD_API_KEYS is not 'key:role'"),
    ],
)
def test_a_bad_key_setting_names_the_entry_not_the_key(
    keys: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_API_KEYS", keys)
    with pytest.raises(ConfigError) as error:
        get_settings()
    message = str(error.value)
    assert says in message and "SWITCHYARD_API_KEYS" in message
    assert SECRET not in message and "top-secret" not in repr(error.value.__cause__)


def test_a_service_started_with_a_bad_key_prints_no_secret() -> None:
    env = {"SWITCHYARD_API_KEYS": f"{SECRET}:root", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "services.scheduler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "SWITCHYARD_API_KEYS" in done.stderr and "role 'root'" in done.stderr
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:pw@db:5432/yard", "postgres://u:pw@db:5432/yard",
     "postgresql+asyncpg://u:pw@db:5432/yard"],
)  # fmt: skip
def test_a_plain_postgresql_url_is_taken_with_the_asyncpg_driver(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen failing: postgresql:// (as most hosts write it) stopped the migration with
    "No module named 'psycopg'", postgres:// with "Can't load plugin"."""
    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    assert get_settings().database_url == "postgresql+asyncpg://u:pw@db:5432/yard"


def test_another_databases_url_is_refused_saying_which_is_wanted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u:pw-secret@db/yard")
    with pytest.raises(ConfigError) as error:
        get_settings()
    assert "postgresql+asyncpg://" in str(error.value) and "pw-secret" not in str(error.value)


def test_two_database_urls_that_differ_are_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen failing: a DATABASE_URL left in the shell for another program silently beat
    SWITCHYARD_DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@other/app")
    monkeypatch.setenv("SWITCHYARD_DATABASE_URL", "postgresql+asyncpg://u@db/yard")
    get_settings()
    assert "DATABASE_URL and SWITCHYARD_DATABASE_URL are both set" in caplog.text
