"""``POST /jobs`` in its common form, answered below FastAPI's request machinery.

A submit whose key the replica already knows as a submitter's (before its body and
again after it, when the route would check it), whose body is at most
``MAX_BODY_BYTES`` of JSON that validates as a job without dependencies or an
idempotency key, takes the route's own steps (``routers/jobs.py``: ``submit_fast``)
but not the per-request layers in front of them: routing, dependency solving, the
route's body and telemetry wrappers (0.2-0.4 ms of CPU a request here, a tenth to a
quarter of the API's: docs/performance-history.md).

Everything else goes to the route, with the body if it was read, and the route answers
as it always has: a key not in the cache (looked up there), no key or a refused one
(401), a role below submitter (403), a query string (the route's 422 for unknown
parameters), another content type, a body that does not parse or validate (the
route's 422), dependencies or an idempotency key, a client that left mid-body. So
every refusal is the route's, word for word; this layer answers 201, or, when reading
the body or the submit raises, with the app's handler for that exception (as the
route's exception wrapper would).

It sits inside the rate limit and the body size limit (``app.py``), which see every
request as before.
"""

from __future__ import annotations

import email.message
import inspect
import json
from dataclasses import replace
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.keys import hash_key
from services.api.middleware import KEY_DIGEST, bearer_token
from services.api.routers.jobs import SUBMIT_ROUTE, submit_fast
from shared.auth import Actor
from shared.jobs.submit import can_submit_fast
from shared.schemas import JobCreate

JSON_HEADERS = [(b"content-type", b"application/json")]
# Bodies up to this size (declared in Content-Length) are read here; a longer or chunked
# one goes to the route unread: its FastAPI layers are a small share of its parse, and a
# body read here and handed on would be parsed twice.
MAX_BODY_BYTES = 65_536
UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's words, for the handler


class FastSubmit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = SUBMIT_ROUTE  # what audit rows name the action (``job.submit``)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _plain_submit(scope):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        if state.inserts is None or _known_submitter(state, scope) is None:
            await self.app(scope, receive, send)  # the route looks the key up, or refuses it
            return
        scope["route"] = self.route
        try:
            body, rest = await _receive_body(receive)
        except HTTPException as exc:  # the size limit (413)
            await _handled(scope, receive, send, exc)
            return
        except Exception:  # what the route's body read makes of it (then a 422)
            await _handled(scope, receive, send, HTTPException(400, UNREADABLE_BODY))
            return
        # The route checks the key once the body is in: so does this (a key revoked
        # while a slow body arrived is refused, by the route).
        known = _known_submitter(state, scope)
        spec = _valid_spec(body) if rest is None and known is not None else None
        if known is None or spec is None or not can_submit_fast(spec):
            await self.app(scope, _replay(body, rest, receive), send)
            return
        client = scope.get("client")
        actor = replace(known, client=client[0] if client else None)  # for the audit log
        scope.setdefault("state", {})["actor"] = actor  # request.state.actor, for audit rows
        try:
            answer = await submit_fast(state, spec, actor)
        except Exception as exc:
            await _handled(scope, receive, send, exc)
            return
        await send({
            "type": "http.response.start", "status": 201,
            "headers": [(b"content-length", str(len(answer)).encode()), *JSON_HEADERS],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": answer})


def _plain_submit(scope: Scope) -> bool:
    """``POST /jobs`` with no query string, no mount prefix, a JSON content type and a
    declared length up to ``MAX_BODY_BYTES``."""
    if (
        scope["type"] != "http"
        or scope["method"] != "POST"
        or scope["path"] != "/jobs"
        or scope.get("query_string")
        or scope.get("root_path")
    ):
        return False
    headers = scope["headers"]
    length = next((v for k, v in headers if k == b"content-length"), None)
    if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
        return False
    content_type = next((v for k, v in headers if k == b"content-type"), None)
    if content_type is None:
        return False
    if content_type == b"application/json":
        return True
    # The test the route makes (FastAPI: application/json or application/*+json).
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _known_submitter(state: Any, scope: Scope) -> Actor | None:
    """The caller's key as this replica's cache holds it, when its role is submitter or
    higher; None sends the request to the route (which looks the key up or refuses it)."""
    cache = getattr(state, "key_cache", None)
    token = bearer_token(scope)
    if cache is None or token is None:
        return None
    actor = cache.get(scope.get(KEY_DIGEST) or hash_key(token))
    if actor is None or not actor.has_role("submitter"):
        return None
    return actor


async def _receive_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The request's body, and the message that ended it early (the client left), if one
    did."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body), message
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body), None


def _valid_spec(body: bytes) -> JobCreate | None:
    """The job ``body`` describes, parsed and validated as the route does it (Starlette's
    ``json.loads``, then the model in Python mode: a faster parser reads some bodies
    differently, orjson an integer past 64 bits as a float); None when the route should
    say what is wrong."""
    try:
        data = json.loads(body)
    except Exception:  # whatever the route's parser raises, the route answers
        return None
    if not isinstance(data, dict):
        return None
    try:
        return JobCreate.model_validate(data, from_attributes=True)
    except ValidationError:
        return None


def _replay(body: bytes, rest: Message | None, receive: Receive) -> Receive:
    """``receive`` that hands out the body read here as one message (and the client's
    leaving, if it left before the end), then whatever comes next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": rest is not None}]
    if rest is not None:
        pending.append(rest)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _handled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` with the app's handler for it, as Starlette's exception layer
    would (status handlers first, then by class); re-raised when it has none, for the
    outer layers (``CatchUnexpected``) to answer."""
    handlers = scope["app"].exception_handlers  # 500 and Exception: the outermost layer's
    handler = None
    if isinstance(exc, HTTPException) and exc.status_code != 500:
        handler = handlers.get(exc.status_code)
    if handler is None:
        handler = next(
            (handlers[cls] for cls in type(exc).__mro__
             if cls in handlers and cls is not Exception),
            None,
        )  # fmt: skip
    if handler is None:
        raise exc
    request = Request(scope, receive)
    if inspect.iscoroutinefunction(handler):
        response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    if response is not None:
        await response(scope, receive, send)
