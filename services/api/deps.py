"""FastAPI dependencies as ``Annotated`` aliases: the session, the caller, role checks."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from services.api.keycache import KeyCache
from services.api.keys import hash_key
from shared.auth import Actor
from shared.models import ApiKey
from shared.schemas import ErrorBody


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


# Closed when the route returns, before its answer is sent: a client that does not read
# its answer (a large page, TCP full) must not hold a pooled connection while uvicorn
# waits to write (a few such clients took the whole pool). Routes return plain values,
# never ORM objects to load later.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def resolve_token(state: Any, token: str | None) -> Actor:
    """The actor for ``token`` (None: no key given); raises 401 when it is not valid.

    ``state`` is the app's state (shared by HTTP routes and the WebSocket). The
    database is asked, in a session of its own, only when the key cache does not know
    the key, so that resolving the caller does not make a route depend on a session."""
    if not token:
        if state.open_dev_mode:
            return Actor(key_id="dev", role="admin", label="dev mode")
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hash_key(token)
    cache: KeyCache | None = getattr(state, "key_cache", None)
    if cache is None:
        actor = await _stored_actor(state, digest, None, 0)
    elif (actor := cache.get(digest)) is None:
        # Requests that miss the cache together (an entry expired, a revocation cleared
        # them all) share one lookup of their key; one that comes after a clear does
        # not share a lookup that started before it (the generation is in the key).
        generation = cache.generation
        actor = await cache.lookups.read(
            (digest, generation), lambda: _stored_actor(state, digest, cache, generation)
        )
    if actor is None:
        raise HTTPException(
            401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return actor


async def _stored_actor(
    state: Any, digest: str, cache: KeyCache | None, generation: int
) -> Actor | None:
    """The actor of the valid key whose digest is ``digest`` (remembered in ``cache``
    unless it was cleared since ``generation``), or None. The index lookup compares
    SHA-256 digests, never the key itself; the final check is constant-time all the
    same."""
    async with state.sessionmaker() as session:
        row = (
            await session.execute(
                select(ApiKey.id, ApiKey.role, ApiKey.label, ApiKey.key_hash).where(
                    ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
                )
            )
        ).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    actor = Actor(key_id=str(row.id), role=row.role, label=row.label)
    if cache is not None:
        cache.put(digest, actor, generation)
    return actor


# Declares the scheme in the OpenAPI document (clients and fuzzers see it); the header
# itself is parsed below so that every failure gets our 401 message.
bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


async def current_actor(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Actor:
    header = request.headers.get("authorization")
    token: str | None = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401,
                "malformed Authorization header: use 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = token.strip()
    actor = await resolve_token(request.app.state, token)
    actor = replace(actor, client=request.client.host if request.client else None)
    request.state.actor = actor
    return actor


def authorize(actor: Actor, role: str) -> Actor:
    """``actor`` if its role is ``role`` or higher; else 403."""
    if not actor.has_role(role):
        raise HTTPException(
            403, f"this needs role {role!r} or higher; your key has role {actor.role!r}"
        )
    return actor


def require_role(role: str) -> Callable[..., Coroutine[Any, Any, Actor]]:
    # One dependency that resolves the caller and checks the role (each dependency
    # FastAPI solves costs ~50 µs, on every request of every route).
    async def check(
        request: Request,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
    ) -> Actor:
        return authorize(await current_actor(request), role)

    return check


ViewerDep = Annotated[Actor, Depends(require_role("viewer"))]
SubmitterDep = Annotated[Actor, Depends(require_role("submitter"))]
AdminDep = Annotated[Actor, Depends(require_role("admin"))]


def _declared_query_names(route: Any) -> frozenset[str]:
    names = getattr(route, "_switchyard_query_names", None)
    if names is None:
        found: set[str] = set()
        pending = [route.dependant]
        while pending:  # the route's own parameters and those of its dependencies
            dependant = pending.pop()
            found.update(field.alias for field in dependant.query_params)
            pending.extend(dependant.dependencies)
        names = frozenset(found)
        route._switchyard_query_names = names  # computed once per route
    return names  # type: ignore[no-any-return]


async def reject_unknown_query_params(connection: HTTPConnection) -> None:
    """An app-wide dependency: a query parameter the route does not take is a 422 naming
    it, not silently ignored (``GET /jobs?stauts=failed`` would list every job)."""
    route = connection.scope.get("route")
    if connection.scope["type"] != "http" or not hasattr(route, "dependant"):
        return  # the WebSocket reads its own parameters (routers/stream.py)
    allowed = _declared_query_names(route)
    unknown = [name for name in connection.query_params if name not in allowed]
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no query parameters"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name or "(empty name)"),
                    "msg": f"unknown query parameter; this route takes {takes}",
                    "input": connection.query_params[name],
                }
                for name in unknown
            ]
        )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: each code answers ``{"detail": ...}``."""
    return {code: {"model": ErrorBody} for code in codes}
