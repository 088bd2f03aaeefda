"""The CLI without a server: options anywhere, version, completion, and advice that says
what to do next."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from typing import Any

import httpx

from switchyard import AsyncClient, Client, __version__
from switchyard.client import answer, retry_after
from switchyard.console import advice, options
from switchyard.display import attempts_text, safe
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
    job = "01a24155-6c5c-737c-a456-c60a52f74df5"
    out = cli("--url", "http://127.0.0.1:1", "status", job, "--url", NOWHERE, "--json")
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
    # A route the API does not have: the URL is wrong, not an id (seen failing: "check
    # the id" for `switchyard stats` at http://host:8000/api).
    options.url = "http://127.0.0.1:8000/api"
    wrong_url = advice(ApiError(404, "Not Found"))
    assert "no such route" in wrong_url and "http://127.0.0.1:8000/api" in wrong_url
    assert "check the id" not in wrong_url
    options.url = None
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


def test_a_job_id_must_be_an_id_before_it_goes_into_a_path() -> None:
    out = cli("cancel", "../workers", SWITCHYARD_URL=NOWHERE)
    assert out.returncode == 2 and "'../workers' is not a job id" in out.stderr
    with Client(NOWHERE) as sy:
        for bad in ("../api-keys/me", "x?dependents=true", ""):
            try:
                sy.cancel(bad)
            except ValueError as exc:
                assert "is not a job id" in str(exc)
            else:
                raise AssertionError(f"{bad!r} accepted")


def test_a_schedule_id_must_be_an_id_before_it_goes_into_a_path() -> None:
    """``schedules delete ../api-keys/<id>`` once sent DELETE /api-keys/<id> (httpx
    drops the dot segments): with an admin key, a key revoked."""
    for command in ("delete", "pause", "resume"):
        out = cli("schedules", command, "../api-keys/me", SWITCHYARD_URL=NOWHERE)
        assert out.returncode == 2, (command, out.stderr)
        assert "invalid value for 'schedule_id'" in out.stderr.lower()
        assert "valid uuid" in out.stderr.lower()
        assert "cannot reach" not in out.stderr  # refused before anything was sent


def test_retry_after_is_read_safely() -> None:
    def wait(header: str | None, attempt: int = 0) -> float:
        headers = {"Retry-After": header} if header is not None else {}
        return retry_after(httpx.Response(429, headers=headers), attempt, cap=30)

    assert wait("2") == 2 and wait("1000") == 30  # capped
    assert wait(None) == 0.5 and wait(None, 3) == 4  # a guess that grows
    for odd in ("nan", "inf", "-5", "soon", "1e9"):
        assert 0 <= wait(odd) <= 30, odd
    assert wait("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past


def test_answers_that_are_not_the_apis_are_api_errors() -> None:
    page = httpx.Response(200, text="<html>portal</html>")
    moved = httpx.Response(302, headers={"Location": "/x"})
    listed = httpx.Response(500, json=["odd"])
    for response in (page, moved, listed):
        try:
            answer(response)
        except ApiError as exc:
            assert exc.status == response.status_code
        else:
            raise AssertionError(response)


def test_human_output_never_carries_control_characters() -> None:
    hostile = "nap\x1b]52;c;Zm9v\x07\x1b[2J\r\x9bX"
    shown = safe(hostile)
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in shown)
    assert shown.startswith("nap\\x1b]52")


def test_stats_says_how_old_a_reused_history_reading_is(monkeypatch: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from typer.testing import CliRunner

    from switchyard import cli as cli_module

    def answer_read(ago: timedelta) -> dict[str, Any]:
        return {
            "by_status": {"completed": 3}, "queue_depth": {"ready": 0}, "throughput": {},
            "durations": {}, "history_read_at": (datetime.now(UTC) - ago).isoformat(),
        }  # fmt: skip

    runner = CliRunner()
    for ago, shown in ((timedelta(seconds=40), True), (timedelta(0), False)):
        monkeypatch.setattr(cli_module, "call", lambda *a, ago=ago, **k: answer_read(ago))
        out = runner.invoke(cli_module.app, ["stats"])
        assert out.exit_code == 0, out.output
        assert ("as read" in out.output) is shown, out.output
        assert not shown or "as read 40" in out.output, out.output


def test_attempts_past_the_budget_read_as_a_count_not_a_fraction() -> None:
    """After a retry, attempt numbers go on: "6 of 3" read as a contradiction."""
    assert attempts_text(2, 3) == "2 of 3 attempt(s)"
    assert attempts_text(3, 3) == "3 of 3 attempt(s)"
    assert attempts_text(6, 3) == "6 attempts in all; 3 allowed per retry or hand-back"
