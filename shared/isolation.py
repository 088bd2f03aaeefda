"""Applying a batch of messages the database refuses: which one message is to blame
(dead-letter it, apply the rest), or none (hold the whole batch and try it later).

A message is dead-lettered only when it is shown to be the poison one: its error is of
a kind one message's values can cause, the rest of its batch applied, and it still fails
alone after ``APPLY_TRIES`` tries. Any other failure is the database's state, not the
message's (read-only after a failover, a column missing during a migration, privileges
lost, a lock timeout, or a refusal that every message of the batch meets): the batch is
held back whole, unacked, for the caller to try again later; nothing is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from shared.db import exception_chain, is_db_outage, is_transient_conflict
from shared.errors import SwitchyardError

log = logging.getLogger(__name__)

T = TypeVar("T")

# A message whose apply fails while the rest of its batch applied is tried this many
# times on its own before it is dead-lettered (a lost race passes on a second try).
APPLY_TRIES = 3

# SQLSTATE classes one message's values can cause: 22 data exception (a value out of a
# column's range, text the column refuses), 23 integrity constraint violation (a CHECK,
# a foreign key). Every other database error is about the database, not the message.
_VALUE_SQLSTATE_CLASSES = ("22", "23")


class BatchHeldBack(SwitchyardError):
    """Applying a batch failed in a way no single message explains; nothing of it was
    dead-lettered, and the caller keeps it (unacked) to try it again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


def retry_later(exc: BaseException) -> bool:
    """An outage, a deadlock or a serialization failure: the same apply, tried again
    soon, normally succeeds."""
    return is_db_outage(exc) or is_transient_conflict(exc)


def may_be_one_messages_fault(exc: BaseException) -> bool:
    """True when ``exc`` can come from one message's values: a database error of class
    22 or 23, or an error that is not the database's (our code refusing a value)."""
    for current in exception_chain(exc):
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            return sqlstate[:2] in _VALUE_SQLSTATE_CLASSES
    return True


class Backoff:
    """A pause that doubles from ``first`` up to ``most`` until ``reset``."""

    def __init__(self, first: float = 0.5, most: float = 10.0) -> None:
        self.first = first
        self.most = most
        self._next = first

    def next(self) -> float:
        pause, self._next = self._next, min(self._next * 2, self.most)
        return pause

    def reset(self) -> None:
        self._next = self.first


async def apply_isolating(
    items: Sequence[T],
    apply: Callable[[Sequence[T]], Awaitable[None]],
    *,
    dead_letter: Callable[[T, str], Awaitable[None]],
    what: str,
    tries: int = APPLY_TRIES,
) -> int:
    """Apply ``items``; returns how many were dead-lettered.

    An outage, deadlock or serialization failure is raised as it is (the caller keeps
    the batch and tries again soon). A failure one message may cause is narrowed down
    by halving; each message that fails alone while others applied is tried ``tries``
    times alone and dead-lettered with its error. Any other failure, or one that every
    part of the batch meets, raises BatchHeldBack (nothing dead-lettered).

    A batch of n with one poison message costs about 2·log2(n) applies, once. ``apply``
    must be idempotent (a part applied before a later failure is applied again) and
    commit what it applies."""
    refused: list[tuple[T, BaseException]] = []
    try:
        applied = await _apply_halving(items, apply, refused, what)
        if refused and not applied:
            raise BatchHeldBack(refused[0][1]) from refused[0][1]
        dead = 0
        for item, first_error in refused:
            last = await _apply_alone(item, apply, tries, first_error)
            if last is None:
                continue
            reason = f"could not be applied ({tries} tries): {type(last).__name__}: {last}"
            log.error("dead-lettering one of the %s: %s", what, reason)
            await dead_letter(item, reason)
            dead += 1
        return dead
    except BatchHeldBack as exc:
        log.error(
            "%d %s held back (not applied, not dead-lettered; tried again later): %s",
            len(items), what, exc,
        )  # fmt: skip
        raise
    except Exception as exc:
        if retry_later(exc):
            log.warning(
                "%d %s held back (tried again soon): %s: %s",
                len(items), what, type(exc).__name__, exc,
            )  # fmt: skip
        raise


def _blame_or_raise(exc: BaseException) -> None:
    """Return if one message may be to blame for ``exc``; else raise what the caller
    must see (``exc`` itself to retry soon, or BatchHeldBack)."""
    if retry_later(exc):
        raise exc
    if not may_be_one_messages_fault(exc):
        raise BatchHeldBack(exc) from exc


async def _apply_halving(
    items: Sequence[T],
    apply: Callable[[Sequence[T]], Awaitable[None]],
    refused: list[tuple[T, BaseException]],
    what: str,
) -> int:
    """Apply ``items``, halving what fails; returns how many applied, and adds each
    message that failed alone to ``refused``."""
    try:
        await apply(items)
        return len(items)
    except Exception as exc:
        _blame_or_raise(exc)
        if len(items) == 1:
            refused.append((items[0], exc))
            return 0
        log.warning(
            "applying %d %s failed (%s: %s); narrowing it down",
            len(items), what, type(exc).__name__, exc,
        )  # fmt: skip
    half = len(items) // 2
    first = await _apply_halving(items[:half], apply, refused, what)
    return first + await _apply_halving(items[half:], apply, refused, what)


async def _apply_alone(
    item: T,
    apply: Callable[[Sequence[T]], Awaitable[None]],
    tries: int,
    first_error: BaseException,
) -> BaseException | None:
    """Try ``item`` alone up to ``tries`` times in all (one try already failed with
    ``first_error``); None once it applies, else its last error."""
    last = first_error
    for attempt in range(2, tries + 1):
        await asyncio.sleep(0.05 * attempt)
        try:
            await apply([item])
            return None
        except Exception as exc:
            _blame_or_raise(exc)
            last = exc
    return last
