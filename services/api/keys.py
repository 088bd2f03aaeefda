"""API keys: created with a role and a label, shown once, stored only as SHA-256.

Only the API reads or writes them (the key cache in ``keycache.py`` listens for
revocations), so they live in the API service, not in ``shared``."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import case, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.errors import JobConflict, JobNotFound
from shared.ids import uuid7
from shared.models import ApiKey, AuditEntry
from shared.settings import ROLES

KEY_PREFIX = "sy_"
DEFAULT_KEY_SET = "default"


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


class LastAdminKey(JobConflict):
    """Revoking it would leave no active admin key."""


async def revoke_api_key(session: AsyncSession, key_id: UUID, *, actor: Actor) -> datetime:
    """Revoke at once: the next request with that key gets 401. Never the last active
    admin key: nobody could then manage keys but by hand in the database."""
    admins = list(await session.scalars(  # locked: two admins revoking each other at once
        select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.id).with_for_update()
    ))  # fmt: skip
    if admins == [key_id]:
        raise LastAdminKey(
            "this is the last active admin key: create another admin key first "
            "(POST /api-keys), then revoke this one"
        )
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


def env_key_label(key_set: str, role: str) -> str:
    """The label of a key ``SWITCHYARD_API_KEYS`` created: it marks which configuration
    (key set) created the key, the only one that may later revoke it. Set names have no
    ``:``, so no set's labels look like another's."""
    return f"env:{role}" if key_set == DEFAULT_KEY_SET else f"env:{key_set}:{role}"


async def bootstrap_api_keys(
    session: AsyncSession, keys: dict[str, str], *, key_set: str, revoke_unlisted: bool
) -> None:
    """Store the ``SWITCHYARD_API_KEYS`` keys (hashed) of ``key_set`` (caller commits).

    With ``revoke_unlisted``, the env keys this set created and no longer lists are
    revoked; nothing else ever is: not API-created keys, not another set's keys. An empty
    list is no configuration and changes nothing (a process started without the
    variable must not lock every client out).
    """
    if not keys:
        return
    hashes = {hash_key(k): role for k, role in keys.items()}
    for key_hash, role in hashes.items():
        stmt = insert(ApiKey).values(
            id=uuid7(), key_hash=key_hash, role=role, label=env_key_label(key_set, role),
            source="env",
        )  # fmt: skip
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[ApiKey.key_hash],
                # The label (which set created the key) is kept. A key an admin revoked
                # stays revoked; one revoked because it had left its list comes back.
                set_={
                    "role": role,
                    "source": "env",
                    "revoked_at": case(
                        (ApiKey.revoked_reason == "env-removed", None), else_=ApiKey.revoked_at
                    ),
                    "revoked_reason": case(
                        (ApiKey.revoked_reason == "env-removed", None),
                        else_=ApiKey.revoked_reason,
                    ),
                },
            )
        )
    if revoke_unlisted:
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.source == "env",
                ApiKey.label.in_([env_key_label(key_set, role) for role in ROLES]),
                ApiKey.revoked_at.is_(None),
                ApiKey.key_hash.not_in(list(hashes)),
            )
            .values(revoked_at=func.now(), revoked_reason="env-removed")
        )
    # Roles and revocations may have changed: running replicas forget what they
    # remembered (services/api/keycache.py).
    await session.execute(text("SELECT pg_notify('switchyard_api_keys', 'env')"))


async def count_usable_keys(session: AsyncSession) -> int:
    """Keys that are not revoked (env and API-created)."""
    count = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
    return int(await session.scalar(count) or 0)
