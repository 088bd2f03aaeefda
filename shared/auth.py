"""Who makes a request: the actor and its role, as every service sees it."""

from __future__ import annotations

from dataclasses import dataclass

# A role may do what every role ranked below it may do.
ROLE_RANK = {"viewer": 0, "submitter": 1, "admin": 2}


@dataclass(frozen=True)
class Actor:
    """Who makes a request: an API key's id and role (``dev`` in dev mode)."""

    key_id: str
    role: str
    label: str | None = None
    client: str | None = None  # the caller's address, for the audit log

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]
