"""``POST /jobs`` answered below FastAPI (services/api/fast_submit.py): the same answers,
audit rows and jobs as the route, for what it takes and for what it hands to the route."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from services.api.fast_submit import FastSubmit
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, SUBMITTER_KEY, VIEWER_KEY, auth, listening_key_cache

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


Case = tuple[str, dict[str, str], bytes, str, str]


def case(
    what: str, body: bytes, *, headers: dict[str, str] = JSON, query: str = "",
    key: str = SUBMITTER_KEY,
) -> Case:  # fmt: skip
    """(what, headers beyond the key, body, query string, key)."""
    return what, headers, body, query, key


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
    case("plain", b'{"type": "demo.echo", "payload": {"a": 1}}'),
    case("all options", json.dumps(ALL_OPTIONS).encode(), key=ADMIN_KEY),
    case("charset", ECHO, headers={"content-type": "Application/JSON; charset=utf-8"}),
    case("vendor json", ECHO, headers={"content-type": "application/vnd.me+json"}),
    case("text/plain", ECHO, headers={"content-type": "text/plain"}),
    case("no content type", ECHO, headers={}),
    case("duplicate keys", b'{"type": "nope", "type": "demo.echo"}'),
    case("unicode", '{"type": "demo.echo", "name": "caf\u00e9 \\u00e9"}'.encode()),
    case("broken json", b'{"type": "demo.echo"'),
    case("empty body", b""),
    case("NaN", b'{"type": "demo.echo", "payload": {"x": NaN}}'),
    case("huge integer", b'{"type": "demo.echo", "payload": {"x": 1234567890123456789012345}}'),
    case("lone surrogate", b'{"type": "demo.echo", "name": "\\ud800"}'),
    case("utf-16", ECHO.decode().encode("utf-16")),
    case("a list", b"[" + ECHO + b"]"),
    case("unknown field", b'{"type": "demo.echo", "colour": "red"}'),
    case("bad priority", b'{"type": "demo.echo", "priority": "urgent"}'),
    case("unknown type", b'{"type": "no.such.task"}'),
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
    app: Any, route_only: Any, db: asyncpg.Connection, case: tuple[Any, ...]
) -> None:
    _, headers, body, query, key = case
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


async def _asgi(
    app: Any, scope_app: Any, body_chunks: list[bytes], query: bytes = b"", leave: bool = False
) -> Any:
    """Send one ``POST /jobs`` straight to ``app`` (an ASGI callable), the body in
    ``body_chunks`` (with ``leave``, the client leaves before saying the body ended);
    returns (status, body) of what it answered."""
    chunks = list(body_chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            more = bool(chunks[1:]) or leave
            return {"type": "http.request", "body": chunks.pop(0), "more_body": more}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/jobs", "raw_path": b"/jobs",
        "query_string": query, "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("switchyard.test", 80), "client": ("10.1.2.3", 5555), "app": scope_app,
        "headers": [(b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {SUBMITTER_KEY}".encode())],
    }  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_a_plain_submit_is_stored_without_the_route_and_the_rest_reaches_it_whole(
    app: Any, db: asyncpg.Connection
) -> None:
    """The fast layer alone in front of a stand-in for the route: the common submit is
    stored and answered without it; a request it hands on arrives with its body intact,
    however the body was split."""
    async with warm_client(app):
        pass
    handed: list[bytes] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        handed.append(body)
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

    split = [b'{"type": "demo.echo", ', b'"depends_on": [], ', b'"idempotency_key": "k"}']
    assert (await _asgi(layer, app, split))[0] == 299
    assert handed == [b"".join(split)]
    assert (await _asgi(layer, app, [b'{"type": "demo.echo"}'], query=b"x=1"))[0] == 299
    assert handed[-1] == b'{"type": "demo.echo"}'
    # A client that leaves before its body's end submits nothing, whatever it sent.
    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    assert (await _asgi(layer, app, [b'{"type": "demo.echo"}'], leave=True))[0] == 299
    assert await db.fetchval("SELECT count(*) FROM jobs") == jobs
