"""``python -m services.api`` as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import ADMIN_KEY, auth
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.e2e


def test_readme_example_and_docs(api_url: str) -> None:
    docs = httpx.get(f"{api_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{api_url}/openapi.json").json()
    assert {
        "/jobs",
        "/jobs/batch",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/logs",
        "/healthz",
    } <= set(schema["paths"])
    # The README's curl example, with httpx.
    r = httpx.post(
        f"{api_url}/jobs",
        json={"type": "demo.sleep", "payload": {"seconds": 2}, "priority": "high"},
        headers=auth(ADMIN_KEY),
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    got = httpx.get(f"{api_url}/jobs/{job_id}", headers=auth(ADMIN_KEY))
    assert got.status_code == 200
    assert got.json()["id"] == job_id and got.json()["priority"] == "high"


def test_every_route_documents_its_error_codes(api_url: str) -> None:
    schema = httpx.get(f"{api_url}/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if path != "/healthz":
                assert {"401", "403", "503"} <= codes, (method, path, codes)
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in codes, (method, path, codes)
            if op.get("requestBody"):
                assert "413" in codes, (method, path, codes)


def test_refuses_to_start_without_keys(service_env: dict[str, str]) -> None:
    env = {**service_env, "SWITCHYARD_API_KEYS": "", "SWITCHYARD_API_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "services.api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "no API keys" in result.stdout + result.stderr


def test_dev_mode_without_keys_acts_as_admin(
    start_service: object, service_env: dict[str, str]
) -> None:
    from tests.e2e.conftest import wait_http_ok

    port = free_port()
    proc = start_service(
        "api",
        env={"SWITCHYARD_API_KEYS": "", "SWITCHYARD_DEV": "1", "SWITCHYARD_API_PORT": str(port)},
    )  # type: ignore[operator]
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
    r = httpx.post(f"http://127.0.0.1:{port}/jobs", json={"type": "demo.echo"})
    assert r.status_code == 201
    assert r.json()["created_by"] == "dev"
    assert "dev" in proc.output().lower()
