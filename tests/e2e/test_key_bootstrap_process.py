"""An API process must never revoke keys it did not create from its own configuration:
a dev-mode API (no keys) started against a database leaves every key in it valid, also
when it cannot bind its port."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ADMIN_KEY, TEST_KEYS, auth
from tests.e2e.conftest import ServiceProcess, Stack, free_port, wait_http_ok

pytestmark = pytest.mark.e2e

DEV_NO_KEYS = {"SWITCHYARD_DEV": "1", "SWITCHYARD_API_KEYS": ""}


def _revoked_keys(stack: Stack) -> list:
    return stack.sql("SELECT label, revoked_reason FROM api_keys WHERE revoked_at IS NOT NULL")


def _check_keys_still_work(api_url: str, stack: Stack) -> None:
    assert _revoked_keys(stack) == []
    for key in TEST_KEYS:
        r = httpx.get(f"{api_url}/jobs", headers=auth(key), timeout=10)
        assert r.status_code == 200, (key, r.status_code, r.text)


def test_dev_mode_api_leaves_env_keys_valid(
    api_url: str, start_service: Callable[..., ServiceProcess], settings: object
) -> None:
    stack = Stack(start_service, api_url, settings.database_url)  # type: ignore[attr-defined]
    assert httpx.get(f"{api_url}/jobs", headers=auth(ADMIN_KEY)).status_code == 200
    port = free_port()
    dev = start_service("api", env={**DEV_NO_KEYS, "SWITCHYARD_API_PORT": str(port)})
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", dev)
    _check_keys_still_work(api_url, stack)


def test_dev_mode_api_that_cannot_bind_leaves_env_keys_valid(
    api_url: str, start_service: Callable[..., ServiceProcess], settings: object
) -> None:
    stack = Stack(start_service, api_url, settings.database_url)  # type: ignore[attr-defined]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dev = start_service("api", env={**DEV_NO_KEYS, "SWITCHYARD_API_PORT": str(port)})
        code = dev.wait(timeout=60)
    assert code != 0, dev.output()
    _check_keys_still_work(api_url, stack)
