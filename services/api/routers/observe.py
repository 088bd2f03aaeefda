"""``/workers``, ``/stats``, ``/metrics``: what runs where, how much, how fast."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from services.api.deps import SessionDep, ViewerDep, authorize, current_actor, error_responses
from shared.schemas import StatsRead, WorkerRead
from shared.stats import job_stats, list_workers

router = APIRouter(tags=["observe"])


@router.get(
    "/workers",
    name="workers.list",
    response_model=list[WorkerRead],
    responses=error_responses(401, 403, 503),
)
async def workers(request: Request, session: SessionDep, actor: ViewerDep) -> list[dict[str, Any]]:
    """Live workers and those dead within the last hour, newest heartbeat data."""
    settings = request.app.state.settings
    return await list_workers(session, lease_seconds=settings.worker_lease_seconds)


@router.get(
    "/stats", name="stats", response_model=StatsRead, responses=error_responses(401, 403, 503)
)
async def stats(request: Request, session: SessionDep, actor: ViewerDep) -> dict[str, Any]:
    """Counts by status and priority, queue depth, throughput (last minute and the mean per
    minute over the window) and mean / p95 run time per type over the window. What
    grows with the history or the throughput is read again every so often, not for
    every answer, once it is costly: ``history_read_at`` says when."""
    state = request.app.state
    return await job_stats(session, state.history, state.pool)


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    responses=error_responses(401, 403, 503)
    | {200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(request: Request, session: SessionDep) -> Response:
    """Prometheus text format. No key needed unless SWITCHYARD_METRICS_REQUIRE_KEY=1."""
    state = request.app.state
    if state.settings.metrics_require_key:
        authorize(await current_actor(request), "viewer")
    body = await state.metrics.render(session, lease_seconds=state.settings.worker_lease_seconds)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
