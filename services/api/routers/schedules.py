"""``/schedules``: periodic jobs (cron). Creating and changing them needs admin."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from services.api.deps import AdminDep, SessionDep, ViewerDep, error_responses
from shared.models import Schedule
from shared.schedules import create_schedule, delete_schedule, get_schedule, update_schedule
from shared.schemas import ScheduleCreate, ScheduleRead, ScheduleUpdate

router = APIRouter(prefix="/schedules", tags=["schedules"])


def _read(row: Schedule) -> ScheduleRead:
    return ScheduleRead.model_validate(row, from_attributes=True)


@router.post("", name="schedule.create", status_code=201, response_model=ScheduleRead,
             responses=error_responses(401, 403, 409, 413, 422, 503))  # fmt: skip
async def create(
    body: ScheduleCreate, request: Request, session: SessionDep, actor: AdminDep
) -> ScheduleRead:
    """``cron``: 5 fields, or 6 with seconds last; ``timezone``: IANA name; ``job``: a
    POST /jobs body (no depends_on, run_at or idempotency_key)."""
    state = request.app.state
    row = await create_schedule(
        session, body, catalog=state.catalog, actor=actor, limits=state.limits
    )
    await session.commit()
    return _read(row)


@router.get(
    "",
    name="schedules.list",
    response_model=list[ScheduleRead],
    responses=error_responses(401, 403, 503),
)
async def list_schedules(session: SessionDep, actor: ViewerDep) -> list[ScheduleRead]:
    return [_read(r) for r in await session.scalars(select(Schedule).order_by(Schedule.name))]


@router.get("/{schedule_id}", name="schedules.get", response_model=ScheduleRead,
            responses=error_responses(401, 403, 404, 422, 503))  # fmt: skip
async def get_one(schedule_id: UUID, session: SessionDep, actor: ViewerDep) -> ScheduleRead:
    return _read(await get_schedule(session, schedule_id))


@router.patch("/{schedule_id}", name="schedule.update", response_model=ScheduleRead,
              responses=error_responses(401, 403, 404, 413, 422, 503))  # fmt: skip
async def update(
    schedule_id: UUID, body: ScheduleUpdate, request: Request, session: SessionDep, actor: AdminDep
) -> ScheduleRead:
    """Pause / resume (``{"paused": true}``) and/or change cron, timezone or job."""
    state = request.app.state
    row = await update_schedule(
        session, schedule_id, body, catalog=state.catalog, actor=actor, limits=state.limits
    )
    await session.commit()
    return _read(row)


@router.delete("/{schedule_id}", name="schedule.delete", status_code=204, response_class=Response,
               responses=error_responses(401, 403, 404, 422, 503))  # fmt: skip
async def delete(schedule_id: UUID, session: SessionDep, actor: AdminDep) -> Response:
    await delete_schedule(session, schedule_id, actor=actor)
    await session.commit()
    return Response(status_code=204)
