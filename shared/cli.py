"""``switchyard``: the command line. Human tables by default, ``--json`` for scripts.

URL and key come from ``--url`` / ``--api-key`` or SWITCHYARD_URL / SWITCHYARD_API_KEY.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from shared.client import ApiError, Client
from shared.states import TERMINAL

app = typer.Typer(help="Switchyard job orchestrator: submit and watch jobs.", no_args_is_help=True)
state: dict[str, Any] = {}

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="SWITCHYARD_URL", help="API base URL")]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="SWITCHYARD_API_KEY", help="API key")
]


@app.callback()
def main_options(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON unchanged")] = False,
) -> None:
    state["client"] = lambda: Client(url or "http://127.0.0.1:8000", api_key or "")
    state["json"] = as_json


def fail(exc: ApiError) -> None:
    typer.echo(
        f"error: {exc.detail} (HTTP {exc.status})" if exc.status else f"error: {exc.detail}",
        err=True,
    )
    raise typer.Exit(1)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command()
def submit(
    type: Annotated[str, typer.Argument(help="task type, e.g. demo.sleep")],
    payload: Annotated[str, typer.Option(help="payload as a JSON object")] = "{}",
    priority: Annotated[str | None, typer.Option(help="critical | high | normal | low")] = None,
) -> None:
    """Submit a job."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --payload is not JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    with state["client"]() as client:
        try:
            data = client.raw(
                "POST",
                "/jobs",
                json={"type": type, "payload": body} | ({"priority": priority} if priority else {}),
            )
        except ApiError as exc:
            fail(exc)
    if state["json"]:
        print_json(data)
    else:
        typer.echo(f"{data['id']}  {data['status']}  {data['type']}  {data['priority']}")


@app.command()
def status(job_id: str) -> None:
    """Show one job."""
    with state["client"]() as client:
        try:
            data = client.raw("GET", f"/jobs/{job_id}")
        except ApiError as exc:
            fail(exc)
    if state["json"]:
        print_json(data)
        return
    keys = ("id", "type", "status", "priority", "attempts", "worker_id", "waiting_reason",
            "created_at", "started_at", "finished_at", "result", "error", "progress")  # fmt: skip
    for key in keys:
        if data.get(key) is not None:
            typer.echo(f"{key:15} {data[key]}")


def format_line(event: dict[str, Any]) -> str:
    data = event["data"]
    return f"{event['ts']} [{event['attempt']}] {data['level'].upper():8} {data['message']}"


@app.command()
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the job ends")
    ] = False,
) -> None:
    """Print a job's log lines (and with --follow, new ones as they come)."""
    with state["client"]() as client:
        try:
            if not follow:
                data = client.raw("GET", f"/jobs/{job_id}/logs")
                if state["json"]:
                    print_json(data)
                    return
                for line in data["lines"]:
                    typer.echo(
                        format_line({"ts": line["ts"], "attempt": line["attempt"], "data": line})
                    )
                return
            for event in client.stream(job_ids=[job_id], replay=True):
                if state["json"]:
                    typer.echo(json.dumps(event))
                elif event["event"] == "log":
                    typer.echo(format_line(event))
                elif event["event"] == "state":
                    typer.echo(f"-- {event['data']['new_status']}", err=True)
                elif event["event"] == "dropped":
                    typer.echo(
                        f"-- {event['data']['count']} event(s) dropped (slow reader)", err=True
                    )
                if event["event"] == "state" and event["data"]["new_status"] in TERMINAL:
                    return
        except ApiError as exc:
            fail(exc)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
