"""API keys: created with a role and a label, shown once, stored only as SHA-256.

Only the API reads or writes them (the key cache in ``keycache.py`` listens for
revocations), so they live in the API service, not in ``shared``."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from shared.auth import Actor
from shared.errors import JobNotFound
from shared.models import ApiKey, AuditEntry

KEY_PREFIX = "sy_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    row: ApiKey
    secret: str


async def create_api_key(session: AsyncSession, *, role: str, label: str, actor: Actor) -> NewKey:
    """A new random key (256 bits); the caller shows ``secret`` once and never again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=uuid7(), key_hash=hash_key(secret), role=role, label=label, source="api")
    session.add(row)
    session.add(
        AuditEntry(
            actor=actor.key_id, role=actor.role, action="apikey.create", outcome="ok",
            client=actor.client, detail={"key_id": str(row.id), "role": role, "label": label},
        )
    )  # fmt: skip
    await session.flush()
    await session.refresh(row)
    return NewKey(row=row, secret=secret)


async def list_api_keys(session: AsyncSession, *, include_revoked: bool) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(await session.scalars(stmt))


class KeyNotFound(JobNotFound):
    """No such (unrevoked) key."""


async def revoke_api_key(session: AsyncSession, key_id: UUID, *, actor: Actor) -> datetime:
    """Revoke at once: the next request with that key gets 401."""
    revoked = await session.scalar(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now().astimezone(), revoked_reason="admin")
        .returning(ApiKey.revoked_at)
    )
    if revoked is None:
        raise KeyNotFound(f"no active API key with id {key_id}")
    session.add(
        AuditEntry(
            actor=actor.key_id, role=actor.role, action="apikey.revoke", outcome="ok",
            client=actor.client, detail={"key_id": str(key_id)},
        )
    )  # fmt: skip
    # Every API replica forgets the keys it remembered when this commits
    # (services/api/keycache.py).
    await session.execute(text("SELECT pg_notify('switchyard_api_keys', :id)"), {"id": str(key_id)})
    await session.flush()
    return revoked
