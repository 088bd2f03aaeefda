"""The CLI without a server: options anywhere, version, completion, and advice that says
what to do next."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

from switchyard import AsyncClient, Client, __version__
from switchyard.cli import advice, options
from switchyard.errors import ApiError

NOWHERE = "http://127.0.0.1:9"  # nothing listens on the discard port


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "switchyard.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_and_completion() -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"switchyard {__version__}"
    completion = cli("--show-completion", "bash")
    assert completion.returncode == 0 and "complete" in completion.stdout
    words = subprocess.run(
        [sys.executable, "-m", "switchyard.cli"],
        env={**os.environ, "_SWITCHYARD_COMPLETE": "complete_bash",
             "COMP_WORDS": "switchyard sta", "COMP_CWORD": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert set(words.stdout.split()) >= {"status", "stats"}


def test_global_options_after_the_subcommand_win() -> None:
    out = cli("--url", "http://127.0.0.1:1", "status", "x", "--url", NOWHERE, "--json")
    assert out.returncode == 1
    assert f"cannot reach {NOWHERE}" in out.stderr and "--url or SWITCHYARD_URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_payload_that_is_not_json_is_a_usage_error() -> None:
    out = cli("submit", "demo.echo", "--payload", "{x: 1}", SWITCHYARD_URL=NOWHERE)
    assert out.returncode == 2 and "--payload is not JSON" in out.stderr


def test_every_refusal_says_what_to_do_next() -> None:
    options.api_key, options.key_source = "k-1234567890", "SWITCHYARD_API_KEY"
    text = advice(ApiError(401, "invalid or revoked API key"))
    assert "'k-12…' (12 characters) from SWITCHYARD_API_KEY" in text
    assert "export SWITCHYARD_API_KEY=" in text and "--api-key" in text
    assert "k-1234567890" not in text, "the whole key printed"
    options.api_key = None
    assert "no key" in advice(ApiError(401, "missing API key"))
    assert "switchyard list" in advice(ApiError(404, "job not found"))
    field_errors = [{"loc": ["body", "payload", "seconds"], "msg": "must be a number"}]
    assert "payload.seconds: must be a number" in advice(ApiError(422, field_errors))
    assert "{'" not in advice(ApiError(500, {"detail": "x", "error_id": "e1"}))


def test_the_async_client_has_every_method_of_the_client() -> None:
    def methods(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    assert methods(AsyncClient) == methods(Client)
