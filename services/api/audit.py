"""Audit rows for refused requests (accepted ones are written with the change itself)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from shared.models import AuditEntry

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def action_of(request: Request) -> str:
    """The route's name (e.g. ``job.submit``), else the method and path."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    if name and "." in name:
        return str(name)
    return f"{request.method} {request.url.path}"


async def audit_refusal(request: Request, status_code: int, detail: Any) -> None:
    """Append one row for a refused mutating request, in its own transaction."""
    if request.method not in MUTATING:
        return
    sessionmaker = getattr(request.app.state, "sessionmaker", None)
    if sessionmaker is None:
        return
    actor = getattr(request.state, "actor", None)
    job_id = request.path_params.get("job_id") if request.scope.get("route") else None
    outcome = {
        401: "unauthenticated",
        403: "denied",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "invalid",
    }.get(status_code, "error")
    entry = AuditEntry(
        actor=actor.key_id if actor else None,
        role=actor.role if actor else None,
        action=action_of(request),
        job_id=job_id if isinstance(job_id, str | None) and _is_uuid(job_id) else None,
        outcome=outcome,
        status_code=status_code,
        client=request.client.host if request.client else None,
        detail={"detail": detail if isinstance(detail, str) else str(detail)[:2000]},
    )
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
    from uuid import UUID

    try:
        UUID(value)
    except ValueError:
        return False
    return True
