"""``POST /jobs`` answered below FastAPI (services/api/fast_submit.py): the same answers,
audit rows and jobs as the route, for what it takes and for what it hands to the route."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.middleware import Middleware

from services.api.app import create_app
from services.api.fast_submit import MAX_BODY_BYTES, FastSubmit
from services.api.keys import hash_key
from shared.settings import Settings
from tests.conftest import (
    ADMIN_KEY,
    SUBMITTER_KEY,
    VIEWER_KEY,
    asgi_body,
    auth,
    listening_key_cache,
    wait_for,
)

VOLATILE = {"id", "created_at", "updated_at", "run_at", "idempotency_key"}
JSON = {"content-type": "application/json"}


@pytest.fixture
async def route_only(settings: Settings) -> AsyncIterator[Any]:
    """The same app without the fast layer: every submit goes through FastAPI's route."""
    application = create_app(settings)
    application.user_middleware = [
        m for m in application.user_middleware if m.cls is not FastSubmit
    ]
    async with application.router.lifespan_context(application):
        yield application


class Reached:
    """A pass-through right inside the fast layer: the submits that got past it."""

    def __init__(self, app: Any, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/jobs":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def warm_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client on ``app`` whose keys its cache remembers (the fast layer needs that)."""
    await listening_key_cache(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://switchyard.test") as c:
        for key in (ADMIN_KEY, SUBMITTER_KEY, VIEWER_KEY):
            assert (await c.get("/jobs", headers=auth(key))).status_code == 200
        yield c


def _normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


async def _audit_since(db: asyncpg.Connection, after: int) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT actor, role, action, outcome, status_code, client, detail, job_id IS NULL"
        " AS no_job FROM audit_log WHERE id > $1 ORDER BY id",
        after,
    )
    out = []
    for r in rows:
        detail = json.loads(r["detail"]) if r["detail"] else None
        if isinstance(detail, dict):
            detail.pop("job_ids", None)
        out.append((r["actor"], r["role"], r["action"], r["outcome"], r["status_code"],
                    r["client"], detail, r["no_job"]))  # fmt: skip
    return out


Case = tuple[str, dict[str, str], bytes, str, str, bool]


def case(
    what: str, body: bytes, *, headers: dict[str, str] = JSON, query: str = "",
    key: str = SUBMITTER_KEY, fast: bool = False,
) -> Case:  # fmt: skip
    """(what, headers beyond the key, body, query string, key, whether the fast layer
    answers it without the route)."""
    return what, headers, body, query, key, fast


ECHO = b'{"type": "demo.echo"}'
ALL_OPTIONS = {
    "type": "demo.sleep",
    "payload": {"seconds": 1},
    "priority": "high",
    "name": "nap",
    "resources": {"cpu_units": 0.5, "memory_mb": 64},
    "timeout_seconds": 30,
    "retry": {"max_attempts": 5},
}
CASES = [
    case("plain", b'{"type": "demo.echo", "payload": {"a": 1}}', fast=True),
    case("all options", json.dumps(ALL_OPTIONS).encode(), key=ADMIN_KEY, fast=True),
    case("charset", ECHO, headers={"content-type": "Application/JSON; charset=utf-8"}, fast=True),
    case("vendor json", ECHO, headers={"content-type": "application/vnd.me+json"}, fast=True),
    case("text/plain", ECHO, headers={"content-type": "text/plain"}),
    case("no content type", ECHO, headers={}),
    case("duplicate keys", b'{"type": "nope", "type": "demo.echo"}', fast=True),
    case("unicode", '{"type": "demo.echo", "name": "caf\u00e9 \\u00e9"}'.encode(), fast=True),
    case("broken json", b'{"type": "demo.echo"'),
    case("empty body", b""),
    case("NaN", b'{"type": "demo.echo", "payload": {"x": NaN}}', fast=True),
    case(
        "huge integer",
        b'{"type": "demo.echo", "payload": {"x": 1234567890123456789012345}}',
        fast=True,
    ),
    case("lone surrogate", b'{"type": "demo.echo", "name": "\\ud800"}'),
    case("utf-16", ECHO.decode().encode("utf-16"), fast=True),
    case("a list", b"[" + ECHO + b"]"),
    case("unknown field", b'{"type": "demo.echo", "colour": "red"}'),
    case("bad priority", b'{"type": "demo.echo", "priority": "urgent"}'),
    case("unknown type", b'{"type": "no.such.task"}', fast=True),
    case(
        "payload over its limit",
        b'{"type": "demo.echo", "payload": {"x": "%s"}}' % (b"y" * 300_000),
    ),
    case(
        "body over its limit", b'{"type": "demo.echo", "payload": {"x": "%s"}}' % (b"y" * 1_100_000)
    ),
    case(
        "a dependency", b'{"type": "demo.echo", "depends_on": ["%s"]}' % str(uuid.uuid4()).encode()
    ),
    case("an idempotency key", b'{"type": "demo.echo", "idempotency_key": "{unique}"}'),
    case("a query string", ECHO, query="dry_run=1"),
    case("a viewer", ECHO, key=VIEWER_KEY),
    case("an unknown key", ECHO, key="sy_no-such-key"),
    case("no key", ECHO, key=""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_the_fast_layer_answers_as_the_route(
    app: Any, route_only: Any, db: asyncpg.Connection, case: Case
) -> None:
    _, headers, body, query, key, fast_expected = case
    reached: list[str] = []
    app.user_middleware.append(Middleware(Reached, seen=reached))  # before the first request
    answers = []
    async with warm_client(app) as fast, warm_client(route_only) as slow:
        for client in (fast, slow):
            before = await db.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")
            sent = {**headers, **(auth(key) if key else {})}
            unique = body.replace(b"{unique}", uuid.uuid4().hex.encode())
            r = await client.post(f"/jobs?{query}" if query else "/jobs", content=unique,
                                  headers=sent)  # fmt: skip
            stored = None
            if r.status_code in (200, 201):
                stored = (
                    await client.get(f"/jobs/{r.json()['id']}", headers=auth(ADMIN_KEY))
                ).json()
            answers.append((
                r.status_code,
                r.headers.get("content-type"),
                r.headers.get("www-authenticate"),
                _normalized(r.json()),
                _normalized(stored),
                await _audit_since(db, before),
            ))  # fmt: skip
    assert answers[0] == answers[1]
    assert reached == ([] if fast_expected else ["/jobs"])


async def _asgi(
    app: Any,
    scope_app: Any,
    body_chunks: list[bytes],
    *,
    query: bytes = b"",
    length: int | None = -1,
    gate: Any = None,
    key: str = SUBMITTER_KEY,
) -> Any:
    """Send one ``POST /jobs`` straight to ``app`` (an ASGI callable), the body in
    ``body_chunks``; ``length`` is the Content-Length sent (-1: the body's, None: none);
    ``gate`` (an awaitable), if given, is awaited before the last part, and an empty
    last part means the client left instead. Returns (status, body) of the answer."""
    chunks = list(body_chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if len(chunks) == 1 and gate is not None:
            await gate
        if chunks and (len(chunks) > 1 or chunks[0]):
            return {"type": "http.request", "body": chunks.pop(0), "more_body": len(chunks) > 0}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"),
               (b"authorization", f"Bearer {key}".encode())]  # fmt: skip
    if length is not None:
        declared = sum(map(len, body_chunks)) if length == -1 else length
        headers.append((b"content-length", str(declared).encode()))
    scope = {
        "type": "http", "method": "POST", "path": "/jobs", "raw_path": b"/jobs",
        "query_string": query, "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("switchyard.test", 80), "client": ("10.1.2.3", 5555), "app": scope_app,
        "headers": headers,
    }  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_a_plain_submit_is_stored_without_the_route_and_the_rest_reaches_it_whole(
    app: Any, db: asyncpg.Connection
) -> None:
    """The fast layer alone in front of a stand-in for the route: the common submit is
    stored and answered without it; a request it hands on arrives with its body intact,
    however the body was split, read or not."""
    async with warm_client(app):
        pass
    handed: list[bytes] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        handed.append(await asgi_body(receive))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    layer = FastSubmit(route)
    status, answer = await _asgi(layer, app, [b'{"type": "demo.', b'echo", "name": "n1"}'])
    assert status == 201 and handed == []
    job = json.loads(answer)
    row = await db.fetchrow("SELECT name, status FROM jobs WHERE id = $1::uuid", job["id"])
    assert (row["name"], row["status"]) == ("n1", "ready")
    audit = await db.fetchrow(
        "SELECT action, client, outcome FROM audit_log WHERE job_id = $1::uuid", job["id"]
    )
    assert tuple(audit) == ("job.submit", "10.1.2.3", "ok")

    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    split = [b'{"type": "demo.echo", ', b'"depends_on": [], ', b'"idempotency_key": "k"}']
    assert (await _asgi(layer, app, split))[0] == 299
    assert handed[-1] == b"".join(split)
    assert (await _asgi(layer, app, [ECHO], query=b"x=1"))[0] == 299
    assert handed[-1] == ECHO
    # Chunked, or declared longer than the layer reads: handed on unread, byte by byte.
    trickle = [ECHO[i : i + 1] for i in range(len(ECHO))]
    assert (await _asgi(layer, app, trickle, length=None))[0] == 299
    assert (await _asgi(layer, app, [ECHO], length=MAX_BODY_BYTES + 1))[0] == 299
    assert handed[-2:] == [ECHO, ECHO]
    # A client that leaves before its body's end submits nothing, whatever it sent.
    assert (await _asgi(layer, app, [ECHO, b""], length=len(ECHO) + 10))[0] == 299
    assert await db.fetchval("SELECT count(*) FROM jobs") == jobs


async def test_a_key_revoked_while_its_body_arrives_is_refused(
    app: Any, db: asyncpg.Connection
) -> None:
    """The route checks the key once the body is in; a key the cache knew when the
    headers came and that was revoked before the body's end stores nothing."""
    async with warm_client(app) as admin:
        new_key = {"role": "submitter", "label": "brief"}
        made = (await admin.post("/api-keys", json=new_key, headers=auth(ADMIN_KEY))).json()
        assert (await admin.get("/jobs", headers=auth(made["key"]))).status_code == 200
        jobs = await db.fetchval("SELECT count(*) FROM jobs")
        gate = asyncio.get_running_loop().create_future()
        body = [b'{"type": "demo.', b'echo"}']
        submit = asyncio.create_task(_asgi(app, app, body, gate=gate, key=made["key"]))
        await asyncio.sleep(0)  # the headers are in, the first part read
        revoked = await admin.delete(f"/api-keys/{made['id']}", headers=auth(ADMIN_KEY))
        assert revoked.status_code == 204
        digest = hash_key(made["key"])

        async def forgotten() -> bool:
            return app.state.key_cache.get(digest) is None

        await wait_for(forgotten, timeout=5, what="the replica to forget the revoked key")
        gate.set_result(None)
        status, answer = await submit
    assert status == 401, answer
    assert await db.fetchval("SELECT count(*) FROM jobs") == jobs
