"""Pure ASGI middleware at the API's door: rate limits, and the body size limit.

``RateLimit`` keeps token buckets (``services/api/buckets.py``) in memory, per API
replica: with N replicas behind a balancer a client may get up to N times the limits.

- per client address, every request (``SWITCHYARD_RATE_LIMIT_ADDRESS_*``);
- per API key, every request that carries it (``SWITCHYARD_RATE_LIMIT_KEY_*``);
- per client address, requests answered 401 (no key, a bad or revoked key:
  ``SWITCHYARD_RATE_LIMIT_UNAUTHENTICATED_*``, tight). While that bucket is empty, the
  address's requests are refused unless they carry a key known to be valid.

A refused request gets 429 with ``Retry-After`` and a message; it reaches no route and
no database (one audit row per limited bucket and minute says how many were refused).
A key the database refused a moment ago is answered 401 here, without asking the
database again (``services/api/keycache.py``).

``BodySizeLimit`` refuses request bodies over ``SWITCHYARD_MAX_BODY_BYTES`` with 413.
The limit is enforced while the body is read (a lying or absent Content-Length does not
help), by raising an HTTPException that the app's handlers turn into a 413 with its
audit row.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.audit import audit_refusal, audit_throttled
from services.api.buckets import TokenBuckets, retry_after_header
from services.api.keys import hash_key
from shared.settings import Settings

INVALID_KEY = "invalid or revoked API key"
# Set in a WebSocket's scope by its route when the handshake's key was refused: the
# handshake then counts against the address as a 401 would.
KEY_REFUSED = "switchyard.key_refused"
# The digest of the request's bearer key, once hashed here (services/api/fast_submit.py).
KEY_DIGEST = "switchyard.key_digest"
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
ACCEPTED_KEYS_KEPT = 50_000


def bearer_token(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer <key>``, if the header is well formed."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class RateLimit:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.by_address = TokenBuckets(
            per_second=settings.rate_limit_address_per_second,
            burst=settings.rate_limit_address_burst,
        )
        self.by_key = TokenBuckets(
            per_second=settings.rate_limit_key_per_second, burst=settings.rate_limit_key_burst
        )
        self.unauthenticated = TokenBuckets(
            per_second=settings.rate_limit_unauthenticated_per_second,
            burst=settings.rate_limit_unauthenticated_burst,
        )
        # Keys that were answered other than 401 lately: they pass while their address
        # is held for refusals (a shared address must not lock out its honest clients).
        # Only a classification: each request is still authenticated as usual.
        self._accepted: OrderedDict[str, None] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        client = scope.get("client")
        address = client[0] if client else "unknown"
        token = bearer_token(scope) if scope["type"] == "http" else websocket_token(scope)
        digest = hash_key(token) if token else None
        scope[KEY_DIGEST] = digest
        cache = getattr(state, "key_cache", None)
        refusal = self._refusal(state, address, digest)
        if refusal is not None:
            bucket, name, wait, actor = refusal
            if bucket == "known":  # a key refused a moment ago: refused from memory
                if scope["type"] == "websocket":
                    await _close_handshake(receive, send, POLICY_VIOLATION, INVALID_KEY)
                else:
                    await self._refuse_known_invalid(scope, send)
                return
            if scope["type"] == "websocket":
                await _close_handshake(receive, send, TRY_AGAIN_LATER, _too_many(bucket, wait))
            else:
                await _answer(
                    send, 429, _too_many(bucket, wait), {"retry-after": retry_after_header(wait)}
                )
            await audit_throttled(
                state, bucket=bucket, name=name, actor=actor, client=address,
                action=f"{scope.get('method', 'WEBSOCKET')} {scope['path']}",
            )  # fmt: skip
            return
        generation = cache.generation if cache is not None else 0
        status: list[int] = []

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send if scope["type"] == "http" else send)
        finally:  # a client that left mid-handshake has had its key looked up all the same
            if scope["type"] == "websocket":
                status.append(401 if scope.get(KEY_REFUSED) else 101)
            self._account(status, address, digest, cache, generation)

    def _account(
        self, status: list[int], address: str, digest: str | None, cache: Any, generation: int
    ) -> None:
        """After the answer: a 401 charges the address's refusal bucket and is
        remembered; any other answer marks its key as accepted lately."""
        if status and status[0] == 401:
            self.unauthenticated.charge(address)
            if digest is not None:
                self.by_key.forget(digest)  # a refused key holds no bucket
                self._accepted.pop(digest, None)
                if cache is not None:
                    cache.remember_refused(digest, generation)
        elif status and digest is not None:
            self._accepted.pop(digest, None)
            self._accepted[digest] = None
            if len(self._accepted) > ACCEPTED_KEYS_KEPT:
                self._accepted.popitem(last=False)

    def _refusal(
        self, state: Any, address: str, digest: str | None
    ) -> tuple[str, str, float, str | None] | None:
        """(bucket, its name, seconds to wait, the key's id if known) of the limit this
        request or handshake is over; ``known`` for a key refused a moment ago."""
        if wait := self.by_address.take(address):
            return "address", address, wait, None
        cache = getattr(state, "key_cache", None)
        if digest is not None and cache is not None and cache.is_refused(digest):
            if wait := self.unauthenticated.take(address):
                return "unauthenticated", address, wait, None
            return "known", address, 0.0, None
        known = cache.get(digest) if digest is not None and cache is not None else None
        key = digest or ("dev" if getattr(state, "open_dev_mode", False) else None)
        if key is not None and (wait := self.by_key.take(key)):
            return "key", key, wait, known.key_id if known is not None else None
        accepted = known is not None or (digest is not None and digest in self._accepted)
        if not accepted and (wait := self.unauthenticated.wait_time(address)):
            return "unauthenticated", address, wait, None
        return None

    async def _refuse_known_invalid(self, scope: Scope, send: Send) -> None:
        await _answer(send, 401, INVALID_KEY, {"www-authenticate": "Bearer"})
        await audit_refusal(Request(scope), 401, INVALID_KEY)


def _too_many(bucket: str, wait: float) -> str:
    what = {
        "address": "requests from your address",
        "key": "requests with this API key",
        "unauthenticated": "requests without a valid API key from your address",
    }[bucket]
    return f"too many {what}: retry after {retry_after_header(wait)} s (the API's rate limit)"


def websocket_token(scope: Scope) -> str | None:
    """The key a WebSocket handshake carries: its ``Authorization`` header (any scheme
    but Bearer is no key), else ``?token=``."""
    for name, value in scope["headers"]:
        if name == b"authorization" and value:
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return dict(query).get("token")  # the last, as Starlette's query_params reads it


async def _close_handshake(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Refuse a WebSocket: accepted, then closed at once with ``code`` and why, as the
    route closes a refused key's with 1008 (design.md); over a rate limit, 1013 (try
    again later)."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})


def close_reason(text: str) -> str:
    """``text`` as a WebSocket close reason: a close frame carries at most 123 bytes of
    UTF-8 (a longer one made the server's close fail: the client saw 1006, no reason)."""
    return text.encode()[:123].decode(errors="ignore")  # never half a character


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = orjson.dumps({"detail": detail})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"request body is larger than the limit of {self.max_bytes} bytes "
            "(SWITCHYARD_MAX_BODY_BYTES); split the request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        declared_too_large = (
            declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        )
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
