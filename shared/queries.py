"""Hot SQL kept together and named, so the plans in docs/database.md are of the real text."""

from __future__ import annotations

# The head of each priority level of the claim index, oldest first. The scheduler
# merges the four heads, applies aging (one level per SWITCHYARD_AGING_SECONDS waited)
# and places what fits. Four short index range scans, whatever the table size.
CLAIM_READY_HEADS = """
SELECT * FROM (
    (SELECT id, type, priority, cpu_units, memory_mb, run_at, ready_at, attempts
     FROM jobs WHERE status = 'ready' AND priority = 0 ORDER BY run_at, id LIMIT $1)
    UNION ALL
    (SELECT id, type, priority, cpu_units, memory_mb, run_at, ready_at, attempts
     FROM jobs WHERE status = 'ready' AND priority = 1 ORDER BY run_at, id LIMIT $1)
    UNION ALL
    (SELECT id, type, priority, cpu_units, memory_mb, run_at, ready_at, attempts
     FROM jobs WHERE status = 'ready' AND priority = 2 ORDER BY run_at, id LIMIT $1)
    UNION ALL
    (SELECT id, type, priority, cpu_units, memory_mb, run_at, ready_at, attempts
     FROM jobs WHERE status = 'ready' AND priority = 3 ORDER BY run_at, id LIMIT $1)
) heads
"""

# Delayed and backoff jobs whose time has come.
DUE_JOBS = """
SELECT id FROM jobs
WHERE status IN ('pending', 'retrying') AND run_at <= now()
ORDER BY run_at LIMIT $1
"""

# Keyset page of the job list, newest first (optionally filtered by status or type).
LIST_PAGE = """
SELECT * FROM jobs
WHERE ($1::text IS NULL OR status = $1) AND (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC LIMIT $4
"""

# A batch of attempt starts and successful ends, one row per attempt (``$6``: it ended),
# fenced in the WHERE (still running that attempt on that worker), so nothing is read
# first. One statement over ids in order, so rows are locked in id order as the other
# writers lock them. An end's ``started_at`` is its start report when that came in the
# same batch (a short job's start and end travel together); a start alone only fills
# ``started_at`` once.
APPLY_SUCCESSES = """
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
    WHERE j.id = u.id AND j.status = 'running' AND j.attempts = u.attempt
      AND j.worker_id = u.worker_id AND (u.done OR j.started_at IS NULL)
    RETURNING j.id, j.type, j.attempts, j.worker_id, j.started_at, u.done
)
SELECT id, type, attempts, worker_id, started_at, done, NULL::text AS status FROM done
UNION ALL
SELECT id, type, attempts, worker_id, NULL::timestamptz, NULL::bool, status
FROM switchyard_unblock_children(ARRAY(SELECT id FROM done WHERE done))
"""
"""Starts and completions of a batch (fenced: still running, that attempt, that worker)
and the children the completions unblock, in one statement. Rows with ``done`` NULL are
children (``status`` their new status; still ``blocked`` when other parents remain).
The children are updated by ``switchyard_unblock_children`` (migration 0004), whose
query takes its own snapshot after the completions' UPDATE has its row locks: a child
whose submit that UPDATE waited for is seen (a CTE here would miss it)."""

# Completed parents (the session path: failures and the rest): see migration 0004.
UNBLOCK_CHILDREN = "SELECT * FROM switchyard_unblock_children($1::uuid[])"

# Why ready jobs wait: only a changed reason is written; answers every job that is still
# ready (written now or already saying that), so the scheduler remembers only those.
SET_WAITING_REASONS = """
WITH r AS (
    SELECT j.id, r.reason, j.waiting_reason IS DISTINCT FROM r.reason AS changed
    FROM unnest($1::uuid[], $2::text[]) AS r(id, reason) JOIN jobs j ON j.id = r.id
    WHERE j.status = 'ready'
), written AS (
    UPDATE jobs j SET waiting_reason = r.reason FROM r
    WHERE j.id = r.id AND r.changed AND j.status = 'ready'
)
SELECT id FROM r
"""

# Retention: up to $2 finished jobs that finished before $1, oldest first (the partial
# finished_at index), deleted with what cascades from them (log lines, executions,
# dependency edges). Rows another transaction holds are left for the next sweep.
PRUNE_FINISHED = """
DELETE FROM jobs WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE finished_at < $1 AND status IN ('completed', 'failed', 'cancelled')
    ORDER BY finished_at LIMIT $2
    FOR UPDATE SKIP LOCKED
))
"""
