"""How the CLI shows things to a person: times, JSON values, tables that fit the terminal,
a job, its attempts, a progress bar. (``--json`` prints the API's documents instead.)"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from switchyard.models import ExecutionRead, JobRead, LogLine

ELLIPSIS = "…"
# C0 and C1 control characters but the newline: escape sequences, carriage returns, bells.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """``text`` with its control characters shown as ``\\xNN``, so that what a job's
    submitter or its task wrote cannot move the cursor, retitle or clear a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def parse_time(text: str) -> datetime:
    return aware(datetime.fromisoformat(text))


def aware(ts: datetime) -> datetime:
    """The API sends times with an offset; one without is read as UTC, not local time."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def when(ts: datetime | None, *, now: datetime | None = None) -> str:
    """A time as a person reads it: local, to the second, with how long ago."""
    if ts is None:
        return "-"
    local = aware(ts).astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S} ({ago(ts, now=now)})"


def short_time(ts: datetime | None, *, now: datetime | None = None) -> str:
    """Time of day for today's times, else the date too (table cells)."""
    if ts is None:
        return ""
    local, today = aware(ts).astimezone(), (now or datetime.now(UTC)).astimezone()
    return f"{local:%H:%M:%S}" if local.date() == today.date() else f"{local:%Y-%m-%d %H:%M}"


def ago(ts: datetime, *, now: datetime | None = None) -> str:
    seconds = ((now or datetime.now(UTC)) - aware(ts)).total_seconds()
    suffix = "ago" if seconds >= 0 else "from now"
    return f"{duration(abs(seconds))} {suffix}"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def compact(value: Any) -> str:
    """A JSON value on one line for a person (never a Python repr)."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False, default=str)


def pretty(value: Any) -> str:
    """JSON for scripts: every control character escaped (``ensure_ascii``)."""
    return json.dumps(value, indent=2, default=str)


def terminal_width() -> int:
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def fit(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line: newlines and tabs would break the table
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


@dataclass(frozen=True)
class Column:
    title: str
    #: Flexible columns give up width (cut with …) when the table is wider than the screen.
    flexible: bool = False
    #: A flexible column never gets narrower than this.
    least: int = 8


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Rows as aligned text no wider than ``width``."""
    cells = [[" ".join(c.split()) for c in row] for row in rows]
    widths = [
        max([len(col.title), *(len(row[i]) for row in cells)]) for i, col in enumerate(columns)
    ]
    gap = 2
    excess = sum(widths) + gap * (len(columns) - 1) - width
    # Take the excess from the widest flexible columns first.
    while excess > 0:
        flexible = [i for i, c in enumerate(columns) if c.flexible and widths[i] > c.least]
        if not flexible:
            break
        widest = max(flexible, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    lines = ["  ".join(c.title.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append(
            "  ".join(fit(v, w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        )
    return lines


def progress_text(progress: dict[str, Any] | None, width: int = 30) -> str:
    """``[#########.........]  45%  9/20  message`` (or the count alone without a total)."""
    if not progress:
        return ""
    done, total, message = progress.get("done"), progress.get("total"), progress.get("message")
    parts = []
    if isinstance(total, int | float) and total > 0 and isinstance(done, int | float):
        share = min(max(done / total, 0.0), 1.0)
        filled = round(share * width)
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        parts += [bar, f"{share:4.0%}", f"{done:g}/{total:g}"]
    elif isinstance(done, int | float):
        parts.append(f"{done:g} done")
    if message:
        parts.append(str(message))
    return "  ".join(parts)


class ProgressBar:
    """A progress line on ``stream``: redrawn in place on a terminal, one line per change
    otherwise (a log file or a pipe gets every step, not carriage returns)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._shown = ""

    def show(self, progress: dict[str, Any] | None) -> None:
        text = progress_text(progress, width=min(30, max(10, terminal_width() - 50)))
        if not text or text == self._shown:
            return
        self._shown = text
        if self.live:
            self.stream.write("\r\x1b[2K" + safe(fit(text, terminal_width() - 1)))
        else:
            self.stream.write(f"progress {safe(text)}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Leave the line for other output (on a terminal: end the redrawn line)."""
        if self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = ""


def attempts_text(attempts: int, max_attempts: int) -> str:
    """How many attempts a job made, against its budget: attempt numbers go on past
    ``max_attempts`` after a retry or a hand-back (each gives a fresh budget)."""
    if attempts <= max_attempts:
        return f"{attempts} of {max_attempts} attempt(s)"
    return f"{attempts} attempts in all; {max_attempts} allowed per retry or hand-back"


def job_summary(job: JobRead) -> list[tuple[str, str]]:
    """A job as (label, text) pairs, the empty ones left out."""
    attempts = attempts_text(job.attempts, job.retry.max_attempts)
    fields = [
        ("id", str(job.id)),
        ("name", job.name or ""),
        ("type", job.type),
        ("status", f"{job.status}  ({attempts})"),
        ("priority", str(job.priority)),
        ("resources", f"{job.resources.cpu_units:g} cpu, {job.resources.memory_mb} MB"),
        ("depends on", ", ".join(str(d) for d in job.depends_on)),
        ("waiting", job.waiting_reason or ""),
        ("worker", job.worker_id or ""),
        ("created", when(job.created_at)),
        ("run at", when(job.run_at) if aware(job.run_at) > aware(job.created_at) else ""),
        ("started", when(job.started_at) if job.started_at else ""),
        ("finished", _finished(job)),
        ("progress", progress_text(job.progress)),
        ("cancel asked", "yes" if job.cancel_requested and job.status == "running" else ""),
        ("payload", compact(job.payload)),
        ("result", "" if job.result is None else compact(job.result)),
        ("error", job.error or ""),
    ]
    return [(label, text) for label, text in fields if text]


def _finished(job: JobRead) -> str:
    if job.finished_at is None:
        return ""
    took = ""
    if job.started_at is not None:
        took = f", ran {duration((job.finished_at - job.started_at).total_seconds())}"
    return when(job.finished_at) + took


def labelled(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in pairs)
    lines = []
    for label, text in pairs:
        first, *rest = text.splitlines() or [""]
        lines.append(f"{label.ljust(width)}  {first}")
        lines += [" " * (width + 2) + more for more in rest]
    return lines


def log_line(line: LogLine) -> str:
    return f"  {line.ts.astimezone():%H:%M:%S.%f}"[:-3] + f" {line.level.upper():8} {line.message}"


def attempt_header(attempt: int, execution: ExecutionRead | None) -> str:
    if execution is None:
        return f"attempt {attempt}"
    parts = [f"attempt {attempt}", execution.status]
    if execution.worker_id:
        parts.append(f"on {execution.worker_id}")
    if execution.started_at:
        parts.append(f"started {short_time(execution.started_at)}")
    if execution.duration_seconds is not None:
        parts.append(f"ran {duration(execution.duration_seconds)}")
    return "  ".join(parts)


def attempt_error(execution: ExecutionRead) -> list[str]:
    """The error of an attempt and, below it, its traceback (the API keeps them as one
    text: the error's first line, then the traceback)."""
    if not execution.error:
        return []
    first, *rest = execution.error.splitlines()
    lines = [f"  error: {first}"]
    if rest:
        lines.append("  traceback:")
        lines += [f"    {r}" for r in rest]
    return lines


def attempts(executions: list[ExecutionRead], lines: list[LogLine]) -> list[str]:
    """Each attempt: its outcome, its log lines, its error and traceback."""
    by_attempt = {e.attempt: e for e in executions}
    numbers = sorted(set(by_attempt) | {ln.attempt for ln in lines})
    out: list[str] = []
    for number in numbers:
        execution = by_attempt.get(number)
        out.append(attempt_header(number, execution))
        out += [log_line(ln) for ln in lines if ln.attempt == number]
        if execution is not None:
            out += attempt_error(execution)
    return out
