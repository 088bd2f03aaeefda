"""``GET /audit`` (admin): the append-only audit log, newest first."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from services.api.deps import AdminDep, SessionDep, error_responses
from shared.audit_pages import audit_page
from shared.jsonvalues import BIGINT_MAX
from shared.schemas import AuditPage, AuditRead

router = APIRouter(tags=["audit"])


@router.get(
    "/audit",
    name="audit.list",
    response_model=AuditPage,
    responses=error_responses(401, 403, 422, 503),
)
async def audit_log(
    session: SessionDep,
    actor: AdminDep,
    actor_id: Annotated[
        str | None, Query(alias="actor", max_length=200, pattern=r"^[^\x00]+$")
    ] = None,
    action: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$")] = None,
    job_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        int | None,
        # audit_log.id is a bigint: a larger cursor could only fail in the database.
        Query(ge=1, le=BIGINT_MAX, description="next_cursor of the previous page"),
    ] = None,
) -> dict[str, Any]:
    """Filter by ``actor`` (an API key id, ``dev`` or a worker id), ``action`` (e.g.
    ``job.submit``, ``job.cancel``, ``execution.end``) and ``job_id``; keyset pages."""
    rows = await audit_page(
        session, actor=actor_id, action=action, job_id=job_id, before=cursor, limit=limit + 1
    )
    page = rows[:limit]
    return {
        "items": [AuditRead.model_validate(r, from_attributes=True) for r in page],
        "next_cursor": str(page[-1].id) if len(rows) > limit else None,
    }
