"""``switchyard``: the command line. Human tables by default, ``--json`` for scripts.

URL and key come from ``--url`` / ``--api-key`` or SWITCHYARD_URL / SWITCHYARD_API_KEY.
Run it as ``switchyard`` (the installed script) or ``python -m switchyard.cli``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer

from switchyard.client import ApiError, Client
from switchyard.states import TERMINAL

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


def fail(exc: ApiError) -> NoReturn:
    typer.echo(
        f"error: {exc.detail} (HTTP {exc.status})" if exc.status else f"error: {exc.detail}",
        err=True,
    )
    raise typer.Exit(1)


def parse_payload(payload: str) -> Any:
    try:
        return json.loads(payload)
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --payload is not JSON: {exc}", err=True)
        raise typer.Exit(2) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command()
def submit(
    type: Annotated[str, typer.Argument(help="task type, e.g. demo.sleep")],
    payload: Annotated[str, typer.Option(help="payload as a JSON object")] = "{}",
    priority: Annotated[str | None, typer.Option(help="critical | high | normal | low")] = None,
    depends_on: Annotated[
        list[str] | None, typer.Option("--depends-on", help="job id (repeat)")
    ] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="cpu units")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="memory in MB")] = None,
    run_at: Annotated[str | None, typer.Option("--run-at", help="RFC 3339 time")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    name: Annotated[str | None, typer.Option(help="a label")] = None,
) -> None:
    """Submit a job."""
    body = parse_payload(payload)
    resources = {k: v for k, v in (("cpu_units", cpu), ("memory_mb", memory)) if v is not None}
    request = {
        "type": type, "payload": body, "priority": priority, "depends_on": depends_on or None,
        "resources": resources or None, "run_at": run_at, "idempotency_key": idempotency_key,
        "name": name,
    }  # fmt: skip
    data = call("POST", "/jobs", json={k: v for k, v in request.items() if v is not None})
    if state["json"]:
        print_json(data)
    else:
        typer.echo(f"{data['id']}  {data['status']}  {data['type']}  {data['priority']}")


def call(method: str, path: str, **kwargs: Any) -> Any:
    with state["client"]() as client:
        try:
            return client.raw(method, path, **kwargs)
        except ApiError as exc:
            fail(exc)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain text table (the --json output is the API's document)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@app.command("list")
def list_jobs(
    status: Annotated[list[str] | None, typer.Option(help="repeat for several")] = None,
    type: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
) -> None:
    """List jobs, newest first (``--status failed`` is the dead-letter view)."""
    params = {"status": status, "type": type, "priority": priority, "limit": min(limit, 1000)}
    data = call("GET", "/jobs", params={k: v for k, v in params.items() if v is not None})
    if state["json"]:
        print_json(data)
        return
    table(
        data["items"],
        ["id", "type", "status", "priority", "attempts", "worker_id", "created_at", "error"],
    )


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a job (a running one is stopped by its worker)."""
    data = call("PATCH", f"/jobs/{job_id}/cancel")
    print_json(data) if state["json"] else typer.echo(
        f"{data['id']}  {data['status']}  cancel_requested={data['cancel_requested']}"
    )


@app.command()
def retry(
    job_id: str,
    dependents: Annotated[
        bool, typer.Option(help="also the jobs that failed because of it")
    ] = False,
) -> None:
    """Re-run a failed or cancelled job (same id, history kept)."""
    data = call("POST", f"/jobs/{job_id}/retry", params={"dependents": dependents})
    print_json(data) if state["json"] else typer.echo(
        f"{data['id']}  {data['status']}  attempts so far: {data['attempts']}"
    )


@app.command()
def workers() -> None:
    """Workers, their capacity and what they run."""
    data = call("GET", "/workers")
    if state["json"]:
        print_json(data)
        return
    rows = [
        {**w, "cpu": f"{w['allocated']['cpu_units']:g}/{w['capacity']['cpu_units']:g}",
         "memory_mb": f"{w['allocated']['memory_mb']}/{w['capacity']['memory_mb']}",
         "slots": f"{w['allocated']['slots']}/{w['capacity']['slots']}",
         "running": len(w["running"])}
        for w in data
    ]  # fmt: skip
    table(rows, ["id", "state", "cpu", "memory_mb", "slots", "running", "last_heartbeat_at"])


@app.command()
def stats() -> None:
    """Counts, queue depth, throughput and durations."""
    data = call("GET", "/stats")
    if state["json"]:
        print_json(data)
        return
    typer.echo(
        "by status:   " + ", ".join(f"{k}={v}" for k, v in sorted(data["by_status"].items()))
    )
    typer.echo("queue depth: " + ", ".join(f"{k}={v}" for k, v in data["queue_depth"].items()))
    for status_name, t in data["throughput"].items():
        typer.echo(f"{status_name:10} last minute {t['last_minute']}, {t['per_minute']}/min")
    for job_type, d in data["durations"].items():
        mean, p95 = d["mean_seconds"], d["p95_seconds"]
        typer.echo(f"{job_type:20} n={d['count']} mean={mean:.3f}s p95={p95:.3f}s")


schedules_app = typer.Typer(help="Periodic jobs (cron).", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


@schedules_app.command("list")
def schedules_list() -> None:
    data = call("GET", "/schedules")
    print_json(data) if state["json"] else table(
        data, ["id", "name", "cron", "timezone", "paused", "next_run_at"]
    )


@schedules_app.command("create")
def schedules_create(
    name: str,
    cron: Annotated[str, typer.Option(help="5 fields, or 6 with seconds last")],
    job_type: Annotated[str, typer.Option("--type", help="task type")],
    payload: Annotated[str, typer.Option(help="payload as a JSON object")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "UTC",
) -> None:
    body = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "job": {"type": job_type, "payload": parse_payload(payload)},
    }
    data = call("POST", "/schedules", json=body)
    print_json(data) if state["json"] else typer.echo(
        f"{data['id']}  {data['name']}  next run {data['next_run_at']}"
    )


@schedules_app.command("pause")
def schedules_pause(schedule_id: str) -> None:
    data = call("PATCH", f"/schedules/{schedule_id}", json={"paused": True})
    print_json(data) if state["json"] else typer.echo(f"{data['name']} paused")


@schedules_app.command("resume")
def schedules_resume(schedule_id: str) -> None:
    data = call("PATCH", f"/schedules/{schedule_id}", json={"paused": False})
    print_json(data) if state["json"] else typer.echo(
        f"{data['name']} resumed; next run {data['next_run_at']}"
    )


@schedules_app.command("delete")
def schedules_delete(schedule_id: str) -> None:
    call("DELETE", f"/schedules/{schedule_id}")
    if not state["json"]:
        typer.echo("deleted")


@app.command()
def status(job_id: str) -> None:
    """Show one job."""
    data = call("GET", f"/jobs/{job_id}")
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


def every_log_line(client: Any, job_id: str) -> dict[str, Any]:
    """GET /jobs/{id}/logs page after page: one document with every line."""
    data: dict[str, Any] = client.raw("GET", f"/jobs/{job_id}/logs")
    page = data
    while page.get("next_cursor"):
        page = client.raw("GET", f"/jobs/{job_id}/logs", params={"cursor": page["next_cursor"]})
        data["lines"].extend(page["lines"])
        data["executions"] = page["executions"]
    data["next_cursor"] = None
    return data


def print_line(line: dict[str, Any]) -> None:
    """A line of GET /jobs/{id}/logs, printed as a streamed one is."""
    typer.echo(format_line({"ts": line["ts"], "attempt": line["attempt"], "data": line}))


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
                data = every_log_line(client, job_id)
                if state["json"]:
                    print_json(data)
                    return
                for line in data["lines"]:
                    print_line(line)
                return
            for event in client.stream(job_ids=[job_id], replay=True):
                if event["event"] == "dropped" and event["data"].get("replay"):
                    # The replay sent only the latest lines: the earlier ones, over REST.
                    earlier = every_log_line(client, job_id)["lines"][: event["data"]["count"]]
                    for line in earlier:
                        if state["json"]:
                            typer.echo(json.dumps(line))
                        else:
                            print_line(line)
                    continue
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
