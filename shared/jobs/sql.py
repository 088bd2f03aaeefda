"""Every SQL statement of the job wing, named and kept together, in asyncpg's ``$n``
parameter style (the plans in docs/database.md are of this text): every write of
``jobs``, the hot reads (the claim, the list page), and the dashboard's counts. Outside
it, only the ORM reads of whole rows (``shared.jobs.reads``) and the logger's inserts
into its own tables (which check that the job exists) name ``jobs``.

Rules every statement here keeps:
- A statement that writes ``status`` guards it with the statuses it may leave, rendered
  from ``shared.states`` by ``guards.allowed_from`` (so an illegal transition cannot be
  written, and a concurrent change is never overwritten); a statement about an attempt
  is also fenced by the attempt number.
- The guard is literal SQL, not a parameter: the partial indexes (``status = 'ready'``,
  ``status IN ('pending', 'retrying')``) are used only when the planner sees the list.
- A statement given the ids of its rows writes its guard with ``guards.unindexed_in``, so
  it reaches them by the primary key whatever the statistics say.
- JSON travels as ``text`` and is cast in SQL (``$n::text::jsonb``): the pool and a
  session's connection decode jsonb alike but encode it differently.

Only ``shared.jobs.transitions`` runs the statements that change a status
(tests/unit/test_architecture.py checks it).
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql

from shared.jobs.guards import allowed_from, status_list, unindexed_in
from shared.models import AuditEntry, Job
from shared.states import CANCELLABLE_AT_ONCE, TERMINAL, TRANSITIONS, JobStatus

S = JobStatus


FINISHED = status_list(TERMINAL)

# ------------------------------------------------------------------- placement (reads)


def fits_one_of(job: str, first: int) -> str:
    """SQL that is true when the job ``job`` (the table or its alias) fits one of the
    rows ``(type, cpu_units, memory_mb)`` given as three arrays, ``$first`` on: a worker
    that runs its type with that much CPU and memory (its capacity, or its room now)."""
    rows = f"unnest(${first}::text[], ${first + 1}::float8[], ${first + 2}::int[])"
    return (
        f"EXISTS (SELECT 1 FROM {rows} AS r(type, cpu_units, memory_mb) "
        f"WHERE r.type = {job}.type AND {job}.cpu_units <= r.cpu_units + 1e-9 "
        f"AND {job}.memory_mb <= r.memory_mb)"
    )


# The head of each priority level of the ready queue (``ready_jobs``: the claimable jobs,
# kept by triggers on ``jobs``), oldest first. The scheduler merges the four heads,
# applies aging and places what fits. Four short ranges of its key, read index-only,
# whatever the size of the history and however many jobs are parked (they are not in
# the queue: ``PARK_UNFITTABLE``).
_HEAD = """(SELECT id, type, priority, cpu_units, memory_mb, run_at, ready_at, attempts
     FROM ready_jobs WHERE priority = {p}{fits}
     ORDER BY run_at, id LIMIT $1)"""


def _heads(fits: str = "") -> list[str]:
    return [_HEAD.format(p=p, fits=fits) for p in range(4)]


CLAIM_READY_HEADS = "SELECT * FROM (\n    " + "\n    UNION ALL\n    ".join(_heads()) + "\n) heads"
# The same heads, and beside them the heads of what fits the fleet's room now (``$2..$4``:
# one row per worker with a free slot and type it runs, with its free CPU and memory):
# jobs that fit a worker but not its room now do not hide smaller ones behind them. Each
# of those four scans walks past the jobs that do not fit the room (docs/performance-history.md).
# The largest room first (computed once per statement, tested on the index tuple alone):
# the jobs too big for every worker's room are passed over without the per-row EXISTS.
_WITHIN_THE_LARGEST_ROOM = (
    " AND ready_jobs.cpu_units <= (SELECT max(c) FROM unnest($3::float8[]) AS c) + 1e-9"
    " AND ready_jobs.memory_mb <= (SELECT max(m) FROM unnest($4::int[]) AS m) AND "
)
CLAIM_READY_HEADS_AND_FITTING = (
    "SELECT * FROM (\n    "
    + "\n    UNION ALL\n    ".join(
        _heads() + _heads(_WITHIN_THE_LARGEST_ROOM + fits_one_of("ready_jobs", 2))
    )
    + "\n) heads"
)

# Parking: the first ``$4`` unparked ready jobs of each priority, in claim order, that
# fit none of the live workers' capacities (``$1..$3``, as for ``fits_one_of``) leave
# the ready queue, with their waiting reason: ``format(template, cpu units, MB, type)``,
# the template of their type (``$5``, ``$6``) or, for a type no live worker runs, ``$7``.
# Run in chunks by the scheduler until a chunk parks less than a whole window, so each
# such job is parked once, whatever their number. A row another transaction holds (a
# cancel) is skipped: it stays claimable.
_PARK_WINDOWS = "\n    UNION ALL\n    ".join(
    f"(SELECT id, type, cpu_units, memory_mb FROM ready_jobs"
    f" WHERE priority = {p} ORDER BY run_at, id LIMIT $4)"
    for p in range(4)
)
# The heads are computed once and drive the statement, each unfit one looked up by its
# key, whatever the statistics say. With ``jobs`` statistics older than a batch of
# 10,000 unfittable jobs, the planner once took the whole ready set as one row and ran
# the heads again for each of its rows; with the claim index's taken while it held
# nothing, a generic plan looked each head up in the claim index (by ``id``, not its
# leading column: the whole index a head). Both outlasted every timeout and held the
# scheduler's cycle for minutes. So the look-up is a LATERAL subquery that locks its
# row (a subquery with a locking clause is never flattened into a join), and its
# conditions are written so that no index matches them but the primary key
# (``guards.unindexed_in``; ``parked IS NOT TRUE``, ``parked`` being NOT NULL, is not the
# partial indexes' predicate either). (The update joins its rows by key;
# a plan that hashes the table instead is one the planner takes for a small table.)
PARK_UNFITTABLE = f"""
WITH heads AS MATERIALIZED (
    {_PARK_WINDOWS}
), unfit AS (
    SELECT j.id
    FROM (SELECT h.id FROM heads h WHERE NOT {fits_one_of("h", 1)} ORDER BY h.id) h,
    LATERAL (SELECT id FROM jobs
             WHERE id = h.id AND {unindexed_in("status", "('ready')")} AND parked IS NOT TRUE
             FOR NO KEY UPDATE SKIP LOCKED) j
)
UPDATE jobs j SET parked = true, waiting_reason = format(
    COALESCE((SELECT t.template FROM unnest($5::text[], $6::text[]) AS t(type, template)
              WHERE t.type = j.type), $7),
    j.cpu_units, j.memory_mb, j.type)
FROM unfit WHERE j.id = unfit.id
RETURNING j.id
"""

# Un-parking: up to ``$4`` parked jobs after id ``$5``, in id order, that fit one of the
# live workers' capacities (``$1..$3``) are claimable again (their reason is cleared:
# the next look writes the new one); answers how many, how many it read, the last id. Reads only the
# parked index, from ``$5`` on. Waits for rows held elsewhere rather than skip them: a
# job left parked though it fits would wait for the next change of the fleet.
UNPARK_FITTING = f"""
WITH fits AS (
    SELECT id FROM jobs
    WHERE status = 'ready' AND parked AND id > $5 AND {fits_one_of("jobs", 1)}
    ORDER BY id LIMIT $4 FOR NO KEY UPDATE
), unparked AS (
    UPDATE jobs j SET parked = false, waiting_reason = NULL FROM fits
    WHERE j.id = fits.id AND {unindexed_in("j.status", "('ready')")} AND j.parked
    RETURNING 1
)
SELECT (SELECT count(*) FROM unparked) AS n, (SELECT count(*) FROM fits) AS seen,
       (SELECT id FROM fits ORDER BY id DESC LIMIT 1) AS last
"""

# Delayed and backoff jobs whose time has come.
DUE_JOBS = """
SELECT id, status FROM jobs
WHERE status IN ('pending', 'retrying') AND run_at <= now()
ORDER BY run_at LIMIT $1
"""

# Running jobs, to rebuild the allocation picture when a scheduler takes over.
RUNNING_JOBS = """
SELECT id, worker_id, attempts, cpu_units, memory_mb FROM jobs WHERE status = 'running'
"""

# Running attempts whose cancel was requested (the scheduler re-sends job.cancel).
RUNNING_CANCEL_REQUESTS = """
SELECT id, attempts FROM jobs WHERE status = 'running' AND cancel_requested
"""

CURRENT_ATTEMPTS = "SELECT id, attempts FROM jobs WHERE id = ANY($1::uuid[])"

# ------------------------------------------------------------------- transitions

# Submission: one INSERT ... SELECT FROM unnest(one array per column). Built per set of
# columns that carry one value for the whole batch (sent once, not as N copies).
# The columns a new job is inserted with (the others take their server defaults,
# ``INSERT_DEFAULTS``), each with the type its values travel as, read off the model.
_NEW_JOB_COLUMNS = (
    "id", "type", "name", "status", "priority", "payload", "cpu_units", "memory_mb",
    "timeout_seconds", "max_attempts", "retry_initial_delay", "retry_backoff",
    "retry_max_delay", "run_at", "depends_on", "unmet_dependencies", "error",
    "idempotency_key", "idempotency_fingerprint", "created_by", "created_at", "updated_at",
    "ready_at", "finished_at",
)  # fmt: skip
_WIRE_TYPES = {"TIMESTAMP WITH TIME ZONE": "timestamptz", "FLOAT": "float8", "INTEGER": "int"}


def _wire_type(column: str) -> tuple[str, str]:
    """(the parameter type, the cast to the column type): JSON and arrays travel as text
    (a column of arrays cannot travel as one array of arrays)."""
    declared = Job.__table__.columns[column].type.compile(dialect=postgresql.dialect())
    if declared == "JSONB" or declared.endswith("[]"):
        return "text", f"::{declared.lower()}"
    return _WIRE_TYPES.get(declared, declared.lower()), ""


INSERT_COLUMNS: dict[str, str] = {c: _wire_type(c)[0] for c in _NEW_JOB_COLUMNS}
_INSERT_CASTS = {c: _wire_type(c)[1] for c in _NEW_JOB_COLUMNS if _wire_type(c)[1]}
# What a new row holds in the columns the insert does not give (their server defaults;
# tests/unit checks this covers every column of ``jobs``).
INSERT_DEFAULTS: dict[str, object] = {
    "attempts": 0, "runs": 0, "worker_id": None, "lease_expires_at": None, "result": None,
    "progress": None, "cancel_requested": False, "waiting_reason": None,
    "dispatched_at": None, "started_at": None, "parked": False,
}  # fmt: skip
NEW_STATUSES = status_list(TRANSITIONS[None])


def insert_jobs(same: frozenset[str], *, keyed: bool = True, returning: str = "id") -> str:
    """Insert a batch: ``$1..$n`` are the columns of ``INSERT_COLUMNS`` in order, each an
    array, except those in ``same`` (one value for every row). ``RETURNING id`` (or
    ``returning``): a row whose idempotency key another request took first is not
    inserted. Not ``keyed`` (no row has a key, so none can conflict): a plain insert,
    which spares each row PostgreSQL's speculative insertion (a lock and a WAL record
    more per row)."""
    values, arrays, names = [], [], []
    for i, (column, wire) in enumerate(INSERT_COLUMNS.items(), start=1):
        cast = _INSERT_CASTS.get(column, "")
        if column in same:
            values.append(f"${i}::{wire}{cast}")
        else:
            values.append(f"u.{column}{cast}")
            arrays.append(f"${i}::{wire}[]")
            names.append(column)
    status = values[list(INSERT_COLUMNS).index("status")]
    return (
        f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) SELECT {', '.join(values)} "
        f"FROM unnest({', '.join(arrays)}) AS u({', '.join(names)}) "
        f"WHERE {status} IN {NEW_STATUSES} "
        + ("ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
           if keyed else "")
        + f"RETURNING {returning}"
    )  # fmt: skip


AUDIT_COLUMNS = ("actor", "role", "action", "client", "job_id", "outcome", "detail")


def _audit_parameters() -> str:
    """An audit row's values as the parameters after a job's (``detail`` as JSON text)."""
    n = len(INSERT_COLUMNS)
    return ", ".join(
        f"${n + i}::text::jsonb" if column == "detail" else f"${n + i}"
        for i, column in enumerate(AUDIT_COLUMNS, start=1)
    )


def insert_one_with_audit() -> str:
    """One job (``$1..$24``, the columns of ``INSERT_COLUMNS``) and its audit row (the
    ``AUDIT_COLUMNS`` after them, ``detail`` as JSON text): one statement, atomic on its
    own."""
    job_values = [
        f"${i}::{wire}{_INSERT_CASTS.get(c, '')}"
        for i, (c, wire) in enumerate(INSERT_COLUMNS.items(), start=1)
    ]
    status = job_values[list(INSERT_COLUMNS).index("status")]
    return (
        f"WITH j AS (INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) "
        f"SELECT {', '.join(job_values)} WHERE {status} IN {NEW_STATUSES} RETURNING *), "
        f"a AS (INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) "
        f"SELECT {_audit_parameters()} FROM j) "
        "SELECT * FROM j"
    )


INSERT_ONE_WITH_AUDIT = insert_one_with_audit()


def _audit_wire_type(column: str) -> str:
    declared = AuditEntry.__table__.columns[column].type.compile(dialect=postgresql.dialect())
    return "text" if declared == "JSONB" else declared.lower()


def insert_several_with_audit() -> str:
    """Several jobs (``$1..$24``: each column of ``INSERT_COLUMNS`` as an array) and one
    audit row each (then each of ``AUDIT_COLUMNS`` as an array, ``detail`` as JSON
    text): the single submits of several requests as one statement, atomic on its own.
    An audit row goes in only with its job."""
    n = len(INSERT_COLUMNS)
    arrays = ", ".join(
        f"${n + i}::{_audit_wire_type(c)}[]" for i, c in enumerate(AUDIT_COLUMNS, start=1)
    )
    values = ", ".join(f"a.{c}::jsonb" if c == "detail" else f"a.{c}" for c in AUDIT_COLUMNS)
    return (
        f"WITH j AS ({insert_jobs(frozenset(), keyed=False, returning='*')}), "
        f"a AS (INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) SELECT {values} "
        f"FROM unnest({arrays}) AS a({', '.join(AUDIT_COLUMNS)}) JOIN j ON j.id = a.job_id) "
        "SELECT * FROM j"
    )


INSERT_SEVERAL_WITH_AUDIT = insert_several_with_audit()


def insert_jobs_with_audit(same: frozenset[str]) -> str:
    """``insert_jobs`` for jobs none of which has an idempotency key (``$1..$24``), and
    the request's one audit row (``AUDIT_COLUMNS`` after them, ``detail`` as JSON
    text): a batch and its audit row as one statement. How many jobs went in."""
    return (
        f"WITH j AS ({insert_jobs(same, keyed=False)}), "
        f"a AS (INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) "
        f"SELECT {_audit_parameters()}) "
        "SELECT count(*) FROM j"
    )


# ready -> running on the chosen worker, with a new attempt number (the fence).
DISPATCH = f"""
UPDATE jobs j
SET status = 'running', attempts = j.attempts + 1, runs = j.runs + 1,
    worker_id = p.worker_id, dispatched_at = now(),
    lease_expires_at = now() + make_interval(secs => $3),
    waiting_reason = NULL, error = NULL, started_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::text[]) AS p(id, worker_id)
WHERE j.id = p.id AND {unindexed_in("j.status", allowed_from(S.RUNNING))}
RETURNING j.id, j.type, j.payload, j.cpu_units, j.memory_mb, j.timeout_seconds,
          j.attempts, j.worker_id,
          EXTRACT(EPOCH FROM now() - COALESCE(j.ready_at, j.run_at))::float8 AS waited
"""

# A dispatch the broker did not take: the attempt goes back (it never ran), or the job
# ends if it was cancelled meanwhile.
UNDO_DISPATCH = f"""
UPDATE jobs j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'ready' END,
    finished_at = CASE WHEN j.cancel_requested THEN now() END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled by request' END,
    runs = j.runs - 1, worker_id = NULL,
    lease_expires_at = NULL, ready_at = now(), updated_at = now()
FROM unnest($1::uuid[], $2::int[]) AS p(id, attempt)
WHERE j.id = p.id
  AND {unindexed_in("j.status", allowed_from(S.READY, S.CANCELLED, among={S.RUNNING}))}
  AND j.attempts = p.attempt
RETURNING j.id, j.type, j.attempts, j.worker_id, j.status
"""

# The rows a batch of reports decides on, locked. FOR NO KEY UPDATE, not FOR UPDATE: the
# logger's inserts into job_executions, job_logs and audit_log take FOR KEY SHARE on
# these rows (their foreign keys), and FOR UPDATE would queue the two services.
LOCK_FOR_REPORTS = """
SELECT id, type, status, attempts, runs, max_attempts, worker_id, cancel_requested,
       retry_initial_delay, retry_backoff, retry_max_delay, started_at
FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE
"""

# A batch of attempt starts and successful ends, one row per attempt (``$6``: it ended),
# fenced in the WHERE (still running that attempt on that worker), so nothing is read
# first. Rows are locked in id order as the other writers lock them. An end's
# ``started_at`` is its start report when that came in the same batch (or in the end
# report itself: ``JobStatusReport.started_at``); a start alone
# only fills ``started_at`` once. The children the completions unblock are updated in
# the same statement by ``switchyard_unblock_children`` (migrations 0004, 0016), whose query
# takes its own snapshot after this UPDATE has its row locks: a child whose submit this
# UPDATE waited for is seen (a CTE here would miss it). Rows with ``done`` NULL are
# those children (``status`` their new status; still ``blocked`` while parents remain).
APPLY_SUCCESSES = f"""
WITH done AS (
    UPDATE jobs j
    SET status = CASE WHEN u.done THEN 'completed' ELSE j.status END,
        result = CASE WHEN u.done THEN u.result::jsonb ELSE j.result END,
        error = CASE WHEN u.done THEN NULL ELSE j.error END,
        finished_at = CASE WHEN u.done THEN $7 ELSE j.finished_at END,
        lease_expires_at = CASE WHEN u.done THEN NULL ELSE j.lease_expires_at END,
        started_at = COALESCE(j.started_at, u.started), updated_at = now()
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[], $6::bool[])
         AS u(id, attempt, worker_id, result, started, done)
    WHERE j.id = u.id AND {unindexed_in("j.status", allowed_from(S.COMPLETED))}
      AND j.attempts = u.attempt
      AND j.worker_id = u.worker_id AND (u.done OR j.started_at IS NULL)
    RETURNING j.id, j.type, j.attempts, j.worker_id, j.started_at, u.done
)
SELECT id, type, attempts, worker_id, started_at, done, NULL::text AS status FROM done
UNION ALL
SELECT id, type, attempts, worker_id, NULL::timestamptz, NULL::bool, status
FROM switchyard_unblock_children(ARRAY(SELECT id FROM done WHERE done))
"""

_ENDS = (S.FAILED, S.RETRYING, S.CANCELLED, S.READY)
# The other ends of attempts (failed, retrying, cancelled, handed back), decided on the
# locked rows; one row per attempt, fenced by the attempt number. ``$6``: now.
APPLY_ENDS = f"""
UPDATE jobs j
SET status = u.status,
    error = CASE WHEN u.status = 'ready' THEN j.error ELSE u.error END,
    finished_at = CASE WHEN u.status IN {FINISHED} THEN $6 ELSE j.finished_at END,
    lease_expires_at = NULL,
    run_at = COALESCE(u.run_at, j.run_at),
    runs = j.runs - CASE WHEN u.status = 'ready' THEN 1 ELSE 0 END,
    worker_id = CASE WHEN u.status = 'ready' THEN NULL ELSE j.worker_id END,
    ready_at = CASE WHEN u.status = 'ready' THEN $6 ELSE j.ready_at END,
    updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[])
     AS u(id, attempt, status, error, run_at)
WHERE j.id = u.id
  AND {unindexed_in("j.status", allowed_from(*_ENDS, among={S.RUNNING}))}
  AND j.attempts = u.attempt AND u.status IN {status_list(_ENDS)}
RETURNING j.id
"""

WAITING_TO_FAIL = allowed_from(S.FAILED, among={S.BLOCKED, S.PENDING})
NO_UUID = "'00000000-0000-0000-0000-000000000000'::uuid"  # below every id: a range's start
# Up to ``$4`` of the waiting children of the jobs ``$1``, which ended ``$2`` (failed,
# cancelled), each child above its parent's cursor ``$3`` (null: from the first; a slice
# cut short goes on after its last child, rather than read again every child it has
# failed), locked in id order; each error names its parent and how that ended. Only
# jobs still waiting can fail this way: the descendants of an unfinished parent are
# blocked (or pending) by construction.
#
# Each parent's edges are a LATERAL range of their index from the cursor (OFFSET 0: a
# subquery the planner does not flatten into a join), and each child a LATERAL look-up
# by key, locked there, in id order until ``$4`` are locked: so no plan reads more than
# the frontier's edges and the children it fails. Joins let a generic plan (a prepared
# statement's, after five runs) on statistics that had not seen the rows hash all of
# job_dependencies, or every waiting job, at every level (an attacking helper: 21 ms a
# level at 60,000 edges, against 0.11 ms). A child another transaction ends while the
# lock waits is dropped and the next one taken, so every waiting child up to the last
# one failed is failed (what the cursor relies on).
FAIL_DEPENDENTS = f"""
WITH due AS (
    SELECT d.job_id AS id, w.status AS old, d.parent, d.how
    FROM (SELECT DISTINCT ON (c.job_id) c.job_id, f.id AS parent, f.how
          FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS f(id, how, after)
          CROSS JOIN LATERAL (
              SELECT e.job_id FROM job_dependencies e
              WHERE e.depends_on_id = f.id AND e.job_id > COALESCE(f.after, {NO_UUID})
              OFFSET 0
          ) c
          ORDER BY c.job_id, f.id) d
    CROSS JOIN LATERAL (
        SELECT j.status FROM jobs j
        WHERE j.id = d.job_id AND {unindexed_in("j.status", WAITING_TO_FAIL)}
        LIMIT 1 FOR NO KEY UPDATE
    ) w
    ORDER BY d.job_id LIMIT $4
)
UPDATE jobs j
SET status = 'failed', error = 'dependency ' || due.parent::text || ' ' || due.how,
    finished_at = now(), updated_at = now(), unmet_dependencies = 0
FROM due WHERE j.id = due.id
RETURNING j.id, j.type, j.attempts, j.worker_id, j.error, due.old
"""

# Of the jobs ``$1`` (failed or cancelled), those with children above their cursor
# ``$2``, queued for a later slice (``transitions.fail_dependents``). One queued
# meanwhile by another transaction is read again from its first child.
QUEUE_DEPENDENTS_TO_FAIL = f"""
INSERT INTO dependents_to_fail (parent_id, after_child)
SELECT f.id, f.after FROM unnest($1::uuid[], $2::uuid[]) AS f(id, after)
WHERE EXISTS (SELECT 1 FROM job_dependencies e
              WHERE e.depends_on_id = f.id AND e.job_id > COALESCE(f.after, {NO_UUID}))
ON CONFLICT (parent_id) DO UPDATE SET after_child = NULL
"""
# Up to ``$1`` queued jobs, the longest queued first.
QUEUED_DEPENDENTS_TO_FAIL = """
SELECT parent_id, after_child FROM dependents_to_fail ORDER BY queued_at, parent_id
LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# Of the queued jobs ``$1``, how each is now, locked against a change (a retry) until
# the slice commits; one another transaction holds (a retry under way) is skipped and
# stays queued.
LOCK_QUEUED_PARENTS = """
SELECT p.id, p.status FROM unnest($1::uuid[]) AS f(id) JOIN jobs p ON p.id = f.id
FOR SHARE OF p SKIP LOCKED
"""
# Of the jobs ``$1``, those that no longer exist.
MISSING_JOBS = """
SELECT f.id FROM unnest($1::uuid[]) AS f(id)
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = f.id)
"""
UNQUEUE_DEPENDENTS_TO_FAIL = "DELETE FROM dependents_to_fail WHERE parent_id = ANY($1::uuid[])"
ANY_DEPENDENTS_TO_FAIL = "SELECT EXISTS (SELECT 1 FROM dependents_to_fail)"

# Delayed and backoff jobs whose time has come become ready.
PROMOTE_DUE = f"""
WITH due AS ({DUE_JOBS} FOR NO KEY UPDATE SKIP LOCKED)
UPDATE jobs j SET status = 'ready', ready_at = now(), updated_at = now()
FROM due WHERE j.id = due.id
  AND {unindexed_in("j.status", allowed_from(S.READY, among={S.PENDING, S.RETRYING}))}
RETURNING j.id, j.type, due.status AS old_status, j.attempts, j.worker_id
"""

# A user's cancel of a job no worker holds: it ends at once (``$2`` now, ``$3`` error).
CANCEL_WAITING = f"""
UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = $2,
    updated_at = $2, error = $3, waiting_reason = NULL
WHERE id = $1
  AND {unindexed_in("status", allowed_from(S.CANCELLED, among=CANCELLABLE_AT_ONCE))}
RETURNING id, type, attempts, worker_id
"""

# A user's cancel of a running attempt: flagged; the worker ends it and reports.
REQUEST_CANCEL = "UPDATE jobs SET cancel_requested = true, updated_at = $2 WHERE id = $1"

# A failed or cancelled job runs again (``$2`` blocked or ready, ``$3`` its unmet
# parents, ``$4`` now): same id, history kept, attempt numbers go on (the fence stays
# sound), a fresh budget of runs.
REQUEUE = f"""
UPDATE jobs
SET status = $2, unmet_dependencies = $3, runs = 0, error = NULL, result = NULL,
    finished_at = NULL, started_at = NULL, cancel_requested = false, worker_id = NULL,
    waiting_reason = NULL,
    run_at = $4, ready_at = CASE WHEN $2 = 'ready' THEN $4::timestamptz END, updated_at = $4
WHERE id = $1
  AND {unindexed_in("status", allowed_from(S.READY, S.BLOCKED, among={S.FAILED, S.CANCELLED}))}
  AND $2 IN ('ready', 'blocked')
RETURNING id, type, attempts, worker_id
"""

# Stored parents, locked against a status change until the caller commits, so a parent
# finishing now cannot miss a new edge (one lock order everywhere: by id).
LOCK_PARENTS = "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR SHARE"

# ------------------------------------------------------------------- beside the status

# The latest progress of running attempts (fenced by attempt only: the final value lands
# even when the completion that shared its batch was committed just before).
SAVE_PROGRESS = """
UPDATE jobs j SET progress = u.progress::jsonb
FROM unnest($1::uuid[], $2::int[], $3::text[]) AS u(id, attempt, progress)
WHERE j.id = u.id AND j.attempts = u.attempt
"""

# Why ready jobs wait: only a changed reason is written; answers every job that is still
# ready (written now or already saying that), so the scheduler remembers only those.
# Read when a scheduler starts leading and after an un-park: few rows (reservations),
# found by their own partial index (migration 0009), however long the ready queue.
WRITTEN_WAITING_REASONS = """
SELECT id, waiting_reason FROM jobs
WHERE status = 'ready' AND NOT parked AND waiting_reason IS NOT NULL
LIMIT $1
"""

SET_WAITING_REASONS = f"""
WITH r AS (
    SELECT j.id, r.reason, j.waiting_reason IS DISTINCT FROM r.reason AS changed
    FROM unnest($1::uuid[], $2::text[]) AS r(id, reason) JOIN jobs j ON j.id = r.id
    WHERE {unindexed_in("j.status", "('ready')")}
), written AS (
    UPDATE jobs j SET waiting_reason = r.reason FROM r
    WHERE j.id = r.id AND r.changed AND {unindexed_in("j.status", "('ready')")}
)
SELECT id FROM r
"""

# Retention: up to $2 finished jobs that finished before $1, oldest first (the partial
# finished_at index), deleted with what cascades from them (log lines, executions,
# dependency edges). Rows another transaction holds are left for the next sweep.
PRUNE_FINISHED = f"""
DELETE FROM jobs WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE finished_at < $1 AND status IN {FINISHED}
      -- its dependents still to be failed: the edges that find them go with it
      AND NOT EXISTS (SELECT 1 FROM dependents_to_fail q WHERE q.parent_id = jobs.id)
    ORDER BY finished_at LIMIT $2
    FOR UPDATE SKIP LOCKED
))
"""

# ------------------------------------------------------------------- the dashboard's counts

UNFINISHED_BY_STATUS_AND_PRIORITY = f"""
SELECT status, priority, count(*) AS n FROM jobs
WHERE status IN {status_list(set(S) - TERMINAL)} GROUP BY status, priority
"""
# Most of the table once it has a history: a scan of every finished job
# (shared.stats.HistoryReads decides how often).
FINISHED_BY_STATUS_AND_PRIORITY = f"""
SELECT status, priority, count(*) AS n FROM jobs
WHERE status IN {FINISHED} GROUP BY status, priority
"""
# Jobs that finished since $1, per terminal status, and how many in the last minute.
FINISHED_SINCE = f"""
SELECT status, count(*) FILTER (WHERE finished_at > now() - interval '1 minute') AS last_minute,
       count(*) AS in_window
FROM jobs WHERE finished_at > $1 AND status IN {FINISHED} GROUP BY status
"""
# Run time of the jobs completed since $1, per type.
DURATIONS_SINCE = """
SELECT type, count(*) AS n, avg(run_seconds) AS mean,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY run_seconds) AS p95
FROM jobs, LATERAL (SELECT greatest(0, EXTRACT(EPOCH FROM finished_at - started_at))
                    AS run_seconds) r
WHERE finished_at > $1 AND status = 'completed' AND started_at IS NOT NULL
GROUP BY type ORDER BY type
"""
