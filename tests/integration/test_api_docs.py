"""``/docs`` and ``/redoc`` work offline, and ``/openapi.json`` documents the WebSocket.

Every asset the two pages reference must come from the API itself (this machine, like
many deployments, has no CDN), without a key, cacheable; and the OpenAPI document must
describe ``WS /jobs/stream`` (filters, close codes, event shapes) well enough that the
events the API really sends validate against it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit
from uuid import uuid4

import httpx
import jsonschema
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.api.routers.stream import ACCEPTED_PARAMETERS, replay_frames
from services.api.stream import to_envelope
from shared.messages import JobLog, JobProgress, JobStateChanged
from shared.models import Job
from tests.conftest import ADMIN_KEY, auth

BASE = "http://switchyard.test"
# What each kind of asset must be served as; anything else fails the test.
EXPECTED_TYPES = {
    ".js": ("application/javascript", "text/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".ico": ("image/x-icon", "image/vnd.microsoft.icon"),
    ".svg": ("image/svg+xml",),
    ".woff2": ("font/woff2",),
    ".json": ("application/json",),
}
URL_ATTRIBUTES = {"src", "href", "spec-url", "data-src"}
# Quoted strings in inline scripts that are URLs: absolute, protocol-relative or a path.
INLINE_URL = re.compile(r"""["']((?:[a-z][a-z0-9+.-]*:)?//[^"'\s]+|/[^"'\s]*)["']""", re.I)


class AssetReferences(HTMLParser):
    """Every URL a page refers to: tag attributes and quoted URLs of inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in URL_ATTRIBUTES and value]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += INLINE_URL.findall(data)


@pytest.fixture
async def public_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A browser's view: no API key."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        yield c


def referenced_urls(html: str) -> list[str]:
    parser = AssetReferences()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_assets_the_api_serves(
    public_client: httpx.AsyncClient, page: str
) -> None:
    r = await public_client.get(page)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    urls = referenced_urls(r.text)
    assert "://" not in r.text, "the page names another host"
    # The page's script, its stylesheet (Swagger UI), its icon and the OpenAPI document.
    assert any(u.endswith(".js") for u in urls), urls
    assert any(u.endswith(".png") for u in urls), urls
    assert "/openapi.json" in urls, urls
    for url in urls:
        absolute = urljoin(f"{BASE}{page}", url)
        assert urlsplit(absolute).netloc == urlsplit(BASE).netloc, f"{page} loads {url}"
        asset = await public_client.get(absolute)
        assert asset.status_code == 200, (url, asset.status_code)
        suffix = "." + urlsplit(absolute).path.rsplit(".", 1)[-1]
        content_type = asset.headers["content-type"].split(";")[0]
        assert content_type in EXPECTED_TYPES[suffix], (url, content_type)
        assert len(asset.content) > 1000, (url, len(asset.content))
    scripts = [u for u in urls if u.endswith(".js")]
    bodies = [(await public_client.get(urljoin(f"{BASE}{page}", u))).content for u in scripts]
    # The global the page's inline script calls is defined by the served bundle.
    defines = b"SwaggerUIBundle" if page == "/docs" else b"Redoc"
    assert any(defines in body for body in bodies), scripts


async def test_docs_assets_are_public_and_cacheable(public_client: httpx.AsyncClient) -> None:
    page = await public_client.get("/docs")
    script = next(u for u in referenced_urls(page.text) if u.endswith(".js"))
    first = await public_client.get(script)
    assert first.status_code == 200
    cache_control = first.headers["cache-control"]
    assert "public" in cache_control and "max-age=" in cache_control, cache_control
    assert int(cache_control.split("max-age=")[1].split(",")[0]) >= 3600, cache_control
    again = await public_client.get(script, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


async def test_the_root_leads_to_the_dashboard(public_client: httpx.AsyncClient) -> None:
    """A browser pointed at the API's address got 404 "Not Found"."""
    root = await public_client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = await public_client.get("/", follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "/" not in (await public_client.get("/openapi.json")).json()["paths"]


def stream_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["x-websockets"]["/jobs/stream"]  # type: ignore[no-any-return]


async def test_openapi_documents_the_stream(public_client: httpx.AsyncClient) -> None:
    schema = (await public_client.get("/openapi.json")).json()
    doc = stream_doc(schema)
    params = {p["name"]: p for p in doc["parameters"]}
    assert {"job_id", "type", "status", "replay", "since", "token", "Authorization"} <= set(params)
    # What is documented is what the stream takes (it closes 1008 on any other).
    assert {name for name, p in params.items() if p["in"] == "query"} == set(ACCEPTED_PARAMETERS)
    assert params["job_id"]["schema"]["items"]["format"] == "uuid"
    assert "running" in params["status"]["schema"]["items"]["enum"]
    assert "1008" in doc["x-close-codes"] and "1011" in doc["x-close-codes"]
    assert doc["messages"] == {"$ref": "#/components/schemas/StreamEvent"}
    assert doc["security"] == [{"HTTPBearer": []}]  # the scheme REST routes declare
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    # The rendered part: the stream tag's description (Swagger UI and ReDoc show it).
    tag = next(t for t in schema["tags"] if t["name"] == "stream")
    for words in ("/jobs/stream", "1008", "job_id", "replay", "`dropped`", "StreamEvent"):
        assert words in tag["description"], words
    # The stream is no HTTP operation: nothing for an HTTP client or a fuzzer to call.
    assert "/jobs/stream" not in schema["paths"]


async def test_the_stream_over_plain_http_says_it_is_a_websocket(
    public_client: httpx.AsyncClient,
) -> None:
    """Seen failing: 401 without a key, and with one 422 'path.job_id: Input should be a
    valid UUID' (the path read as GET /jobs/{job_id})."""
    for params in ({}, {"job_id": str(uuid4()), "replay": "true"}):
        r = await public_client.get("/jobs/stream", params=params, headers=auth(ADMIN_KEY))
        assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
        assert "is a WebSocket" in r.json()["detail"]


def event_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    document = {"$ref": "#/components/schemas/StreamEvent", "components": schema["components"]}
    cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
    return cls(document, format_checker=cls.FORMAT_CHECKER)  # type: ignore[no-any-return]


async def test_events_the_api_sends_match_the_documented_shapes(
    app: FastAPI, public_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    schema = (await public_client.get("/openapi.json")).json()
    validator = event_validator(schema)
    job_id, now = uuid4(), datetime.now(UTC)
    live: list[JobStateChanged | JobLog | JobProgress] = [
        JobStateChanged(job_id=job_id, type="demo.echo", old_status="ready",
                        new_status="running", attempt=1, worker_id="w1", ts=now),
        JobLog(job_id=job_id, type="demo.echo", attempt=1, seq=3, level="info",
               message="hello", ts=now),
        JobProgress(job_id=job_id, attempt=1, done=2, total=5, message="2 of 5", ts=now),
    ]  # fmt: skip
    for message in live:
        converted = to_envelope(message)
        assert converted is not None
        validator.validate(converted[0])
    # A replay, as the socket sends it: the job's current state, marked as replayed.
    r = await client.post("/jobs", json={"type": "demo.echo", "payload": {}})
    assert r.status_code == 201, r.text
    state = app.state
    async with state.sessionmaker() as session:
        job = (await session.scalars(select(Job).where(Job.id == r.json()["id"]))).one()
        frames, _ = await replay_frames(session, state, job, None, set(), 1 << 20)
    assert frames
    for frame in frames:
        validator.validate(httpx.Response(200, content=frame).json())
    # What the documentation must refuse, so that the checks above can fail.
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"event": "state", "job_id": str(job_id), "attempt": 1,
                            "ts": "2026-01-01T00:00:00Z", "data": {"seq": 1}})  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"event": "surprise", "job_id": None, "attempt": None,
                            "ts": "2026-01-01T00:00:00Z", "data": {}})  # fmt: skip
