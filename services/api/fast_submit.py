"""``POST /jobs`` in its common form, answered below FastAPI's request machinery.

A submit whose key the replica already knows as a submitter's, whose body is JSON that
validates as a job without dependencies or an idempotency key, takes the route's own
steps (``routers/jobs.py``: ``submit_fast``), but not the per-request layers in front
of it: routing, dependency solving, the route's body and telemetry wrappers (about a
third of the API's CPU for such a request: docs/performance-history.md).

Everything else goes to the route with the body already read, and the route answers as
it always has: a key not in the cache (looked up there), no key or a refused one (401),
a role below submitter (403), a query string (the route's 422 for unknown parameters),
a content type other than JSON, a body that does not parse or validate (the route's
422), dependencies or an idempotency key. So every refusal is the route's, word for
word; this layer only ever answers 201 — or, when the submit itself raises, the app's
handler for that exception (as the route's exception wrapper would).

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


class FastSubmit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = SUBMIT_ROUTE  # what audit rows name the action (``job.submit``)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _plain_submit(scope):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        actor = _known_submitter(state, scope)
        if actor is None or state.inserts is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        try:
            received = await _receive_body(receive)  # the size limit raises here (413)
        except Exception as exc:
            await _handled(scope, receive, send, exc)
            return
        spec = _valid_spec(received)
        if spec is None or not can_submit_fast(spec):
            await self.app(scope, _replay(received, receive), send)
            return
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
    """``POST /jobs`` with no query string, no mount prefix, a JSON content type."""
    if (
        scope["type"] != "http"
        or scope["method"] != "POST"
        or scope["path"] != "/jobs"
        or scope.get("query_string")
        or scope.get("root_path")
    ):
        return False
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
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
    """The caller, when its key is in this replica's cache with role submitter or
    higher; None sends the request to the route (which looks the key up or refuses it)."""
    cache = getattr(state, "key_cache", None)
    token = bearer_token(scope)
    if cache is None or token is None:
        return None
    actor = cache.get(scope.get(KEY_DIGEST) or hash_key(token))
    if actor is None or not actor.has_role("submitter"):
        return None
    client = scope.get("client")
    return replace(actor, client=client[0] if client else None)


async def _receive_body(receive: Receive) -> list[Message]:
    """The request's messages up to its last body part, or up to the client leaving."""
    received = []
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return received


def _valid_spec(received: list[Message]) -> JobCreate | None:
    """The job the request's body describes, parsed and validated as the route does it
    (Starlette's ``json.loads``, then the model in Python mode: a faster parser reads
    some bodies differently, orjson an integer past 64 bits as a float); None when the
    route should say what is wrong, or the client left before the body's end."""
    if received[-1]["type"] != "http.request":
        return None  # the route sees the client leave, as it would have
    try:
        data = json.loads(b"".join(m.get("body", b"") for m in received))
    except Exception:  # whatever the route's parser raises, the route answers
        return None
    if not isinstance(data, dict):
        return None
    try:
        return JobCreate.model_validate(data, from_attributes=True)
    except ValidationError:
        return None


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that hands out the messages already read here, then the rest."""
    pending = list(received)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _handled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` with the app's handler for it, as Starlette's exception layer
    would (status handlers first, then by class); re-raised when it has none, for the
    outer layers (``CatchUnexpected``) to answer."""
    handlers = scope["app"].exception_handlers
    handler = None
    if isinstance(exc, HTTPException):
        handler = handlers.get(exc.status_code)
    if handler is None:
        handler = next(
            (handlers[cls] for cls in type(exc).__mro__
             if cls in handlers and cls is not Exception),
            None,
        )  # fmt: skip
    if handler is None:
        raise exc
    response = handler(Request(scope, receive), exc)
    if inspect.isawaitable(response):
        response = await response
    if response is not None:
        await response(scope, receive, send)
