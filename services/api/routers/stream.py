"""``WS /jobs/stream``: live state, log and progress events.

Query parameters: ``job_id`` (repeat for several), ``type`` (repeat), ``status``
(repeat; log and progress events count as ``running``), ``replay=true`` (with
``job_id``: first the job's log lines, stored or recently seen, at most the latest
``SWITCHYARD_WS_REPLAY_LINES`` of each job (a ``dropped`` event with ``data.replay:
true`` and the ``count`` left out comes first when lines were left out: read them with
``GET /jobs/{id}/logs``), the latest progress, and the job's current state; then live
events without duplicates), ``since`` (RFC 3339: replay only lines from then on),
``token`` (the API key, when no Authorization header can be sent). A bad or missing
key: accepted, then closed with 1008 before any event; bad parameters: closed with
1008 and a reason. A key with ``SWITCHYARD_WS_MAX_SOCKETS_PER_KEY`` sockets open on
the replica: closed with 1008 "too many sockets for this key". A socket whose key is
revoked is closed with 1008 within seconds (``services/api/keycache.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import load_only
from starlette.websockets import WebSocketState

from services.api.deps import resolve_token
from services.api.keycache import KeyWatch
from services.api.keys import hash_key
from services.api.middleware import (
    INVALID_KEY,
    KEY_REFUSED,
    POLICY_VIOLATION,
    close_reason,
    websocket_token,
)
from services.api.stream import StreamFilter, Subscriber, TooManySockets, envelope, iso
from shared.jsonvalues import printable
from shared.models import Job, JobLogLine
from shared.schemas import check_time_range
from shared.states import JobStatus

router = APIRouter(tags=["stream"])

MAX_REPLAY_JOBS = 100  # jobs one socket may ask a replay of
# The replay's lines, all jobs together, in characters of JSON: a replay of 100 jobs of
# 1,000 long lines each must not be held in memory (the rest: GET /jobs/{id}/logs).
REPLAY_BYTES = 8 * 1024 * 1024
# Replay reads under way at once on a replica, all sockets together. Each holds a pooled
# connection: 50 sockets replaying 100 jobs each took every one of them, and requests and
# other replays waited for one until they failed (5 s). The rest of a replay waits here.
REPLAY_READS = 4
# What a replay tells of a job: never its payload or result (up to megabytes each).
REPLAYED_COLUMNS = load_only(
    Job.id, Job.created_at, Job.updated_at, Job.type, Job.status, Job.attempts,
    Job.worker_id, Job.progress,
)  # fmt: skip


class BadRequest(Exception):
    pass


ACCEPTED_PARAMETERS = ("job_id", "type", "status", "replay", "since", "token")
YES_NO = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_filter(params: Any) -> tuple[StreamFilter, bool, datetime | None]:
    # A misspelt parameter is refused, as on every HTTP route: ignored, ``jobid=`` would
    # stream every job's events and ``replay=ture`` none of the past.
    unknown = sorted({name for name in params if name not in ACCEPTED_PARAMETERS})
    if unknown:
        raise BadRequest(f"unknown parameter {printable(unknown[0])[:40]!r}; this stream "
                         f"takes {', '.join(ACCEPTED_PARAMETERS)}")  # fmt: skip
    try:
        job_ids = frozenset(UUID(v) for v in params.getlist("job_id")) or None
    except ValueError:
        raise BadRequest("job_id: not a job id") from None
    types = frozenset(params.getlist("type")) or None
    statuses = frozenset(params.getlist("status")) or None
    if statuses and not statuses <= {s.value for s in JobStatus}:
        raise BadRequest(f"status: one of {', '.join(s.value for s in JobStatus)}")
    replay = YES_NO.get(params.get("replay", "false").lower())
    if replay is None:
        raise BadRequest("replay: true or false")
    if replay and not job_ids:
        raise BadRequest("replay needs job_id")
    if replay and job_ids and len(job_ids) > MAX_REPLAY_JOBS:
        raise BadRequest(f"replay: at most {MAX_REPLAY_JOBS} job_id per socket")
    since = None
    if params.get("since"):
        try:
            since = datetime.fromisoformat(params["since"])
        except ValueError:
            raise BadRequest("since: not an RFC 3339 time") from None
        try:
            check_time_range(since)
        except ValueError as exc:
            raise BadRequest(f"since: {exc}") from None
    return StreamFilter(job_ids=job_ids, types=types, statuses=statuses), replay, since


async def not_a_websocket(request: Request) -> JSONResponse:
    """``GET /jobs/stream`` over plain HTTP (curl, a browser tab): say what it is, rather
    than read ``stream`` as a job id (422, "not a valid UUID")."""
    detail = (
        "/jobs/stream is a WebSocket: connect with a WebSocket client "
        "(ws://<host>/jobs/stream?token=<key>), not plain HTTP"
    )
    return JSONResponse({"detail": detail}, status_code=426, headers={"Upgrade": "websocket"})


# A plain route (no FastAPI dependant): the query a stream takes is not refused here.
router.add_route("/jobs/stream", not_a_websocket, methods=["GET"], include_in_schema=False)


@router.websocket("/jobs/stream")
async def job_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    state = websocket.app.state
    token = websocket_token(websocket.scope)
    digest = hash_key(token) if token else None
    cache = getattr(state, "key_cache", None)
    try:
        if digest is not None and cache is not None and cache.is_refused(digest):
            raise HTTPException(401, INVALID_KEY)  # refused a moment ago: no lookup
        generation = cache.generation if cache is not None else 0
        try:
            actor = await resolve_token(state, token)
        except HTTPException:
            if digest is not None and cache is not None:
                cache.remember_refused(digest, generation)
            raise
        stream_filter, replay, since = parse_filter(websocket.query_params)
        sub = state.hub.subscribe(
            stream_filter, key=actor.key_id, max_per_key=state.settings.ws_max_sockets_per_key
        )  # before replay: nothing falls in between
    except HTTPException as exc:
        websocket.scope[KEY_REFUSED] = exc.status_code == 401  # counted as a 401 (RateLimit)
        with contextlib.suppress(WebSocketDisconnect):  # the client left meanwhile
            await websocket.close(POLICY_VIOLATION, reason=close_reason(str(exc.detail)))
        return
    except (BadRequest, TooManySockets) as exc:
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.close(POLICY_VIOLATION, reason=close_reason(str(exc)))
        return
    watch = cache.watch(digest) if digest is not None and cache is not None else None
    try:
        await serve(websocket, sub, watch, replay=replay, since=since)
    finally:
        state.hub.unsubscribe(sub)
        if watch is not None:
            cache.unwatch(watch)  # type: ignore[union-attr]
    # Served to its end: a normal close. An error went on to the handlers, which close
    # with its code (1013: the database; 1011: anything else), not with this 1000.
    if websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError):
            await websocket.close()


async def serve(
    websocket: WebSocket,
    sub: Subscriber,
    watch: KeyWatch | None,
    *,
    replay: bool,
    since: datetime | None,
) -> None:
    """Replay, then live events, until the client leaves or its key is revoked."""
    sent: set[tuple[str, int, int]] = set()
    revoked = asyncio.create_task((watch.revoked if watch else asyncio.Event()).wait())
    tasks: list[asyncio.Task[Any]] = [revoked]
    try:
        if replay:
            replaying = asyncio.create_task(send_replay(websocket, sub.filter, since, sent))
            tasks.append(replaying)
            await asyncio.wait((revoked, replaying), return_when=asyncio.FIRST_COMPLETED)
            if replaying.done():
                replaying.result()  # its error (the client left) ends the socket
        if not revoked.done():
            live = [
                asyncio.create_task(forward(websocket, sub, sent)),
                asyncio.create_task(until_disconnect(websocket)),
            ]
            tasks += live
            await asyncio.wait((revoked, *live), return_when=asyncio.FIRST_COMPLETED)
        if revoked.done() and websocket.client_state == WebSocketState.CONNECTED:
            await websocket.close(POLICY_VIOLATION, reason="API key revoked")
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task


async def until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice it leaving."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


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
    """Each job's latest lines (at most ``SWITCHYARD_WS_REPLAY_LINES``, and all jobs'
    lines together at most ``REPLAY_BYTES``), its progress, then its state. Lines left
    out are announced first, with how many.

    Each job's frames are read in a session of their own (at most ``REPLAY_READS`` such
    reads at once on the replica) and sent after it is closed: a client that does not
    read its socket must not hold a pooled connection."""
    state = websocket.app.state
    assert stream_filter.job_ids is not None
    async with state.replay_reads, state.sessionmaker() as session:
        jobs = list(await session.scalars(
            select(Job).where(Job.id.in_(stream_filter.job_ids)).options(REPLAYED_COLUMNS)
        ))  # fmt: skip
    budget = REPLAY_BYTES
    for job in sorted(jobs, key=lambda j: j.created_at):
        async with state.replay_reads, state.sessionmaker() as session:
            frames, budget = await replay_frames(session, state, job, since, sent, budget)
        for frame in frames:
            await websocket.send_text(frame)


async def replay_frames(
    session: AsyncSession,
    state: Any,
    job: Job,
    since: datetime | None,
    sent: set[tuple[str, int, int]],
    budget: int,
) -> tuple[list[str], int]:
    """One job's replay frames, and what is left of the byte budget after them."""
    cap: int = state.settings.ws_replay_lines
    where = [JobLogLine.job_id == job.id]
    if since is not None:
        where.append(JobLogLine.ts >= since)
    latest = list(
        await session.scalars(
            select(JobLogLine)
            .where(*where)
            .order_by(JobLogLine.attempt.desc(), JobLogLine.seq.desc())
            .limit(cap)
        )
    )
    lines: dict[tuple[int, int], dict[str, Any]] = {}
    for ln in latest:
        data = {"seq": ln.seq, "level": ln.level, "message": ln.message}
        lines[(ln.attempt, ln.seq)] = envelope("log", job.id, ln.attempt, iso(ln.ts), data)
    for ev in state.hub.recent_lines(job.id):
        if since is None or datetime.fromisoformat(ev["ts"]) >= since:
            lines.setdefault((ev["attempt"], ev["data"]["seq"]), ev)
    ordered = sorted(lines.items())
    kept = ordered[len(ordered) - cap :] if cap else []
    # The newest lines that fit the budget (at least none, never a partial line).
    texts: list[tuple[tuple[int, int], str]] = []
    for key, ev in reversed(kept):
        text = orjson.dumps(ev).decode()
        if len(text) > budget:
            break
        budget -= len(text)
        texts.append((key, text))
    texts.reverse()
    left_out = len(kept) - len(texts)  # over the byte budget
    if len(latest) == cap and kept:
        # Every stored line before the first one kept, beyond what was read.
        first = kept[0][0]
        left_out += int(
            await session.scalar(
                select(func.count())
                .select_from(JobLogLine)
                .where(*where, tuple_(JobLogLine.attempt, JobLogLine.seq) < first)
            )
            or 0
        )
    else:
        left_out += len(ordered) - len(kept)
    frames: list[str] = []
    if left_out:
        hint = f"read the earlier lines with GET /jobs/{job.id}/logs"
        notice = envelope("dropped", job.id, job.attempts, iso(datetime.now(UTC)),
                          {"count": left_out, "replay": True, "hint": hint})  # fmt: skip
        frames.append(orjson.dumps(notice).decode())
    for (attempt, seq), text in texts:
        sent.add((str(job.id), attempt, seq))
        frames.append(text)
    if job.progress:
        p = job.progress
        ts = str(p.get("ts") or iso(job.updated_at))
        done = {"done": p.get("done"), "total": p.get("total"), "message": p.get("message")}
        frames.append(orjson.dumps(envelope("progress", job.id, job.attempts, ts, done)).decode())
    # The current state last: a client may stop at a final state, after the lines.
    now = {"old_status": None, "new_status": job.status, "type": job.type,
           "worker_id": job.worker_id, "reason": "replay", "replay": True}  # fmt: skip
    current = envelope("state", job.id, job.attempts, iso(job.updated_at), now)
    frames.append(orjson.dumps(current).decode())
    return frames, budget
