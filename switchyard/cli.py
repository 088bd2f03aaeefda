"""``switchyard``: the command line. Human output by default, ``--json`` for scripts.

URL and key come from ``--url`` / ``--api-key`` or SWITCHYARD_URL / SWITCHYARD_API_KEY;
``--url``, ``--api-key`` and ``--json`` go before or after the subcommand. Exit codes:
0 done, 1 an error or a failed job, 2 a usage error, 3 a cancelled job, 124 ``wait``
ran out of time. Run it as ``switchyard`` (the installed script) or
``python -m switchyard.cli``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import typer

from switchyard import __version__, display
from switchyard.client import JobRead
from switchyard.console import call, client, echo_lines, options, parse_payload, print_json, say
from switchyard.states import TERMINAL, JobStatus
from switchyard.watch import exit_for, final_line, follow_job, wait_for

HISTORY_AGE_SHOWN = timedelta(seconds=5)  # `stats` says how old a reading this old is

app = typer.Typer(
    help="Switchyard job orchestrator: submit, watch and steer jobs.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"switchyard {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", envvar="SWITCHYARD_URL", help="API base URL")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="SWITCHYARD_API_KEY", help="API key")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    options.url, options.api_key, options.as_json = url, api_key, as_json
    source = ctx.get_parameter_source("api_key")
    from_env = getattr(source, "name", "") == "ENVIRONMENT"
    options.key_source = "SWITCHYARD_API_KEY" if from_env else "--api-key"


# The same options after the subcommand (`switchyard status ID --json`): every API
# command takes them too (``global_options`` adds them), and they win over those before it.
LateUrl = Annotated[str | None, typer.Option("--url", help="API base URL")]
LateKey = Annotated[str | None, typer.Option("--api-key", help="API key")]
LateJson = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
_LATE = {
    "late_url": (LateUrl, None),
    "late_api_key": (LateKey, None),
    "late_json": (LateJson, False),
}


def global_options(function: Callable[..., None]) -> Callable[..., None]:
    """``function`` as a command that also takes --url, --api-key and --json."""
    signature = inspect.signature(function, eval_str=True)
    late = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, (kind, default) in _LATE.items()
    ]

    @functools.wraps(function)
    def command(*args: Any, late_url: str | None = None, late_api_key: str | None = None,
                late_json: bool = False, **kwargs: Any) -> None:  # fmt: skip
        if late_url is not None:
            options.url = late_url
        if late_api_key is not None:
            options.api_key, options.key_source = late_api_key, "--api-key"
        options.as_json = options.as_json or late_json
        function(*args, **kwargs)

    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *late]
    )
    command.__annotations__ = {
        **function.__annotations__,
        **{name: kind for name, (kind, _) in _LATE.items()},
    }
    return command


def job_line(job: JobRead) -> str:
    label = f"{job.type} ({job.name})" if job.name else job.type
    return f"{job.id}  {label}  {job.status}  priority {job.priority}"


@app.command()
@global_options
def submit(
    type: Annotated[str, typer.Argument(help="task type, e.g. demo.sleep")],
    payload: Annotated[str, typer.Option(help="payload as a JSON object")] = "{}",
    priority: Annotated[str | None, typer.Option(help="critical | high | normal | low")] = None,
    depends_on: Annotated[
        list[str] | None, typer.Option("--depends-on", metavar="JOB_ID", help="job id (repeat)")
    ] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="cpu units")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="memory in MB")] = None,
    run_at: Annotated[str | None, typer.Option("--run-at", help="RFC 3339 time")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    name: Annotated[str | None, typer.Option(help="a label shown with the job")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="then wait for it, as `switchyard wait`")
    ] = False,
) -> None:
    """Submit a job."""
    body = parse_payload(payload)
    resources = {k: v for k, v in (("cpu_units", cpu), ("memory_mb", memory)) if v is not None}
    request = {
        "priority": priority, "depends_on": depends_on or None, "resources": resources or None,
        "run_at": run_at, "idempotency_key": idempotency_key, "name": name,
    }  # fmt: skip
    with client() as sy:
        job = sy.enqueue_job(type, body, **request)
    if options.as_json and not wait:
        print_json(job.model_dump(mode="json"))
    elif not options.as_json:
        say(job_line(job))
    if wait:
        wait_for(job.id, timeout=None)


@app.command()
@global_options
def status(job_id: str) -> None:
    """Show one job."""
    with client() as sy:
        job = sy.get_status(job_id)
    if options.as_json:
        print_json(job.model_dump(mode="json"))
    else:
        echo_lines(display.labelled(display.job_summary(job)))


@app.command("list")
@global_options
def list_jobs(
    status: Annotated[list[str] | None, typer.Option(help="repeat for several")] = None,
    type: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(help="at most this many (1-1000)")] = 50,
) -> None:
    """List jobs, newest first (`--status failed` is the dead-letter view)."""
    if not 1 <= limit <= 1000:
        say("error: --limit takes 1 to 1000", err=True)
        raise typer.Exit(2)
    params = {"status": status, "type": type, "priority": priority, "limit": limit}
    data = call("GET", "/jobs", params={k: v for k, v in params.items() if v is not None})
    if options.as_json:
        print_json(data)
        return
    jobs = [JobRead.model_validate(j) for j in data["items"]]
    columns = [
        display.Column("ID"), display.Column("TYPE", flexible=True),
        display.Column("NAME", flexible=True), display.Column("STATUS"),
        display.Column("PRIORITY"), display.Column("TRIES"),
        display.Column("WORKER", flexible=True), display.Column("CREATED"),
        display.Column("ERROR", flexible=True, least=5),
    ]  # fmt: skip
    rows = [
        [str(j.id), j.type, j.name or "", str(j.status), str(j.priority), str(j.attempts),
         j.worker_id or "", display.short_time(j.created_at), j.error or ""]
        for j in jobs
    ]  # fmt: skip
    echo_lines(display.table(columns, rows, display.terminal_width()))
    if data.get("next_cursor"):
        more = "filters" if len(jobs) < limit else "--limit or filters"  # a page of heavy jobs
        say(f"(more: showing the newest {len(jobs)}; use {more})", err=True)


@app.command()
@global_options
def cancel(job_id: str) -> None:
    """Cancel a job (a running one is stopped by its worker)."""
    with client() as sy:
        job = sy.cancel(job_id)
    if options.as_json:
        print_json(job.model_dump(mode="json"))
    elif job.status == JobStatus.CANCELLED:
        say(f"{job_line(job)}: cancelled")
    else:
        say(f"{job_line(job)}: cancel requested; its worker stops it")


@app.command()
@global_options
def retry(
    job_id: str,
    dependents: Annotated[
        bool, typer.Option(help="also the jobs that failed because of it")
    ] = False,
) -> None:
    """Re-run a failed or cancelled job (same id, history kept)."""
    with client() as sy:
        job = sy.retry(job_id, dependents=dependents)
    if options.as_json:
        print_json(job.model_dump(mode="json"))
    else:
        say(f"{job_line(job)}: queued again after {job.attempts} attempt(s)")


@app.command()
@global_options
def workers() -> None:
    """Workers, their capacity and what they run."""
    data = call("GET", "/workers")
    if options.as_json:
        print_json(data)
        return
    columns = [
        display.Column("ID", flexible=True), display.Column("STATE"), display.Column("CPU"),
        display.Column("MEMORY MB"), display.Column("SLOTS"), display.Column("RUNNING"),
        display.Column("HEARTBEAT"),
    ]  # fmt: skip
    rows = [
        [w["id"], w["state"],
         f"{w['allocated']['cpu_units']:g}/{w['capacity']['cpu_units']:g}",
         f"{w['allocated']['memory_mb']}/{w['capacity']['memory_mb']}",
         f"{w['allocated']['slots']}/{w['capacity']['slots']}",
         str(len(w["running"])), _heartbeat_age(w.get("last_heartbeat_at"))]
        for w in data
    ]  # fmt: skip
    echo_lines(display.table(columns, rows, display.terminal_width()))


def _heartbeat_age(ts: str | None) -> str:
    return display.ago(display.parse_time(ts)) if ts else ""


@app.command()
@global_options
def stats() -> None:
    """Counts, queue depth, throughput and durations."""
    data = call("GET", "/stats")
    if options.as_json:
        print_json(data)
        return
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(data["by_status"].items()))
    say(f"jobs by status: {by_status or 'none'}")
    # A large history is read again every so often, not for every answer (an older API
    # does not say when).
    read_at = data.get("history_read_at")
    read_when = display.parse_time(read_at) if read_at else None
    if read_when is not None and datetime.now(UTC) - read_when >= HISTORY_AGE_SHOWN:
        age = display.ago(read_when)
        say(f"                (finished jobs, throughput and durations as read {age})")
    say("queue depth:    " + ", ".join(f"{k} {v}" for k, v in data["queue_depth"].items()))
    for name, t in data["throughput"].items():
        say(f"{name:15} {t['last_minute']} in the last minute, {t['per_minute']}/min")
    for job_type, d in data["durations"].items():
        say(
            f"{job_type:20} {d['count']} run(s), mean {display.duration(d['mean_seconds'])}, "
            f"p95 {display.duration(d['p95_seconds'])}"
        )


@app.command()
@global_options
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the job ends")
    ] = False,
) -> None:
    """A job's attempts: each one's outcome, log lines, error and traceback. With
    --follow, new lines and progress as they come; exits 1 if the job fails, 3 if it is
    cancelled."""
    with client() as sy:
        if not follow:
            job = sy.get_status(job_id)
            history = sy.logs(job_id)
            if options.as_json:
                print_json(history.model_dump(mode="json"))
                return
            echo_lines(display.attempts(history.executions, history.lines))
            if not history.executions and not history.lines:
                say(f"(no attempt yet: the job is {job.status})")
            say(final_line(job) if job.status in TERMINAL else f"job is {job.status}")
            return
        job = follow_job(sy, job_id)
    exit_for(job)


@app.command()
@global_options
def wait(
    job_id: str,
    timeout: Annotated[
        float | None, typer.Option(help="give up after this many seconds (exit 124)")
    ] = None,
) -> None:
    """Wait for a job to end, with a progress bar when it reports progress. Exits 0 when
    it completed, 1 when it failed, 3 when it was cancelled."""
    wait_for(job_id, timeout)


schedules_app = typer.Typer(help="Periodic jobs (cron).", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


def schedule_line(s: dict[str, Any]) -> str:
    state = "paused" if s["paused"] else f"next run {_when_text(s.get('next_run_at'))}"
    return f"{s['id']}  {s['name']}  {s['cron']} ({s['timezone']})  {state}"


def _when_text(ts: str | None) -> str:
    return display.when(display.parse_time(ts)) if ts else "-"


@schedules_app.command("list")
@global_options
def schedules_list() -> None:
    """The schedules and their next runs."""
    data = call("GET", "/schedules")
    if options.as_json:
        print_json(data)
        return
    columns = [
        display.Column("ID"), display.Column("NAME", flexible=True), display.Column("CRON"),
        display.Column("TIMEZONE"), display.Column("NEXT RUN", flexible=True),
    ]  # fmt: skip
    rows = [
        [s["id"], s["name"], s["cron"], s["timezone"],
         "paused" if s["paused"] else _when_text(s.get("next_run_at"))]
        for s in data
    ]  # fmt: skip
    echo_lines(display.table(columns, rows, display.terminal_width()))


@schedules_app.command("create")
@global_options
def schedules_create(
    name: str,
    cron: Annotated[str, typer.Option(help="5 fields, or 6 with seconds last")],
    job_type: Annotated[str, typer.Option("--type", help="task type")],
    payload: Annotated[str, typer.Option(help="payload as a JSON object")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA time zone")] = "UTC",
) -> None:
    """Create a schedule."""
    body = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "job": {"type": job_type, "payload": parse_payload(payload)},
    }
    data = call("POST", "/schedules", json=body)
    print_json(data) if options.as_json else say(schedule_line(data))


def _set_paused(schedule_id: UUID, paused: bool) -> None:
    data = call("PATCH", f"/schedules/{schedule_id}", json={"paused": paused})
    print_json(data) if options.as_json else say(schedule_line(data))


@schedules_app.command("pause")
@global_options
def schedules_pause(schedule_id: UUID) -> None:
    """Stop a schedule's runs until resumed."""
    _set_paused(schedule_id, True)


@schedules_app.command("resume")
@global_options
def schedules_resume(schedule_id: UUID) -> None:
    """Resume a paused schedule."""
    _set_paused(schedule_id, False)


@schedules_app.command("delete")
@global_options
def schedules_delete(schedule_id: UUID) -> None:
    """Delete a schedule (its jobs stay)."""
    call("DELETE", f"/schedules/{schedule_id}")
    print_json({"deleted": str(schedule_id)}) if options.as_json else say("deleted")


# Server commands: they run Switchyard's own code (the `server` extra), not the API.


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def worker(ctx: typer.Context) -> None:
    """Run a worker over your tasks, from your project's directory:
    `switchyard worker --tasks mypkg.tasks` (`switchyard worker --help` lists its flags)."""
    from switchyard import server

    try:
        module = server.import_server("services.worker.__main__")
    except server.ServerUnavailable as exc:
        say(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    server.set_server_aside()
    server.put_user_directory_first()
    raise typer.Exit(module.main(list(ctx.args)))


db_app = typer.Typer(help="The database: create it and apply the migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="SWITCHYARD_DATABASE_URL",
            help="postgresql+asyncpg://user@host:port/name",
        ),
    ] = None,
    revision: Annotated[str, typer.Option(help="migrate to this revision")] = "head",
) -> None:
    """Create the database if missing and apply the migrations (they ship inside the
    package: this works from any directory)."""
    from switchyard import server

    try:
        dbtools = server.import_server("shared.dbtools")
        url = database_url or server.import_server("shared.settings").get_settings().database_url
        dbtools.upgrade(url, revision)
    except server.ServerUnavailable as exc:
        say(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # the database refused or is down: say so, no traceback
        say(f"error: cannot migrate the database: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app(prog_name="switchyard")


if __name__ == "__main__":
    main()
