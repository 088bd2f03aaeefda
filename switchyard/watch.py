"""Following a job to its end from the command line (``logs --follow``, ``wait``,
``submit --wait``): its lines and progress as they come, how it ended, and the exit
code that says so."""

from __future__ import annotations

import json
from typing import Any

import typer

from switchyard import display
from switchyard.client import Client, JobRead
from switchyard.console import client, echo_lines, options, print_json, say
from switchyard.models import ExecutionRead, LogLine
from switchyard.states import TERMINAL, JobStatus

EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_TIMEOUT = 124


def exit_for(job: JobRead) -> None:
    """The exit code of a command that watched a job to its end."""
    if job.status == JobStatus.FAILED:
        raise typer.Exit(EXIT_FAILED)
    if job.status == JobStatus.CANCELLED:
        raise typer.Exit(EXIT_CANCELLED)


def final_line(job: JobRead) -> str:
    if job.status == JobStatus.COMPLETED:
        took = ""
        if job.started_at and job.finished_at:
            took = f" in {display.duration((job.finished_at - job.started_at).total_seconds())}"
        result = "" if job.result is None else f"; result {display.compact(job.result)}"
        return f"job {job.id} completed{took}{result}"
    return f"job {job.id} {job.status}: {job.error or 'no error recorded'}"


def follow_job(sy: Client, job_id: str) -> JobRead:
    """Print a job's events until it ends; the earlier lines the replay left out come
    from REST first. Returns the job as it ended."""
    bar = display.ProgressBar()
    attempt_shown: int | None = None
    for event in sy.stream(job_ids=[job_id], replay=True):
        if options.as_json:
            typer.echo(json.dumps(event.model_dump(mode="json")))
        elif event.event == "dropped" and event.data.get("replay"):
            for line in first_lines(sy, job_id, event.data["count"]):
                attempt_shown = _print_line(bar, line, attempt_shown)
        elif event.event == "log" and event.ts is not None:
            line = LogLine(
                ts=event.ts,
                attempt=event.attempt or 0,
                level=event.data.get("level", "info"),
                message=event.data.get("message", ""),
            )
            attempt_shown = _print_line(bar, line, attempt_shown)
        elif event.event == "progress":
            bar.show(event.data)
        elif event.event == "dropped":
            bar.clear()
            say(f"-- {event.data.get('count')} event(s) dropped (slow reader)", err=True)
        elif event.event == "state":
            bar.clear()
            say(f"-- {event.data.get('new_status')}", err=True)
        if event.event == "state" and event.data.get("new_status") in TERMINAL:
            break
    bar.clear()
    job = sy.get_status(job_id)
    if job.status not in TERMINAL:
        say(
            f"error: the event stream closed before the job ended (it is {job.status}); "
            f"run `switchyard logs {job_id} --follow` again",
            err=True,
        )
        raise typer.Exit(1)
    if not options.as_json:
        print_end(sy, job)
    return job


def first_lines(sy: Client, job_id: str, count: int) -> list[LogLine]:
    """The job's first ``count`` lines, reading no further pages than those."""
    lines: list[LogLine] = []
    cursor = None
    while len(lines) < count:
        page = sy.logs_page(job_id, limit=min(count - len(lines), 1000), cursor=cursor)
        lines += page.lines
        if not (cursor := page.next_cursor):
            break
    return lines[:count]


def print_end(sy: Client, job: JobRead) -> None:
    """How a watched job ended: the last attempt's error and traceback unless it
    completed, then one line."""
    if job.status != JobStatus.COMPLETED:
        last = _last_execution(sy.logs_page(job.id, limit=1).executions)
        echo_lines(display.attempt_error(last) if last else [])
    say(final_line(job))


def _print_line(bar: display.ProgressBar, line: LogLine, shown: int | None) -> int:
    bar.clear()
    if line.attempt != shown:
        say(f"attempt {line.attempt}")
    say(display.log_line(line))
    return line.attempt


def _last_execution(executions: list[ExecutionRead]) -> ExecutionRead | None:
    return max(executions, key=lambda e: e.attempt, default=None)


def wait_for(job_id: Any, timeout: float | None) -> None:
    bar = display.ProgressBar()
    with client() as sy:
        try:
            job = sy.wait(
                job_id,
                timeout=timeout if timeout is not None else float("inf"),
                poll=0.25,
                on_progress=None if options.as_json else lambda j: bar.show(j.progress),
            )
        except TimeoutError as exc:
            bar.clear()
            say(f"error: {exc}; `switchyard status {job_id}` shows it later", err=True)
            raise typer.Exit(EXIT_TIMEOUT) from None
        bar.clear()
        if options.as_json:
            print_json(job.model_dump(mode="json"))
        else:
            print_end(sy, job)
    exit_for(job)
