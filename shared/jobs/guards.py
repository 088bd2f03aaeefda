"""The status guards of the job wing's SQL (``shared.jobs.sql``), rendered from
``shared.states``: literal lists of statuses, the statuses a write may leave, and the
guard of a statement given the ids of its rows."""

from __future__ import annotations

from collections.abc import Iterable

from shared.states import TRANSITIONS, JobStatus, sources_for


def status_list(statuses: Iterable[JobStatus]) -> str:
    """``('a', 'b')``: a literal SQL list of statuses, in a stable order."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


def unindexed_in(column: str, statuses: str) -> str:
    """``column IN statuses`` in a form no index matches, for a statement that is given
    the ids of its rows: it reaches them by the primary key, whatever the statistics
    say. Written plainly, the guard lets a plan made on statistics that counted few
    jobs in those statuses (a yard idle at its last ANALYZE, then a burst) take the
    rows from a status index instead and check every entry of it against the ids: a
    dispatch of 20 jobs read the whole backlog (3,960 ready jobs: 6.3 ms against 1.8),
    a completion every entry its worker's past jobs had left in the running index since
    the last vacuum (433 buffers against 60). ``status`` is NOT NULL: the same rows."""
    return f"({column} IN {statuses}) IS TRUE"


def allowed_from(*targets: JobStatus, among: Iterable[JobStatus] | None = None) -> str:
    """The SQL list of statuses a job may be in for a write that moves it to any of
    ``targets``. ``among`` narrows it to the sources the statement means; each of those
    must be allowed to reach every target, or this raises at import time."""
    if among is None:
        sources = set.intersection(*(set(map(JobStatus, sources_for(t))) for t in targets))
    else:
        sources = set(among)
    for old in sources:
        for new in targets:
            if new not in TRANSITIONS[old]:
                raise AssertionError(f"{old} -> {new} is not a transition of shared.states")
    if not sources:
        raise AssertionError(f"no status may move to all of {targets}")
    return status_list(sources)
