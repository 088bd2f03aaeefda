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
