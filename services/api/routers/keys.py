"""``/api-keys`` (admin): create (the secret is shown once), list, revoke; and
``/api-keys/me`` (any key): which key this is."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response

from services.api.deps import AdminDep, SessionDep, ViewerDep, error_responses
from services.api.keys import create_api_key, list_api_keys, revoke_api_key
from shared.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead, KeyIdentity

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.post(
    "", name="apikey.create", status_code=201, response_model=ApiKeyCreated,
    responses=error_responses(401, 403, 413, 422, 503),
)  # fmt: skip
async def create_key(body: ApiKeyCreate, session: SessionDep, actor: AdminDep) -> ApiKeyCreated:
    """Create a key with a role and a label. Its secret is in this answer only."""
    new = await create_api_key(session, role=body.role, label=body.label, actor=actor)
    await session.commit()
    return ApiKeyCreated(
        **ApiKeyRead.model_validate(new.row, from_attributes=True).model_dump(), key=new.secret
    )


@router.get(
    "/me", name="apikeys.me", response_model=KeyIdentity,
    responses=error_responses(401, 403, 503),
)  # fmt: skip
async def who_am_i(actor: ViewerDep) -> KeyIdentity:
    """The key this request was made with: its id (what ``created_by`` holds on the jobs
    it submits), role and label. Any valid key may ask; the secret is never returned."""
    return KeyIdentity(id=actor.key_id, role=actor.role, label=actor.label)


@router.get(
    "",
    name="apikeys.list",
    response_model=list[ApiKeyRead],
    responses=error_responses(401, 403, 422, 503),
)
async def list_keys(
    session: SessionDep, actor: AdminDep, include_revoked: Annotated[bool, Query()] = False
) -> list[ApiKeyRead]:
    """Keys without their secrets."""
    rows = await list_api_keys(session, include_revoked=include_revoked)
    return [ApiKeyRead.model_validate(r, from_attributes=True) for r in rows]


@router.delete(
    "/{key_id}", name="apikey.revoke", status_code=204, response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)  # fmt: skip
async def revoke_key(
    key_id: UUID, request: Request, session: SessionDep, actor: AdminDep
) -> Response:
    """Revoke at once: the next request with that key gets 401."""
    await revoke_api_key(session, key_id, actor=actor)
    await session.commit()
    if (cache := getattr(request.app.state, "key_cache", None)) is not None:
        cache.clear()  # here at once; other replicas on the NOTIFY
    return Response(status_code=204)
