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

# A batch of attempts that ended well, fenced in the WHERE (still running that attempt on
# that worker): one statement, no read first. ``started_at`` is the worker's start
# report when it came in the same batch (a short job's start and end travel together).
COMPLETE_ATTEMPTS = """
UPDATE jobs j
SET status = 'completed', result = u.result::jsonb, error = NULL, finished_at = $6,
    lease_expires_at = NULL, updated_at = now(), started_at = COALESCE(j.started_at, u.started)
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[])
     AS u(id, attempt, worker_id, result, started)
WHERE j.id = u.id AND j.status = 'running' AND j.attempts = u.attempt
  AND j.worker_id = u.worker_id
RETURNING j.id, j.type, j.attempts, j.worker_id, j.started_at
"""

# Starts of attempts still running (their end not in the same batch), fenced likewise.
START_ATTEMPTS = """
UPDATE jobs j SET started_at = u.ts, updated_at = now()
FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[]) AS u(id, attempt, worker_id, ts)
WHERE j.id = u.id AND j.status = 'running' AND j.attempts = u.attempt
  AND j.worker_id = u.worker_id AND j.started_at IS NULL
"""

# Completed parents: their children's unmet counts go down; those reaching zero become
# ready (or pending while their run_at is ahead). Run as its own statement after the
# completions, in the same transaction: its snapshot then sees a child whose submit
# (which reads its parents FOR SHARE) the completion had to wait for.
UNBLOCK_CHILDREN = """
WITH c AS (
    SELECT job_id, count(*) AS n FROM job_dependencies
    WHERE depends_on_id = ANY($1::uuid[]) GROUP BY job_id
)
UPDATE jobs j
SET unmet_dependencies = j.unmet_dependencies - c.n,
    status = CASE WHEN j.unmet_dependencies - c.n > 0 THEN j.status
                  WHEN j.run_at > now() THEN 'pending' ELSE 'ready' END,
    ready_at = CASE WHEN j.unmet_dependencies - c.n = 0 AND j.run_at <= now()
                    THEN now() ELSE j.ready_at END,
    updated_at = now()
FROM c WHERE j.id = c.job_id AND j.status = 'blocked'
RETURNING j.id, j.type, j.status, j.attempts, j.worker_id
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
