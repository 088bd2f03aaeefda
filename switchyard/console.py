"""The command line's session: the global options wherever they were given, the
client it talks to the API with, how a refusal reads (what went wrong and what to do
next), and human or JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from switchyard import display
from switchyard.client import Client
from switchyard.errors import ApiError


class Options:
    """The global options, wherever on the command line they were given."""

    url: str | None = None
    api_key: str | None = None
    key_source = "SWITCHYARD_API_KEY"
    as_json = False


options = Options()


def masked(key: str) -> str:
    return f"'{key[:4]}…' ({len(key)} characters)" if len(key) > 6 else "a short key"


def advice(exc: ApiError) -> str:
    """What went wrong and what to do next, for each kind of refusal."""
    detail = exc.detail
    if isinstance(detail, list):  # a validation error: where and what
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in detail
            if isinstance(e, dict)
        )
    elif not isinstance(detail, str):
        detail = display.compact(detail)
    if exc.status == 0:
        return (
            f"{detail}\nIs the API running (`make run`)? Point the CLI at it with --url "
            "or SWITCHYARD_URL."
        )
    if exc.status == 401:
        used = (
            f"the key {masked(options.api_key)} from {options.key_source}"
            if options.api_key
            else "no key (none given)"
        )
        return (
            f"the API refused the request (HTTP 401: {detail}); it was sent with {used}.\n"
            "Set a valid key with `export SWITCHYARD_API_KEY=<key>` or pass `--api-key <key>`."
        )
    if exc.status == 403:
        return f"{detail} (HTTP 403): use a key whose role allows this."
    if exc.status == 404 and detail == "Not Found":  # no such route: not an id's fault
        return (
            f"the API has no such route (HTTP 404): is {options.url or 'the URL'} the API's "
            "base URL (http://host:port, nothing after it)? Set it with --url or SWITCHYARD_URL."
        )
    if exc.status == 404:
        return f"{detail} (HTTP 404): check the id; `switchyard list` shows recent jobs."
    if exc.status == 409:
        return f"{detail} (HTTP 409): `switchyard status <id>` shows where the job is."
    if exc.status in (400, 413, 422):
        return f"the API did not accept the request (HTTP {exc.status}): {detail}"
    if exc.status == 429:
        return f"{detail} (HTTP 429): too many requests; wait a moment and run it again."
    return f"{detail} (HTTP {exc.status}): try again; if it persists, read the API's log."


def fail(exc: ApiError) -> NoReturn:
    say(f"error: {advice(exc)}", err=True)
    raise typer.Exit(1)


@contextmanager
def client() -> Iterator[Client]:
    """A client for this command; an API error ends the command with advice."""
    try:
        with Client(options.url, options.api_key or "") as sy:
            yield sy
    except ApiError as exc:
        fail(exc)
    except ValueError as exc:  # an argument the SDK refused before asking: a job id
        say(f"error: {exc}; `switchyard list` shows recent jobs' ids", err=True)
        raise typer.Exit(2) from None


def call(method: str, path: str, **kwargs: Any) -> Any:
    with client() as sy:
        return sy.raw(method, path, **kwargs)


def say(text: str, *, err: bool = False) -> None:
    """Human output: what a job, a task or a submitter wrote is shown, never obeyed by
    the terminal (control characters escaped)."""
    typer.echo(display.safe(text), err=err)


def echo_lines(lines: list[str]) -> None:
    for line in lines:
        say(line)


def print_json(value: Any) -> None:
    typer.echo(display.pretty(value))


def parse_payload(payload: str, option: str = "--payload") -> Any:
    try:
        return json.loads(payload)
    except json.JSONDecodeError as exc:
        say(f"error: {option} is not JSON ({exc}); e.g. {option} '{{\"x\": 1}}'", err=True)
        raise typer.Exit(2) from None
