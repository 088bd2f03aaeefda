"""Audit rows for refused requests (accepted ones are written with the change itself).

What one client can make us store is bounded:

- a refusal's message is cut to ``SWITCHYARD_AUDIT_DETAIL_MAX_CHARS`` (with a marker
  saying how much was cut), the action (a path, for unknown routes) to 200 characters;
- refusals of requests without a valid key (no key, a bad or revoked key, an unknown
  route before any key was checked) are written at most
  ``SWITCHYARD_AUDIT_UNAUTHENTICATED_ROWS_PER_MINUTE`` times a minute per client
  address; the others are counted, and the next row written for that address says how
  many were left out (``detail.unwritten_before``);
- requests refused by a rate limit (429) write one row per limited bucket and minute,
  with the number refused since the last such row (``detail.refused``).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from services.api.buckets import TokenBuckets
from shared.jsonvalues import truncate_text
from shared.models import AuditEntry

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ACTION_MAX_CHARS = 200
DEFAULT_DETAIL_MAX_CHARS = 2000
DEFAULT_UNAUTHENTICATED_ROWS_PER_MINUTE = 10


class AuditAllowance:
    """Rows allowed per name (a client address, a rate-limit bucket) and minute; what is
    not written is counted and reported with the next row that is."""

    def __init__(self, *, per_minute: float) -> None:
        self._buckets = TokenBuckets(per_second=per_minute / 60, burst=max(1, int(per_minute)))
        self._unwritten: dict[str, int] = {}

    def admit(self, name: str) -> int | None:
        """None: do not write (counted). Else write, and say that this many rows were
        left out before it."""
        if self._buckets.take(name) > 0:
            if name in self._unwritten or len(self._unwritten) < 100_000:
                self._unwritten[name] = self._unwritten.get(name, 0) + 1
            return None
        return self._unwritten.pop(name, 0)


def _allowances(state: Any) -> tuple[AuditAllowance, AuditAllowance]:
    """(unauthenticated refusals per address, rate-limit rows per bucket), made on first use."""
    found = getattr(state, "audit_allowances", None)
    if found is None:
        settings = getattr(state, "settings", None)
        per_minute = getattr(
            settings,
            "audit_unauthenticated_rows_per_minute",
            DEFAULT_UNAUTHENTICATED_ROWS_PER_MINUTE,
        )
        found = (AuditAllowance(per_minute=per_minute), AuditAllowance(per_minute=1))
        state.audit_allowances = found
    return found  # type: ignore[no-any-return]


def action_of(request: Request) -> str:
    """The route's name (e.g. ``job.submit``), else the method and path."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    if name and "." in name:
        return str(name)
    return truncate_text(f"{request.method} {request.url.path}", ACTION_MAX_CHARS)


async def audit_refusal(request: Request, status_code: int, detail: Any) -> None:
    """Append one row for a refused mutating request, in its own transaction."""
    if getattr(request, "method", "WEBSOCKET") not in MUTATING:
        return
    state = request.app.state
    sessionmaker = getattr(state, "sessionmaker", None)
    if sessionmaker is None:
        return
    actor = getattr(request.state, "actor", None)
    client = request.client.host if request.client else None
    stored: dict[str, Any] = {}
    if actor is None:
        unwritten = _allowances(state)[0].admit(client or "unknown")
        if unwritten is None:
            return
        if unwritten:
            stored["unwritten_before"] = unwritten
    limit = getattr(
        getattr(state, "settings", None), "audit_detail_max_chars", DEFAULT_DETAIL_MAX_CHARS
    )
    stored["detail"] = truncate_text(detail if isinstance(detail, str) else str(detail), limit)
    job_id = request.path_params.get("job_id") if request.scope.get("route") else None
    outcome = {
        401: "unauthenticated",
        403: "denied",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "invalid",
        429: "throttled",
    }.get(status_code, "error")
    await _write(
        sessionmaker,
        AuditEntry(
            actor=actor.key_id if actor else None,
            role=actor.role if actor else None,
            action=action_of(request),
            job_id=UUID(job_id) if isinstance(job_id, str) and _is_uuid(job_id) else None,
            outcome=outcome,
            status_code=status_code,
            client=client,
            detail=stored,
        ),
    )


async def audit_throttled(
    state: Any, *, bucket: str, name: str, actor: str | None, client: str | None, action: str
) -> None:
    """At most one row per limited bucket and minute for requests refused with 429."""
    sessionmaker = getattr(state, "sessionmaker", None)
    if sessionmaker is None:
        return
    unwritten = _allowances(state)[1].admit(f"{bucket}:{name}")
    if unwritten is None:
        return
    await _write(
        sessionmaker,
        AuditEntry(
            actor=actor,
            action="ratelimit.refuse",
            outcome="throttled",
            status_code=429,
            client=client,
            detail={
                "bucket": bucket,
                "refused": unwritten + 1,
                "last": truncate_text(action, ACTION_MAX_CHARS),
            },
        ),
    )


async def _write(sessionmaker: Any, entry: AuditEntry) -> None:
    try:
        async with sessionmaker() as session:
            session.add(entry)
            await session.commit()
    except (SQLAlchemyError, OSError) as exc:
        # The refusal itself stands; the client still gets its 4xx. Say so loudly.
        log.error("could not write the audit row for a refused %s: %s", entry.action, exc)


def _is_uuid(value: str | None) -> bool:
    if value is None:
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True
