"""Python client for the Switchyard API (the SDK), on httpx.

    from switchyard import Client

    with Client("http://127.0.0.1:8000", api_key="…") as sy:
        job = sy.enqueue_job("demo.sleep", {"seconds": 1}, priority="high")
        done = sy.wait(job, on_progress=lambda j: print(j.progress))

Every method takes the SDK's own types: a job id as a ``UUID``, a ``str`` or the job
object itself (also in ``depends_on``), ``datetime`` values (``run_at``; a naive one is
local time). Answers are typed (:class:`JobRead`, :class:`JobLogs`, :class:`Event`).
A 429 or 503 answer is retried after its ``Retry-After``, at most ``retries`` times and
never longer than ``max_retry_wait`` seconds at once; every other refusal is an
:class:`ApiError` carrying the API's status code and message. :class:`AsyncClient` has
the same methods, for asyncio code.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from types import TracebackType
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import httpx
import orjson
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect

from switchyard.errors import ApiError
from switchyard.models import Event, JobLogs, JobRead
from switchyard.states import TERMINAL

#: Where the API is when neither the argument nor SWITCHYARD_URL says.
DEFAULT_URL = "http://127.0.0.1:8000"
LOG_PAGE_SIZE = 1000  # lines per GET /jobs/{id}/logs request
RETRIED_STATUSES = frozenset({429, 503})

JobRef = JobRead | UUID | str
ProgressCallback = Callable[[JobRead], None]


def _where(url: str | None, api_key: str | None) -> tuple[str, str | None, dict[str, str]]:
    """URL, key and auth header: the arguments, else SWITCHYARD_URL / SWITCHYARD_API_KEY."""
    # Only these two variables: the SDK never builds the server's Settings, so a bad
    # SWITCHYARD_API_KEYS (or database URL) cannot break a client.
    url = url or os.environ.get("SWITCHYARD_URL") or DEFAULT_URL
    if api_key is None:
        api_key = os.environ.get("SWITCHYARD_API_KEY") or None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return url.rstrip("/"), api_key, headers


def job_id(job: JobRef) -> str:
    """The id of a job given as its object, a UUID or a string (checked: an id goes into
    a URL path, where ``../workers`` would reach another route)."""
    if isinstance(job, JobRead):
        return str(job.id)
    if isinstance(job, UUID):
        return str(job)
    if isinstance(job, str):
        try:
            return str(UUID(job))
        except ValueError:
            raise ValueError(f"{job!r} is not a job id (a UUID)") from None
    raise TypeError(f"a job is a JobRead, a UUID or a str, not {type(job).__name__}")


def plain(value: Any) -> Any:
    """``value`` as JSON the API reads: the SDK's own types become what they stand for."""
    if isinstance(value, JobRead):
        return str(value.id)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        # A naive datetime is local time, as Python's own astimezone() reads it.
        return (value if value.tzinfo else value.astimezone()).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def retry_after(response: httpx.Response, attempt: int, cap: float) -> float:
    """Seconds to wait before retrying a 429/503: its Retry-After (whole seconds or an
    HTTP date), else an exponential guess; never more than ``cap``."""
    header = response.headers.get("Retry-After", "").strip()
    wait = 0.5 * 2**attempt
    if header.isdigit():
        wait = float(header)
    elif header:
        try:
            wait = (parsedate_to_datetime(header) - datetime.now().astimezone()).total_seconds()
        except (TypeError, ValueError, OverflowError):
            pass
    return min(max(wait, 0.0), cap)


def answer(response: httpx.Response) -> Any:
    """The JSON answer, or ApiError with the API's own message (or with what came back,
    when it is not the API that answered: a proxy, a redirect, a page)."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = _NOT_JSON
    if response.status_code >= 400:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        raise ApiError(response.status_code, response.text[:500] if body is _NOT_JSON else detail)
    if response.status_code >= 300 or body is _NOT_JSON:
        raise ApiError(
            response.status_code,
            f"not an answer of the Switchyard API (is the URL right?): {response.text[:200]!r}",
        )
    return body


_NOT_JSON = object()


@dataclass(frozen=True)
class Call:
    """One SDK call as data: both clients send it the same way and read its answer with
    ``read`` (so the sync and the async client cannot drift apart)."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    read: Callable[[Any], Any] = lambda data: data


def _jobs(data: Any) -> list[JobRead]:
    return [JobRead.model_validate(j) for j in data["jobs"]]


class Calls:
    """The routes of the API the SDK knows, as :class:`Call` values."""

    @staticmethod
    def enqueue_job(type: str, payload: Any, options: dict[str, Any]) -> Call:
        body = {"type": type, "payload": {} if payload is None else payload}
        body |= {k: v for k, v in options.items() if v is not None}
        return Call("POST", "/jobs", body=plain(body), read=JobRead.model_validate)

    @staticmethod
    def submit_batch(jobs: list[dict[str, Any]]) -> Call:
        return Call("POST", "/jobs/batch", body=plain({"jobs": jobs}), read=_jobs)

    @staticmethod
    def get_status(job: JobRef) -> Call:
        return Call("GET", f"/jobs/{job_id(job)}", read=JobRead.model_validate)

    @staticmethod
    def cancel(job: JobRef) -> Call:
        return Call("PATCH", f"/jobs/{job_id(job)}/cancel", read=JobRead.model_validate)

    @staticmethod
    def retry(job: JobRef, dependents: bool) -> Call:
        return Call(
            "POST",
            f"/jobs/{job_id(job)}/retry",
            params={"dependents": dependents},
            read=JobRead.model_validate,
        )

    @staticmethod
    def logs_page(job: JobRef, limit: int, cursor: str | None) -> Call:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        return Call("GET", f"/jobs/{job_id(job)}/logs", params=params, read=JobLogs.model_validate)

    @staticmethod
    def list_page(filters: dict[str, Any], limit: int, cursor: str | None) -> Call:
        params = {k: plain(v) for k, v in filters.items() if v is not None} | {"limit": limit}
        return Call("GET", "/jobs", params=params | ({"cursor": cursor} if cursor else {}))

    @staticmethod
    def raw(method: str, path: str, params: dict[str, Any] | None, json: Any) -> Call:
        return Call(method, path, params=plain(params or {}), body=plain(json))


def _merge_logs(first: JobLogs, page: JobLogs) -> None:
    first.lines.extend(page.lines)
    first.executions = page.executions


def _stream_url(
    url: str,
    job_ids: list[JobRef] | None,
    types: list[str] | None,
    statuses: list[str] | None,
    replay: bool,
) -> str:
    query: list[tuple[str, str]] = [("job_id", job_id(j)) for j in job_ids or []]
    query += [("type", t) for t in types or []] + [("status", str(s)) for s in statuses or []]
    if replay:
        query.append(("replay", "true"))
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{ws_url}/jobs/stream?{urlencode(query)}"


def _closed(exc: ConnectionClosed) -> None:
    """The API's refusals as the HTTP codes they stand for, with the reason: 1008 a key
    (401), a key's socket limit (429) or a bad parameter (422); 1013 a rate limit (429)
    or the database unavailable (503); 1011 an unexpected error (500, with its id). Any
    other close ends the stream."""
    close = exc.rcvd
    if close is None or close.code not in (1008, 1011, 1013):
        return
    reason = close.reason
    if close.code == 1008:
        status = 429 if "too many sockets" in reason else 401 if "API key" in reason else 422
    elif close.code == 1013:
        status = 429 if reason.startswith("too many") else 503
    else:
        status = 500
    raise ApiError(status, reason or "stream closed by the API") from None


class _Settings:
    """What both clients are built from."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        retries: int,
        max_retry_wait: float,
    ) -> None:
        self.url, self.api_key, self.headers = _where(url, api_key)
        if retries < 0 or max_retry_wait < 0:
            raise ValueError("retries and max_retry_wait must not be negative")
        self.retries = retries
        self.max_retry_wait = max_retry_wait

    def unreachable(self, exc: httpx.HTTPError) -> ApiError:
        return ApiError(0, f"cannot reach {self.url}: {exc}")

    def no_stream(self, exc: Exception) -> ApiError:
        """The stream could not be opened: the handshake's status when there was one."""
        status = exc.response.status_code if isinstance(exc, InvalidStatus) else 0
        return ApiError(status, f"cannot open the event stream at {self.url}: {exc}")

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before sending ``response``'s request again; None: do not."""
        if response.status_code not in RETRIED_STATUSES or attempt >= self.retries:
            return None
        return retry_after(response, attempt, self.max_retry_wait)

    @staticmethod
    def read(call: Call, response: httpx.Response) -> Any:
        data = answer(response)
        try:
            return call.read(data)
        except (ValidationError, KeyError, TypeError) as exc:
            raise ApiError(response.status_code, f"an answer the SDK cannot read: {exc}") from None


class Client:
    """The API over blocking HTTP (see the module docstring)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        self._s = _Settings(url, api_key, retries, max_retry_wait)
        self.url, self.api_key = self._s.url, self._s.api_key
        self._http = httpx.Client(base_url=self.url, headers=self._s.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params or None, json=call.body
                )
            except httpx.HTTPError as exc:
                raise self._s.unreachable(exc) from exc
            if (delay := self._s.retry_delay(response, attempt)) is None:
                break
            time.sleep(delay)
        return self._s.read(call, response)

    def enqueue_job(self, type: str, payload: Any = None, **options: Any) -> JobRead:
        """Submit a job; ``options`` are the other fields of POST /jobs."""
        return self._do(Calls.enqueue_job(type, payload, options))

    def submit_batch(self, jobs: list[dict[str, Any]]) -> list[JobRead]:
        """Submit jobs at once (``depends_on`` may name a batch member by its index)."""
        return self._do(Calls.submit_batch(jobs))

    def get_status(self, job: JobRef) -> JobRead:
        return self._do(Calls.get_status(job))

    def cancel(self, job: JobRef) -> JobRead:
        return self._do(Calls.cancel(job))

    def retry(self, job: JobRef, *, dependents: bool = False) -> JobRead:
        return self._do(Calls.retry(job, dependents))

    def logs_page(
        self, job: JobRef, *, limit: int = LOG_PAGE_SIZE, cursor: str | None = None
    ) -> JobLogs:
        """One page of the job's lines (and its executions); ``next_cursor`` for the next."""
        return self._do(Calls.logs_page(job, limit, cursor))

    def logs(self, job: JobRef, *, page_size: int = LOG_PAGE_SIZE) -> JobLogs:
        """Every line of the job (page after page) and its executions."""
        first = page = self.logs_page(job, limit=page_size)
        while page.next_cursor:
            page = self.logs_page(job, limit=page_size, cursor=page.next_cursor)
            _merge_logs(first, page)
        first.next_cursor = None
        return first

    def list_jobs(self, *, page_size: int = 100, **filters: Any) -> Iterator[JobRead]:
        """Every job matching the filters (status, type, priority, created_after/before),
        newest first, fetching page after page as the caller iterates."""
        cursor = None
        while True:
            page = self._do(Calls.list_page(filters, page_size, cursor))
            yield from (JobRead.model_validate(j) for j in page["items"])
            if not (cursor := page["next_cursor"]):
                return

    def wait(
        self,
        job: JobRef,
        timeout: float = 60.0,
        *,
        poll: float = 0.2,
        on_progress: ProgressCallback | None = None,
    ) -> JobRead:
        """Wait until the job is completed, failed or cancelled and return it;
        ``on_progress(job)`` is called whenever its progress changed; TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        watch = _Watch(job, timeout, on_progress)
        while True:
            try:
                current = self.get_status(job)
            except ApiError as exc:
                watch.hiccup(exc, deadline - time.monotonic())
            else:
                if watch.saw(current):
                    return current
            left = deadline - time.monotonic()
            watch.check_time(left)
            time.sleep(min(poll, left))

    def raw(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        """Any other route, as JSON (the CLI's --json output)."""
        return self._do(Calls.raw(method, path, params, json))

    def stream(
        self,
        *,
        job_ids: list[JobRef] | None = None,
        types: list[str] | None = None,
        statuses: list[str] | None = None,
        replay: bool = False,
    ) -> Iterator[Event]:
        """Live events from ``WS /jobs/stream``, until the caller stops or the API closes."""
        try:
            ws_cm = connect(
                _stream_url(self.url, job_ids, types, statuses, replay),
                additional_headers=self._s.headers,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise self._s.no_stream(exc) from exc
        with ws_cm as ws:
            while True:
                try:
                    raw = ws.recv()
                except ConnectionClosed as exc:
                    _closed(exc)
                    return
                yield Event.model_validate(orjson.loads(raw))


class AsyncClient:
    """The same as :class:`Client`, for asyncio code: every method is awaited (``list_jobs``
    and ``stream`` are async iterators)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        self._s = _Settings(url, api_key, retries, max_retry_wait)
        self.url, self.api_key = self._s.url, self._s.api_key
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._s.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params or None, json=call.body
                )
            except httpx.HTTPError as exc:
                raise self._s.unreachable(exc) from exc
            if (delay := self._s.retry_delay(response, attempt)) is None:
                break
            await asyncio.sleep(delay)
        return self._s.read(call, response)

    async def enqueue_job(self, type: str, payload: Any = None, **options: Any) -> JobRead:
        return await self._do(Calls.enqueue_job(type, payload, options))

    async def submit_batch(self, jobs: list[dict[str, Any]]) -> list[JobRead]:
        return await self._do(Calls.submit_batch(jobs))

    async def get_status(self, job: JobRef) -> JobRead:
        return await self._do(Calls.get_status(job))

    async def cancel(self, job: JobRef) -> JobRead:
        return await self._do(Calls.cancel(job))

    async def retry(self, job: JobRef, *, dependents: bool = False) -> JobRead:
        return await self._do(Calls.retry(job, dependents))

    async def logs_page(
        self, job: JobRef, *, limit: int = LOG_PAGE_SIZE, cursor: str | None = None
    ) -> JobLogs:
        return await self._do(Calls.logs_page(job, limit, cursor))

    async def logs(self, job: JobRef, *, page_size: int = LOG_PAGE_SIZE) -> JobLogs:
        first = page = await self.logs_page(job, limit=page_size)
        while page.next_cursor:
            page = await self.logs_page(job, limit=page_size, cursor=page.next_cursor)
            _merge_logs(first, page)
        first.next_cursor = None
        return first

    async def list_jobs(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[JobRead]:
        cursor = None
        while True:
            page = await self._do(Calls.list_page(filters, page_size, cursor))
            for j in page["items"]:
                yield JobRead.model_validate(j)
            if not (cursor := page["next_cursor"]):
                return

    async def wait(
        self,
        job: JobRef,
        timeout: float = 60.0,
        *,
        poll: float = 0.2,
        on_progress: ProgressCallback | None = None,
    ) -> JobRead:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        watch = _Watch(job, timeout, on_progress)
        while True:
            try:
                current = await self.get_status(job)
            except ApiError as exc:
                watch.hiccup(exc, deadline - loop.time())
            else:
                if watch.saw(current):
                    return current
            left = deadline - loop.time()
            watch.check_time(left)
            await asyncio.sleep(min(poll, left))

    async def raw(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        return await self._do(Calls.raw(method, path, params, json))

    async def stream(
        self,
        *,
        job_ids: list[JobRef] | None = None,
        types: list[str] | None = None,
        statuses: list[str] | None = None,
        replay: bool = False,
    ) -> AsyncIterator[Event]:
        url = _stream_url(self.url, job_ids, types, statuses, replay)
        try:
            ws = await aconnect(url, additional_headers=self._s.headers)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise self._s.no_stream(exc) from exc
        async with ws:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    _closed(exc)
                    return
                yield Event.model_validate(orjson.loads(raw))


class _Watch:
    """What ``wait`` decides while it polls: the end, a progress change (``on_progress``
    once per change, though polling sees the same value many times), a hiccup of the
    API or the network to ride out until the deadline, the deadline itself."""

    TRANSIENT = frozenset({0, 502, 503, 504})

    def __init__(self, job: JobRef, timeout: float, on_progress: ProgressCallback | None) -> None:
        self._job, self._timeout, self._on_progress = job_id(job), timeout, on_progress
        self._last: Any = None
        self._status = "unknown"

    def saw(self, job: JobRead) -> bool:
        """True when ``job`` has ended."""
        self._status = str(job.status)
        if self._on_progress is not None and job.progress not in (None, self._last):
            self._last = job.progress
            self._on_progress(job)
        return job.status in TERMINAL

    def hiccup(self, exc: ApiError, left: float) -> None:
        if exc.status not in self.TRANSIENT or left <= 0:
            raise exc

    def check_time(self, left: float) -> None:
        if left <= 0:
            raise TimeoutError(f"job {self._job} still {self._status} after {self._timeout:g} s")
