"""Issue 17 item 5: the exact inputs that got a 500 (or a dropped connection) on main.

The app is served by a real uvicorn on a loopback port inside the test's event loop, so a
dropped connection shows as a transport error, not as an exception the test transport
would hand back. Each mutating refusal must answer 4xx with a message, change nothing
and leave its refusal audit row; each refused read answers 4xx with a message.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest
import websockets
from fastapi import WebSocket

from tests.conftest import ADMIN_KEY, auth
from tests.integration.conftest import served

JSON = {"content-type": "application/json"}


@pytest.fixture
async def base_url(app: object) -> AsyncIterator[str]:
    """The test's app (lifespan already running) behind a real HTTP server."""
    async with served(app) as address:
        yield f"http://{address}"


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers=auth(ADMIN_KEY), timeout=10) as c:
        yield c


async def snapshot(db: asyncpg.Connection) -> tuple[int, int, list[tuple[object, ...]]]:
    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    edges = await db.fetchval("SELECT count(*) FROM job_dependencies")
    schedules = [
        tuple(r) for r in await db.fetch("SELECT id, cron, job, paused, next_run_at FROM schedules")
    ]
    return jobs, edges, schedules


async def last_audit(db: asyncpg.Connection) -> asyncpg.Record:
    return await db.fetchrow(
        "SELECT action, outcome, status_code, detail FROM audit_log ORDER BY id DESC LIMIT 1"
    )


def as_message(r: httpx.Response) -> str:
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"], r.text
    return str(body["detail"])


# Raw JSON text: a lone surrogate can only be sent as a \u escape (it is not UTF-8).
LONE_HIGH = "\\ud800"
LONE_LOW = "\\udfff"
TOO_BIG = str(2**64)


def job_text(payload: str = "{}", **fields: str) -> str:
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return f'{{"type": "demo.echo", "payload": {payload}{extra}}}'


HOSTILE_JOBS = [
    pytest.param(job_text(f'{{"x": "{LONE_HIGH}"}}'), "payload.x", id="surrogate-value"),
    pytest.param(job_text(f'{{"{LONE_HIGH}": 1}}'), "payload", id="surrogate-key"),
    pytest.param(job_text(f'{{"a": [{{"{LONE_LOW}": 1}}]}}'), "payload.a[0]", id="surrogate-deep-key"),
    pytest.param(job_text(f'{{"a": ["ok", "{LONE_LOW}x"]}}'), "payload.a[1]", id="surrogate-in-list"),
    pytest.param(job_text(f'{{"x": {TOO_BIG}}}'), "payload.x", id="int-2^64"),
    pytest.param(job_text(f'{{"x": -{TOO_BIG}}}'), "payload.x", id="int-minus-2^64"),
    pytest.param(job_text(f'{{"x": [{2**63}]}}'), "payload.x[0]", id="int-2^63"),
    pytest.param(job_text(f'{{"x": {"9" * 4000}}}'), "payload.x", id="int-4000-digits"),
    pytest.param(job_text(run_at='"0001-01-01T00:00:00+05:00"'), "run_at", id="run_at-year-1-offset"),
    pytest.param(job_text(run_at='"9999-12-31T23:00:00-05:00"'), "run_at", id="run_at-year-9999-offset"),
    pytest.param(job_text(run_at='"9999-12-31T23:59:59Z"'), "run_at", id="run_at-year-9999"),
    pytest.param(job_text(name=f'"{LONE_HIGH}"'), "name", id="surrogate-name"),
    pytest.param(f'{{"type": "demo.echo", "{LONE_HIGH}": 1}}', "lone surrogate", id="surrogate-field"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "where"), HOSTILE_JOBS)
async def test_hostile_submission_is_422_changes_nothing_and_is_audited(
    http: httpx.AsyncClient, db: asyncpg.Connection, text: str, where: str
) -> None:
    before = await snapshot(db)
    r = await http.post("/jobs", content=text.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert where in as_message(r)
    assert await snapshot(db) == before
    row = await last_audit(db)
    assert (row["action"], row["outcome"], row["status_code"]) == ("job.submit", "invalid", 422)
    # the same body inside a batch: refused the same way
    r = await http.post("/jobs/batch", content=f'{{"jobs": [{text}]}}'.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert where in as_message(r)
    assert await snapshot(db) == before
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("job.batch_submit", 422)


HOSTILE_SCHEDULE_JOBS = [
    pytest.param(job_text(f'{{"x": {TOO_BIG}}}'), "job.payload.x", id="int-2^64"),
    pytest.param(job_text(f'{{"x": "{LONE_HIGH}"}}'), "job.payload.x", id="surrogate-value"),
    pytest.param(job_text(f'{{"{LONE_HIGH}": "x"}}'), "job.payload", id="surrogate-key"),
]


@pytest.mark.parametrize(("job", "where"), HOSTILE_SCHEDULE_JOBS)
async def test_hostile_schedule_job_is_422_on_create_and_update(
    http: httpx.AsyncClient, db: asyncpg.Connection, job: str, where: str
) -> None:
    created = await http.post(
        "/schedules", json={"name": "nightly", "cron": "0 3 * * *", "job": {"type": "demo.echo"}}
    )
    assert created.status_code == 201, created.text
    before = await snapshot(db)
    r = await http.post(
        "/schedules",
        content=f'{{"name": "other", "cron": "* * * * *", "job": {job}}}'.encode(),
        headers=JSON,
    )
    assert r.status_code == 422, r.text
    assert where in as_message(r)
    row = await last_audit(db)
    assert (row["action"], row["outcome"], row["status_code"]) == (
        "schedule.create", "invalid", 422,
    )  # fmt: skip
    r = await http.patch(
        f"/schedules/{created.json()['id']}", content=f'{{"job": {job}}}'.encode(), headers=JSON
    )
    assert r.status_code == 422, r.text
    assert where in as_message(r)
    assert await snapshot(db) == before
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("schedule.update", 422)


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
async def test_a_cron_that_never_fires_is_refused(
    http: httpx.AsyncClient, db: asyncpg.Connection, cron: str
) -> None:
    created = await http.post(
        "/schedules", json={"name": "nightly", "cron": "0 3 * * *", "job": {"type": "demo.echo"}}
    )
    assert created.status_code == 201, created.text
    before = await snapshot(db)
    r = await http.post(
        "/schedules", json={"name": "never", "cron": cron, "job": {"type": "demo.echo"}}
    )
    assert r.status_code == 422, r.text
    assert "never fires" in as_message(r) and cron in as_message(r)
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("schedule.create", 422)
    r = await http.patch(f"/schedules/{created.json()['id']}", json={"cron": cron})
    assert r.status_code == 422, r.text
    assert "never fires" in as_message(r)
    assert await snapshot(db) == before
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("schedule.update", 422)


def crafted_cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


SOME_ID = str(uuid.uuid4())

HOSTILE_READS = [
    pytest.param("/jobs", {"created_after": "0001-01-01T00:00:00+05:00"}, "created_after", id="created_after-year-1"),
    pytest.param("/jobs", {"created_before": "9999-12-31T23:00:00-05:00"}, "created_before", id="created_before-year-9999"),
    pytest.param("/jobs", {"created_after": "9999-12-31T23:59:59.999999Z"}, "created_after", id="created_after-max"),
    pytest.param("/jobs", {"cursor": crafted_cursor(f"0001-01-01T00:00:00+05:00|{SOME_ID}".encode())}, "cursor", id="cursor-year-1"),
    pytest.param("/jobs", {"cursor": crafted_cursor(f"9999-12-31T23:00:00-05:00|{SOME_ID}".encode())}, "cursor", id="cursor-year-9999"),
    pytest.param("/jobs", {"cursor": crafted_cursor(f"2020-01-01T00:00:00|{SOME_ID}".encode())}, "cursor", id="cursor-naive-time"),
    pytest.param("/jobs", {"cursor": crafted_cursor(b"a|b|c")}, "cursor", id="cursor-three-parts"),
    pytest.param("/jobs", {"cursor": crafted_cursor(b"\xff\xfe|\x80")}, "cursor", id="cursor-not-utf8"),
    pytest.param("/jobs", {"cursor": crafted_cursor(b"2020-01-01T00:00:00Z|\xed\xa0\x80")}, "cursor", id="cursor-surrogate-bytes"),
    pytest.param("/jobs", {"cursor": "A"}, "cursor", id="cursor-one-char"),
    pytest.param("/audit", {"cursor": "99999999999999999999"}, "cursor", id="audit-cursor-beyond-bigint"),
    pytest.param("/audit", {"cursor": str(2**63)}, "cursor", id="audit-cursor-2^63"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "where"), HOSTILE_READS)
async def test_hostile_read_is_422_with_a_message(
    http: httpx.AsyncClient, path: str, params: dict[str, str], where: str
) -> None:
    r = await http.get(path, params=params)
    assert r.status_code == 422, r.text
    assert where in as_message(r)


async def test_issued_cursors_and_extreme_but_valid_times_still_work(
    http: httpx.AsyncClient,
) -> None:
    """The bounds refuse only what cannot be computed with: ordinary extremes still read."""
    for _ in range(3):
        assert (await http.post("/jobs", json={"type": "demo.echo"})).status_code == 201
    first = (await http.get("/jobs", params={"limit": 2})).json()
    assert first["next_cursor"]
    rest = (await http.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert len(first["items"]) + len(rest["items"]) == 3
    wide = {"created_after": "0001-01-02T00:00:00Z", "created_before": "9998-12-31T00:00:00Z"}
    assert len((await http.get("/jobs", params=wide)).json()["items"]) == 3
    r = await http.get("/audit", params={"cursor": str(2**63 - 1), "limit": 1})
    assert r.status_code == 200 and len(r.json()["items"]) == 1


@pytest.mark.parametrize(
    "since",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "2020-01-01T00:00:00", "soon"],
)
async def test_websocket_since_out_of_range_closes_1008_with_a_reason(
    base_url: str, since: str
) -> None:
    url = base_url.replace("http://", "ws://") + "/jobs/stream"
    query = httpx.QueryParams({"job_id": SOME_ID, "replay": "true", "since": since})
    async with websockets.connect(f"{url}?{query}", additional_headers=auth(ADMIN_KEY)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert "since" in closed.value.rcvd.reason


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"jobid": SOME_ID}, "unknown parameter 'jobid'"),  # would stream every job
        # A close reason is at most 123 bytes: cut by bytes, never half a character.
        ({"名" * 40: "1"}, "unknown parameter '" + "名" * 34),
        ({"job_id": SOME_ID, "replay": "ture"}, "replay: true or false"),
        ({"job_id": SOME_ID, "replay": "maybe"}, "replay: true or false"),
    ],
)
async def test_websocket_misspelt_parameters_close_1008_with_a_reason(
    base_url: str, params: dict[str, str], reason: str
) -> None:
    """Seen failing: the socket was served (jobid= ignored: every job's events; replay=
    anything but true read as false); a reason cut to 120 characters, not bytes, failed
    the close (1006, no reason)."""
    url = base_url.replace("http://", "ws://") + "/jobs/stream"
    query = httpx.QueryParams(params)
    async with websockets.connect(f"{url}?{query}", additional_headers=auth(ADMIN_KEY)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason[: len(reason)]) == (1008, reason)
    assert len(closed.value.rcvd.reason.encode()) <= 123


async def test_hostile_text_never_reaches_an_error_answer_or_the_audit_log_raw(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A NUL in a field name ends up in the 422's detail and audit row: both must still be
    storable JSON (the NUL escaped), or the refusal's audit row would be lost."""
    text = '{"type": "demo.echo", "colour\\u0000": 1}'
    r = await http.post("/jobs", content=text.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert "colour\\x00: Extra inputs are not permitted" in as_message(r)
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("job.submit", 422)
    assert "colour\\x00" in orjson.loads(row["detail"])["detail"]


# ------------------------------------------------------------ the catch-all behind it all


async def test_an_unexpected_exception_is_a_json_500_with_an_error_id(
    app: object,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever escapes every handler answers 500 JSON with an id that is in the log with
    its traceback; the connection stays usable, and a mutating request is audited."""

    class Unforeseen(Exception):
        pass

    @app.post("/test-only/boom", name="test.boom")  # type: ignore[attr-defined]
    async def boom() -> None:
        raise Unforeseen("something nobody foresaw")

    @app.get("/test-only/boom")  # type: ignore[attr-defined]
    async def boom_read() -> None:
        raise Unforeseen("something nobody foresaw either")

    for method in ("POST", "GET"):
        r = await http.request(method, "/test-only/boom")
        assert r.status_code == 500, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"detail", "error_id"} and body["error_id"] in body["detail"]
        logged = [rec for rec in caplog.records if body["error_id"] in rec.getMessage()]
        assert logged and logged[0].exc_info and logged[0].exc_info[0] is Unforeseen
        if method == "POST":
            row = await last_audit(db)
            assert (row["action"], row["outcome"], row["status_code"]) == (
                "test.boom",
                "error",
                500,
            )
            assert body["error_id"] in orjson.loads(row["detail"])["detail"]
    # the same connection still answers
    assert (await http.get("/healthz")).status_code == 200


async def test_an_unexpected_exception_in_a_websocket_closes_it_1011_with_the_id(
    app: object, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    @app.websocket("/test-only/ws-boom")  # type: ignore[attr-defined]
    async def ws_boom(websocket: WebSocket) -> None:
        await websocket.accept()
        raise RuntimeError("broke mid-stream")

    url = base_url.replace("http://", "ws://") + "/test-only/ws-boom"
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    error_id = closed.value.rcvd.reason.removeprefix("internal error ")
    assert any(error_id in rec.getMessage() for rec in caplog.records)


async def test_an_unknown_query_parameter_is_422_naming_it(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A typo must not widen a read (``stauts`` would list every job) or pass unnoticed."""
    r = await http.get("/jobs", params={"stauts": "failed"})
    assert r.status_code == 422, r.text
    assert "stauts" in as_message(r) and "status" in as_message(r)
    before = await snapshot(db)
    r = await http.post("/jobs", params={"prio": "high"}, json={"type": "demo.echo"})
    assert r.status_code == 422, r.text
    assert "prio" in as_message(r)
    assert await snapshot(db) == before
    row = await last_audit(db)
    assert (row["action"], row["status_code"]) == ("job.submit", 422)
    assert (await http.get("/jobs", params={"status": "failed"})).status_code == 200


@pytest.mark.parametrize("accepted", [True, False])
@pytest.mark.parametrize(
    ("failure", "code", "reason"),
    [
        (ConnectionRefusedError(), 1013, "the database is unavailable"),
        (ValueError("a bug"), 1011, "internal error "),
    ],
)
async def test_a_database_failure_in_a_websocket_closes_it_with_the_reason(
    app: object, failure: Exception, code: int, reason: str, accepted: bool
) -> None:
    """Seen failing twice: when the handlers logged request.method (a WebSocket has none:
    the report itself raised AttributeError), and when they answered a WebSocket with an
    HTTP response (after its handshake: 'Unexpected ASGI message', the client closed
    1000 as if all were well). A helper saw both with the API's pool exhausted by replay
    sockets."""
    events = iter([{"type": "websocket.connect"}])

    async def receive() -> object:
        return next(events, {"type": "websocket.disconnect"})

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/jobs/stream", "headers": [], "query_string": b"",
             "app": app, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
             "scheme": "ws", "root_path": ""}  # fmt: skip
    websocket = WebSocket(scope, receive, send)  # type: ignore[arg-type]
    if accepted:
        await websocket.accept()
    handler = app.exception_handlers[OSError]  # type: ignore[attr-defined]
    assert await handler(websocket, failure) is None
    closed = sent[-1]
    assert closed["type"] == "websocket.close" and closed["code"] == code, sent
    assert str(closed["reason"]).startswith(reason)
