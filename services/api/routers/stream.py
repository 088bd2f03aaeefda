"""``WS /jobs/stream``: live state, log and progress events.

Query parameters: ``job_id`` (repeat for several), ``type`` (repeat), ``status``
(repeat; log and progress events count as ``running``), ``replay=true`` (with
``job_id``: first every log line stored or recently seen, the latest progress, and
the job's current state; then live events without duplicates), ``since`` (RFC 3339:
replay only lines from then on), ``token`` (the API key, when no Authorization
header can be sent). A bad or missing key: accepted, then closed with 1008 before any
event; bad parameters: closed with 1008 and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect
from sqlalchemy import select
from starlette.websockets import WebSocketState

from services.api.deps import resolve_token
from services.api.stream import StreamFilter, Subscriber, envelope, iso
from shared.models import Job, JobLogLine
from shared.states import JobStatus

router = APIRouter(tags=["stream"])

POLICY_VIOLATION = 1008


class BadRequest(Exception):
    pass


def parse_filter(params: Any) -> tuple[StreamFilter, bool, datetime | None]:
    try:
        job_ids = frozenset(UUID(v) for v in params.getlist("job_id")) or None
    except ValueError:
        raise BadRequest("job_id: not a job id") from None
    types = frozenset(params.getlist("type")) or None
    statuses = frozenset(params.getlist("status")) or None
    if statuses and not statuses <= {s.value for s in JobStatus}:
        raise BadRequest(f"status: one of {', '.join(s.value for s in JobStatus)}")
    replay = params.get("replay", "false").lower() in ("1", "true", "yes")
    if replay and not job_ids:
        raise BadRequest("replay needs job_id")
    since = None
    if params.get("since"):
        try:
            since = datetime.fromisoformat(params["since"])
        except ValueError:
            raise BadRequest("since: not an RFC 3339 time") from None
        if since.tzinfo is None:
            raise BadRequest("since: give a time zone offset (e.g. Z)")
    return StreamFilter(job_ids=job_ids, types=types, statuses=statuses), replay, since


def token_of(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return websocket.query_params.get("token")


@router.websocket("/jobs/stream")
async def job_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    state = websocket.app.state
    try:
        async with state.sessionmaker() as session:
            await resolve_token(state, session, token_of(websocket))
        stream_filter, replay, since = parse_filter(websocket.query_params)
    except HTTPException as exc:
        await websocket.close(POLICY_VIOLATION, reason=str(exc.detail)[:120])
        return
    except BadRequest as exc:
        await websocket.close(POLICY_VIOLATION, reason=str(exc)[:120])
        return
    hub = state.hub
    sub = hub.subscribe(stream_filter)  # before replay: nothing falls in between
    sent: set[tuple[str, int, int]] = set()
    try:
        if replay:
            await send_replay(websocket, stream_filter, since, sent)
        pump = asyncio.create_task(forward(websocket, sub, sent))
        try:
            while True:  # we only read to notice the client leaving
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await pump
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        if websocket.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await websocket.close()


async def forward(websocket: WebSocket, sub: Subscriber, sent: set[tuple[str, int, int]]) -> None:
    """Send the subscriber's events; a ``dropped`` notice first whenever some were lost."""
    while True:
        dropped, item = await sub.next()
        if dropped:
            now = iso(datetime.now(UTC))
            notice = {"event": "dropped", "job_id": None, "attempt": None, "ts": now,
                      "data": {"count": dropped}}  # fmt: skip
            await websocket.send_text(orjson.dumps(notice).decode())
        if item is None:
            continue
        event, body = item
        if (
            event["event"] == "log"
            and (event["job_id"], event["attempt"], event["data"]["seq"]) in sent
        ):
            continue
        await websocket.send_text(body.decode())


async def send_replay(
    websocket: WebSocket,
    stream_filter: StreamFilter,
    since: datetime | None,
    sent: set[tuple[str, int, int]],
) -> None:
    state = websocket.app.state
    assert stream_filter.job_ids is not None
    async with state.sessionmaker() as session:
        jobs = list(await session.scalars(select(Job).where(Job.id.in_(stream_filter.job_ids))))
        stmt = select(JobLogLine).where(JobLogLine.job_id.in_(stream_filter.job_ids))
        if since is not None:
            stmt = stmt.where(JobLogLine.ts >= since)
        stored = list(await session.scalars(stmt))
    for job in sorted(jobs, key=lambda j: j.created_at):
        lines: dict[tuple[int, int], dict[str, Any]] = {}
        for ln in stored:
            if ln.job_id == job.id:
                lines[(ln.attempt, ln.seq)] = envelope(
                    "log", job.id, ln.attempt, iso(ln.ts),
                    {"seq": ln.seq, "level": ln.level, "message": ln.message},
                )  # fmt: skip
        for ev in state.hub.recent_lines(job.id):
            if since is None or datetime.fromisoformat(ev["ts"]) >= since:
                lines.setdefault((ev["attempt"], ev["data"]["seq"]), ev)
        for (attempt, seq), ev in sorted(lines.items()):
            sent.add((str(job.id), attempt, seq))
            await websocket.send_text(orjson.dumps(ev).decode())
        if job.progress:
            p = job.progress
            ts = str(p.get("ts") or iso(job.updated_at))
            data = {"done": p.get("done"), "total": p.get("total"), "message": p.get("message")}
            progress = envelope("progress", job.id, job.attempts, ts, data)
            await websocket.send_text(orjson.dumps(progress).decode())
        # The current state last: a client may stop at a final state, after the lines.
        data = {"old_status": None, "new_status": job.status, "type": job.type,
                "worker_id": job.worker_id, "reason": "replay", "replay": True}  # fmt: skip
        await websocket.send_text(
            orjson.dumps(
                envelope("state", job.id, job.attempts, iso(job.updated_at), data)
            ).decode()
        )
