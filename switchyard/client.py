"""Python client for the Switchyard API (the SDK), on httpx.

    from switchyard import Client

    with Client("http://127.0.0.1:8000", api_key="…") as sy:
        job = sy.enqueue_job("demo.sleep", {"seconds": 1}, priority="high")
        for event in sy.stream(job_ids=[job.id], replay=True):
            ...

Errors are :class:`ApiError` carrying the API's status code and message.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from switchyard.errors import ApiError
from switchyard.models import JobLogs, JobRead
from switchyard.states import TERMINAL

#: Where the API is when neither the argument nor SWITCHYARD_URL says.
DEFAULT_URL = "http://127.0.0.1:8000"


def _where(url: str | None, api_key: str | None) -> tuple[str, str | None, dict[str, str]]:
    """URL, key and auth header: the arguments, else SWITCHYARD_URL / SWITCHYARD_API_KEY."""
    # Only these two variables: the SDK never builds the server's Settings, so a bad
    # SWITCHYARD_API_KEYS (or database URL) cannot break a client.
    url = url or os.environ.get("SWITCHYARD_URL") or DEFAULT_URL
    if api_key is None:
        api_key = os.environ.get("SWITCHYARD_API_KEY") or None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return url.rstrip("/"), api_key, headers


def _result(response: httpx.Response) -> Any:
    """The JSON answer, or ApiError with the API's own message."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiError(response.status_code, detail)
    return response.json() if response.content else None


LOG_PAGE_SIZE = 1000  # lines per GET /jobs/{id}/logs request


def _log_params(limit: int, cursor: str | None) -> dict[str, Any]:
    return {"limit": limit} | ({"cursor": cursor} if cursor else {})


def _job_body(type: str, payload: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": type,
        "payload": payload or {},
        **{k: v for k, v in options.items() if v is not None},
    }


def _stream_url(
    url: str,
    job_ids: list[str] | None,
    types: list[str] | None,
    statuses: list[str] | None,
    replay: bool,
) -> str:
    query: list[tuple[str, str]] = [("job_id", j) for j in job_ids or []]
    query += [("type", t) for t in types or []] + [("status", s) for s in statuses or []]
    if replay:
        query.append(("replay", "true"))
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{ws_url}/jobs/stream?{urlencode(query)}"


def _closed(exc: ConnectionClosed) -> None:
    """A 1008 close is the API refusing the key; any other close ends the stream."""
    if exc.rcvd is not None and exc.rcvd.code == 1008:
        raise ApiError(401, exc.rcvd.reason or "stream refused") from None


class Client:
    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30
    ) -> None:
        self.url, self.api_key, headers = _where(url, api_key)
        self._headers = headers
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.url}: {exc}") from exc
        return _result(response)

    def enqueue_job(
        self, type: str, payload: dict[str, Any] | None = None, **options: Any
    ) -> JobRead:
        """Submit a job; ``options`` are the other fields of POST /jobs."""
        body = {
            "type": type,
            "payload": payload or {},
            **{k: v for k, v in options.items() if v is not None},
        }
        return JobRead.model_validate(self._request("POST", "/jobs", json=body))

    def get_status(self, job_id: str) -> JobRead:
        return JobRead.model_validate(self._request("GET", f"/jobs/{job_id}"))

    def logs_page(
        self, job_id: str, *, limit: int = LOG_PAGE_SIZE, cursor: str | None = None
    ) -> JobLogs:
        """One page of the job's lines (and its executions); ``next_cursor`` for the next."""
        params = _log_params(limit, cursor)
        return JobLogs.model_validate(self._request("GET", f"/jobs/{job_id}/logs", params=params))

    def logs(self, job_id: str, *, page_size: int = LOG_PAGE_SIZE) -> JobLogs:
        """Every line of the job (page after page) and its executions."""
        first = page = self.logs_page(job_id, limit=page_size)
        while page.next_cursor:
            page = self.logs_page(job_id, limit=page_size, cursor=page.next_cursor)
            first.lines.extend(page.lines)
            first.executions = page.executions
        first.next_cursor = None
        return first

    def cancel(self, job_id: str) -> JobRead:
        return JobRead.model_validate(self._request("PATCH", f"/jobs/{job_id}/cancel"))

    def retry(self, job_id: str, *, dependents: bool = False) -> JobRead:
        return JobRead.model_validate(
            self._request("POST", f"/jobs/{job_id}/retry", params={"dependents": dependents})
        )

    def submit_batch(self, jobs: list[dict[str, Any]]) -> list[JobRead]:
        data = self._request("POST", "/jobs/batch", json={"jobs": jobs})
        return [JobRead.model_validate(j) for j in data["jobs"]]

    def list_jobs(self, *, page_size: int = 100, **filters: Any) -> Iterator[JobRead]:
        """Every job matching the filters (status, type, priority, created_after/before),
        newest first, fetching page after page as the caller iterates."""
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": page_size}
        while True:
            page = self._request("GET", "/jobs", params=params)
            yield from (JobRead.model_validate(j) for j in page["items"])
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def wait(self, job_id: str, timeout: float = 60.0, *, poll: float = 0.2) -> JobRead:
        """Wait until the job is completed, failed or cancelled; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_status(job_id)
            if job.status in TERMINAL:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g} s")
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def raw(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other route, as JSON (the CLI's --json output)."""
        return self._request(method, path, **kwargs)

    def stream(
        self,
        *,
        job_ids: list[str] | None = None,
        types: list[str] | None = None,
        statuses: list[str] | None = None,
        replay: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Live events from ``WS /jobs/stream`` (envelopes as dicts), until the caller stops."""
        with connect(
            _stream_url(self.url, job_ids, types, statuses, replay),
            additional_headers=self._headers,
        ) as ws:
            while True:
                try:
                    raw = ws.recv()
                except ConnectionClosed as exc:
                    _closed(exc)
                    return
                yield orjson.loads(raw)


class AsyncClient:
    """The same as :class:`Client`, for asyncio code."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30
    ) -> None:
        self.url, self.api_key, headers = _where(url, api_key)
        self._headers = headers
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.url}: {exc}") from exc
        return _result(response)

    async def enqueue_job(
        self, type: str, payload: dict[str, Any] | None = None, **options: Any
    ) -> JobRead:
        body = {
            "type": type,
            "payload": payload or {},
            **{k: v for k, v in options.items() if v is not None},
        }
        return JobRead.model_validate(await self._request("POST", "/jobs", json=body))

    async def get_status(self, job_id: str) -> JobRead:
        return JobRead.model_validate(await self._request("GET", f"/jobs/{job_id}"))

    async def logs_page(
        self, job_id: str, *, limit: int = LOG_PAGE_SIZE, cursor: str | None = None
    ) -> JobLogs:
        params = _log_params(limit, cursor)
        return JobLogs.model_validate(
            await self._request("GET", f"/jobs/{job_id}/logs", params=params)
        )

    async def logs(self, job_id: str, *, page_size: int = LOG_PAGE_SIZE) -> JobLogs:
        """Every line of the job (page after page) and its executions."""
        first = page = await self.logs_page(job_id, limit=page_size)
        while page.next_cursor:
            page = await self.logs_page(job_id, limit=page_size, cursor=page.next_cursor)
            first.lines.extend(page.lines)
            first.executions = page.executions
        first.next_cursor = None
        return first

    async def cancel(self, job_id: str) -> JobRead:
        return JobRead.model_validate(await self._request("PATCH", f"/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str, *, dependents: bool = False) -> JobRead:
        return JobRead.model_validate(
            await self._request("POST", f"/jobs/{job_id}/retry", params={"dependents": dependents})
        )

    async def list_jobs(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[JobRead]:
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": page_size}
        while True:
            page = await self._request("GET", "/jobs", params=params)
            for j in page["items"]:
                yield JobRead.model_validate(j)
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    async def wait(self, job_id: str, timeout: float = 60.0, *, poll: float = 0.2) -> JobRead:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.get_status(job_id)
            if job.status in TERMINAL:
                return job
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g} s")
            await asyncio.sleep(min(poll, left))

    async def stream(
        self, *, job_ids: list[str] | None = None, types: list[str] | None = None,
        statuses: list[str] | None = None, replay: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
        url = _stream_url(self.url, job_ids, types, statuses, replay)
        async with aconnect(url, additional_headers=self._headers) as ws:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    _closed(exc)
                    return
                yield orjson.loads(raw)
