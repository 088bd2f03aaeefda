"""One read for every caller that misses a cache at the same moment.

A read-through cache whose entry expires under load is missed by every request in
flight at that moment; each would ask the database the same question at once (and
open connections past the pool's size to do so). ``SingleFlight`` lets the first one
ask and the others await its answer: a value, or the error it raised (the same
exception object, as any future shared by several awaiters hands out). A reader that
was cancelled or interrupted leaves the others to ask again, one of them for the rest.

The key says which answers are interchangeable: a cache that is cleared while a read
is under way (a revoked key) must put its generation in the key, so that a request
that comes after the clear does not get an answer read before it. A ``read`` must not
itself read the same key from the same ``SingleFlight``: it would wait for itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._reads: dict[Hashable, asyncio.Future[T]] = {}

    async def read(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """``await read()``, unless a read of ``key`` is under way: then its outcome."""
        while (underway := self._reads.get(key)) is not None:
            try:
                # shielded: a waiter that is cancelled must not cancel the others' answer
                return await asyncio.shield(underway)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not underway.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller was cancelled, not (only) the reader
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # An error nobody waited for is not "never retrieved": the reader raised it.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._reads[key] = answer
        try:
            value = await read()
        except Exception as exc:
            answer.set_exception(exc)
            raise
        else:
            answer.set_result(value)
            return value
        finally:
            del self._reads[key]
            if not answer.done():
                answer.cancel()  # cancelled or interrupted: the waiters read themselves
