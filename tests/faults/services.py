"""The services a fault test starts by hand, each with the environment it injects."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import Stack, free_port, wait_http_ok


def api_and(
    start_service: Any, settings: Any, request: Any, env: dict[str, str], *services: str
) -> Stack:
    """The api on a free port, then ``services`` (scheduler, logger), each started with
    ``env`` (a proxied URL, a longer lease)."""
    port = free_port()
    env = {**env, "SWITCHYARD_API_PORT": str(port)}
    api = start_service("api", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", api)
    stack = Stack(start_service, url, settings.database_url)
    request.addfinalizer(stack.http.close)
    for name in services:
        stack.start(name, env=env)
    return stack
