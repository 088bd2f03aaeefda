"""The API's documentation pages, served offline, and ``WS /jobs/stream`` in OpenAPI.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN (and ReDoc
its fonts from Google), so they are blank wherever the API has no internet. Here the
same pages (FastAPI's ``get_swagger_ui_html`` / ``get_redoc_html``) load their scripts,
stylesheet and icon from ``/docs/assets/``, files that the pinned ``fastapi-offline``
package ships (Swagger UI: Apache 2.0, ReDoc: MIT, the package: MIT). The pages and the
assets are Starlette routes like FastAPI's own: no key, none of the API's dependencies
(only the rate limit's per-address bucket, as for every request), and the assets are
cacheable.

OpenAPI 3.1 has no WebSocket operation. The stream is described where both viewers
render it, in the ``stream`` tag's description, and for tools in the document's
``x-websockets`` extension (parameters, security, close codes); its messages are the
``StreamEvent`` schemas in ``components/schemas``. It is not a ``paths`` entry: an HTTP
GET of ``/jobs/stream`` answers 404, and clients and fuzzers must not be told otherwise.
"""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from services.api.errors import INTERNAL_ERROR
from services.api.middleware import TRY_AGAIN_LATER
from services.api.routers.stream import MAX_REPLAY_JOBS, POLICY_VIOLATION, REPLAY_BYTES
from services.api.static import StaticFilesWithHeaders
from shared.states import JobStatus

ASSETS_PATH = "/docs/assets"
# A day: the files change only with the fastapi-offline pin, and ETag revalidates them.
ASSETS_MAX_AGE = 86_400
STREAM_PATH = "/jobs/stream"
STREAM_TAG = "stream"


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"


async def swagger_ui_page(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        oauth2_redirect_url=None,  # bearer keys only: no OAuth2 flow to come back from
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


async def redoc_page(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,  # ReDoc falls back to the browser's sans-serif
    )


# --- The stream's messages, as services/api/stream.py and routers/stream.py send them.
# Documentation models: the stream builds plain dicts, and
# tests/integration/test_api_docs.py checks that what it builds validates against these.


class StreamStateData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    old_status: JobStatus | None = Field(description="null in a replay, or for a new job")
    new_status: JobStatus
    type: str = Field(description="the job's task type")
    worker_id: str | None
    reason: str | None = Field(description="why, when known; 'replay' in a replay")
    replay: bool | None = Field(
        default=None, description="true (and present) only on the state a replay ends with"
    )


class StreamLogData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(description="orders the lines of one attempt")
    level: str = Field(description="the level the task logged at (info, warning, ...)")
    message: str


class StreamProgressData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: float
    total: float | None
    message: str | None


class StreamDroppedData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, description="how many events (or, in a replay, lines) are missing")
    replay: bool | None = Field(
        default=None, description="true: the replay left out the job's first `count` lines"
    )
    hint: str | None = Field(default=None, description="where to read them (a replay only)")


class _StreamEnvelope(BaseModel):
    job_id: UUID
    attempt: int = Field(description="the attempt the event belongs to (1 for the first)")
    ts: datetime = Field(description="RFC 3339, UTC, with a Z")


class StreamStateEvent(_StreamEnvelope):
    """A status change of a job."""

    event: Literal["state"]
    data: StreamStateData


class StreamLogEvent(_StreamEnvelope):
    """One line the task logged."""

    event: Literal["log"]
    data: StreamLogData


class StreamProgressEvent(_StreamEnvelope):
    """The task's latest progress report."""

    event: Literal["progress"]
    data: StreamProgressData


class StreamDroppedEvent(BaseModel):
    """Events lost for this client (its buffer was full: job_id and attempt are null;
    re-read over REST), or, in a replay, the job's earliest lines left out."""

    event: Literal["dropped"]
    job_id: UUID | None
    attempt: int | None
    ts: datetime
    data: StreamDroppedData


StreamEvent = Annotated[
    StreamStateEvent | StreamLogEvent | StreamProgressEvent | StreamDroppedEvent,
    Field(discriminator="event"),
]
STREAM_EVENT_DESCRIPTION = (
    f"One text frame of `WS {STREAM_PATH}`: a JSON object, told apart by `event`."
)

_STATUSES = [s.value for s in JobStatus]
STREAM_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "job_id", "in": "query", "style": "form", "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "format": "uuid"}},
        "description": "only these jobs' events; repeat for several",
    },
    {
        "name": "type", "in": "query", "style": "form", "explode": True,
        "schema": {"type": "array", "items": {"type": "string"}},
        "description": "only jobs of these task types; repeat for several",
    },
    {
        "name": "status", "in": "query", "style": "form", "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "enum": _STATUSES}},
        "description": "only events of jobs in these statuses; repeat for several; log "
        "and progress events count as `running`",
    },
    {
        "name": "replay", "in": "query", "schema": {"type": "boolean", "default": False},
        "description": f"needs `job_id` (at most {MAX_REPLAY_JOBS}): first each job's latest "
        "log lines, stored or recently seen (at most `SWITCHYARD_WS_REPLAY_LINES` a job, "
        f"{REPLAY_BYTES // (1024 * 1024)} MiB in all, newest kept; a `dropped` event with "
        "`data.replay: true` first when lines were left out), its latest progress, then "
        "its current state (`data.replay: true`); then live events, without duplicates",
    },
    {
        "name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
        "description": "RFC 3339 with an offset: replay only lines from then on",
    },
    {
        "name": "token", "in": "query", "schema": {"type": "string"},
        "description": "the API key, for clients that cannot send an Authorization header "
        "(browsers)",
    },
    {
        "name": "Authorization", "in": "header", "schema": {"type": "string"},
        "description": "`Bearer <key>`: the API key (role viewer or higher)",
    },
]  # fmt: skip
CLOSE_CODES = {
    str(POLICY_VIOLATION): "a missing, invalid or revoked key (revocation closes an open "
    "socket within about `SWITCHYARD_WS_KEY_RECHECK_SECONDS`), a bad parameter, or more than "
    "`SWITCHYARD_WS_MAX_SOCKETS_PER_KEY` sockets for the key on this replica; the close "
    "reason says which. The socket is accepted first, then closed before any event.",
    str(TRY_AGAIN_LATER): "over a rate limit (the reason says how long to wait), or the "
    "database unavailable: connect again after a while",
    str(INTERNAL_ERROR): "an unexpected error: the reason is `internal error <id>`, the id "
    "of the traceback in the API's log",
}
_EVENT_DATA = {
    "state": "`old_status`, `new_status`, `type`, `worker_id`, `reason` (and `replay`)",
    "log": "`seq`, `level`, `message`",
    "progress": "`done`, `total`, `message`",
    "dropped": "`count` (and in a replay `replay`, `hint`)",
}


def _stream_description() -> str:
    rows = "\n".join(
        f"| `{p['name']}` | {p['in']} | {p['description']} |" for p in STREAM_PARAMETERS
    )
    closes = "\n".join(f"| {code} | {why} |" for code, why in CLOSE_CODES.items())
    events = "\n".join(f"| `{name}` | {data} |" for name, data in _EVENT_DATA.items())
    return f"""\
Live job events over a **WebSocket**: `ws://<host>{STREAM_PATH}` (`wss://` behind TLS).
OpenAPI has no WebSocket operation, so the stream is described here (and, for tools, in
this document's `x-websockets` extension); an HTTP `GET {STREAM_PATH}` answers 404.

**Key**: role viewer or higher, sent as `Authorization: Bearer <key>`, or as
`?token=<key>` where no header can be sent.

| parameter | in | meaning |
| --- | --- | --- |
{rows}

Without filters a socket gets every job's events. A slow client is never waited for:
when its buffer (`SWITCHYARD_WS_BUFFER_EVENTS`) is full, its new events are dropped and
counted, and a `dropped` event comes before the next one.

| close code | when |
| --- | --- |
{closes}

**Messages**: one JSON object a text frame,
`{{"event", "job_id", "attempt", "ts", "data"}}` (schema `StreamEvent`):

| `event` | `data` |
| --- | --- |
{events}

<SchemaDefinition schemaRef="#/components/schemas/StreamEvent" />

```python
import asyncio, websockets

async def main():
    url = "ws://127.0.0.1:8000{STREAM_PATH}?job_id=<id>&replay=true"
    headers = {{"Authorization": "Bearer <key>"}}
    async with websockets.connect(url, additional_headers=headers) as ws:
        async for message in ws:
            print(message)

asyncio.run(main())
```
"""


def _bearer_scheme(schema: dict[str, Any]) -> str:
    schemes = schema.get("components", {}).get("securitySchemes", {})
    return next((name for name, s in schemes.items() if s.get("scheme") == "bearer"), "HTTPBearer")


def document_stream(schema: dict[str, Any]) -> None:
    """Add ``WS /jobs/stream`` to an OpenAPI document built by FastAPI (in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    events = TypeAdapter(StreamEvent).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in events.pop("$defs", {}).items():
        # JobStatus is already there (JobRead uses it); anything else must be new.
        if components.setdefault(name, definition) != definition:
            raise RuntimeError(f"OpenAPI schema {name!r} is defined twice, differently")
    components["StreamEvent"] = {**events, "description": STREAM_EVENT_DESCRIPTION}

    schema["x-websockets"] = {
        STREAM_PATH: {
            "summary": "Live job events (WebSocket)",
            "tags": [STREAM_TAG],
            "parameters": STREAM_PARAMETERS,
            "security": [{_bearer_scheme(schema): []}],
            "messages": {"$ref": "#/components/schemas/StreamEvent"},
            "x-close-codes": CLOSE_CODES,
        }
    }
    # Declare every tag, in the order their operations come, so that the stream's
    # (which has no operation) is listed last; x-traitTag: ReDoc shows a tag without
    # operations only as such a section.
    declared = {tag["name"]: tag for tag in schema.get("tags", [])}
    order: list[str] = []
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            order += [t for t in operation.get("tags", []) if t not in order]
    order += [name for name in declared if name not in order]
    order = [name for name in order if name != STREAM_TAG] + [STREAM_TAG]
    schema["tags"] = [declared.get(name, {"name": name}) for name in order]
    schema["tags"][-1] = {
        "name": STREAM_TAG,
        "description": _stream_description(),
        "x-traitTag": True,
    }


def install_api_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets from this process, and describe the
    stream in ``/openapi.json``. Create ``app`` with ``docs_url=None, redoc_url=None``."""
    assets = files("fastapi_offline") / "static"
    app.mount(
        ASSETS_PATH, StaticFilesWithHeaders(
            directory=str(assets), headers={"cache-control": f"public, max-age={ASSETS_MAX_AGE}"}
        ), name="docs-assets"
    )  # fmt: skip
    app.add_route("/docs", swagger_ui_page, include_in_schema=False)
    app.add_route("/redoc", redoc_page, include_in_schema=False)

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:  # built once, as FastAPI does, then served as is
            document_stream(build_openapi())  # FastAPI keeps the document it returns
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
