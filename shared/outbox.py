"""The outbox: committed messages published in order by one background task, so the
code that committed does not wait for the broker (one class for the API, the scheduler
and the worker; what a failed publish does is a parameter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from shared.broker import Broker
from shared.errors import BrokerUnavailable
from shared.messages import _Message

log = logging.getLogger(__name__)


class Weighed(Protocol):
    """A queue whose messages are on their way to the outbox."""

    @property
    def weight(self) -> int: ...


class Outbox:
    """Messages published in order by one background task: the caller does not wait
    for the broker's confirm (it costs a round trip per request, cycle or report).

    What a failed publish does depends on whether anything else holds the messages:

    * ``retry=False``, for notifications the database can stand in for (state events,
      wake-up hints, cancels the scheduler re-sends): the chunk is logged with its
      count and dropped, as an awaited publish that failed would have been; beyond
      ``max_pending`` waiting messages ``put`` refuses (with a log line), so a long
      outage cannot exhaust memory.
    * ``retry=True``, for a worker's reports, log lines and progress (they exist nowhere
      else until their consumer has stored them): the chunk is published again, with a
      growing pause, until the broker confirms it, and nothing put after it goes first;
      ``put`` never refuses. A chunk that was partly confirmed goes again whole (every
      consumer is idempotent).

    With ``weigh``, ``wait_for_room`` holds back a producer thread while the messages
    waiting, here and on their way here (``count_upstream``), weigh more than
    ``max_weight``: a task that logs faster than the broker takes its lines waits for
    them, rather than let them pile up in memory and delay what is put after them (a
    worker's heartbeat) without bound.

    Either way one message never stops the outbox, nor is it dropped unseen: a message
    no retry can publish (too large, not encodable) is logged and dead-lettered by
    ``Broker.publish_many`` and the rest go on; an error that is not the broker's (a
    bug) makes the chunk go one message at a time, and a message that still fails alone
    is logged and dead-lettered with that error (its body, or its repr), so what is
    behind it (a worker's heartbeats) is never held up by it. With ``retry`` such a
    message is kept until its dead letter is confirmed.
    """

    RETRY_FIRST_PAUSE = 0.2
    RETRY_MAX_PAUSE = 5.0
    # How often a thread held back looks again without being told: a publish and the
    # outbox's end tell it; upstream news dropped rather than put does not.
    ROOM_POLL_SECONDS = 0.5

    def __init__(
        self,
        broker: Broker,
        *,
        max_pending: int = 200_000,
        linger: float = 0.0,
        retry: bool = False,
        chunk: int = 5_000,
        compact: Callable[[list[_Message]], list[_Message]] | None = None,
        weigh: Callable[[_Message], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        self._broker = broker
        # Messages per publish; with ``retry`` a partly confirmed chunk goes again whole,
        # so its size bounds the duplicates one failure can cause.
        self._chunk = chunk
        self._max_pending = max_pending
        # Seconds to let more messages gather after the first of a quiet moment: what
        # comes meanwhile travels in the same batch body (one publish and one delivery
        # per consumer instead of one per message).
        self._linger = linger
        self._retry = retry
        # Rewrites a chunk before its first publish (fewer messages that say the same).
        self._compact = compact
        self._weigh = weigh
        self._max_weight = max_weight
        # What the messages put and not yet published weigh: changed on the loop only,
        # read by the threads ``wait_for_room`` holds back.
        self.weight = 0
        self._upstream: list[Weighed] = []
        self._room = threading.Condition()
        self._loop_thread: int | None = None
        self._pending: list[_Message] = []
        self._sending: list[_Message] = []
        self._wake = asyncio.Event()
        # The linger's end: its timer, or ``hurry`` (nothing more is coming soon).
        self._linger_over = asyncio.Event()
        self._hurried = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._run(), name="outbox")
        self._task.add_done_callback(lambda _: self._let_go())  # closed, or died of a bug
        return self._task

    def count_upstream(self, queue: Weighed) -> None:
        """Count what waits in ``queue`` (messages on their way to ``put``) as unsent:
        the producers that fill it from other threads would otherwise outrun the loop."""
        self._upstream.append(queue)

    def unsent(self) -> int:
        """What the messages not yet published weigh, here and upstream."""
        return self.weight + sum(queue.weight for queue in self._upstream)

    def wait_for_room(self, give_up: Callable[[], bool] | None = None) -> None:
        """Block the calling thread while what waits to be published (``unsent``)
        weighs more than ``max_weight``, or until ``give_up()``, looked at every
        ``ROOM_POLL_SECONDS``, says to stop waiting. At once while the outbox does not
        run (not started, closed, or died: nothing would make room) and on the event
        loop's own thread (it is the one that makes room).

        The budget is soft: each thread let go puts its next message before it looks
        again, and one message heavier than the budget still goes."""
        if self._weigh is None or self.unsent() <= self._max_weight:
            return
        if threading.get_ident() == self._loop_thread:
            return
        with self._room:
            while self.unsent() > self._max_weight and self._running():
                if give_up is not None and give_up():
                    return
                self._room.wait(timeout=self.ROOM_POLL_SECONDS)

    def _running(self) -> bool:
        task = self._task
        return task is not None and not task.done()

    def put(self, messages: Sequence[_Message]) -> None:
        if not messages:
            return
        if not self._retry and len(self._pending) + len(messages) > self._max_pending:
            log.warning(
                "outbox full (%d waiting: the broker is down or slow); %d message(s) not published",
                len(self._pending),
                len(messages),
            )
            return
        self._pending.extend(messages)
        if self._weigh is not None:
            self.weight += sum(map(self._weigh, messages))
        self._idle.clear()
        self._wake.set()

    def hurry(self) -> None:
        """What waits goes now, without the rest of the linger: the producer knows that
        nothing more will come soon to travel with it. With nothing waiting, nothing
        changes (the next put lingers as usual)."""
        if not self._pending:
            return
        self._hurried = True
        self._linger_over.set()

    def waiting(self) -> int:
        """Messages put and not yet taken to be published."""
        return len(self._pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self._linger > 0 and not self._hurried:
                self._linger_over.clear()
                timer = loop.call_later(self._linger, self._linger_over.set)
                try:
                    await self._linger_over.wait()
                finally:
                    timer.cancel()
            self._hurried = False
            self._wake.clear()
            while self._pending:
                self._sending = self._pending[: self._chunk]
                del self._pending[: len(self._sending)]
                published = self._sending
                self._sending = self._compacted(self._sending)
                await self._publish(self._sending)
                self._sending = []
                if self._weigh is not None:
                    self._lighter(sum(map(self._weigh, published)))
            self._idle.set()

    def _lighter(self, weight: int) -> None:
        self.weight -= weight
        if self.unsent() <= self._max_weight:
            self._let_go()

    def _let_go(self) -> None:
        """Wake the threads held back, to look again."""
        with self._room:
            self._room.notify_all()

    def _compacted(self, chunk: list[_Message]) -> list[_Message]:
        if self._compact is None:
            return chunk
        try:
            return self._compact(chunk)
        except Exception:  # a bug: the chunk goes as it was rather than stop the outbox
            log.exception("compacting %d message(s) failed; publishing them as they are",
                          len(chunk))  # fmt: skip
            return chunk

    async def _publish(self, chunk: list[_Message]) -> None:
        """Publish ``chunk`` once, or with ``retry`` until the broker confirms it."""
        pause = self.RETRY_FIRST_PAUSE
        while True:
            try:
                await self._broker.publish_many([(m, None) for m in chunk])
                return
            except BrokerUnavailable as exc:
                if not self._retry:
                    log.warning("%d message(s) not published: %s", len(chunk), exc)
                    return
                log.warning(
                    "publishing %d message(s) failed (%s); retrying in %.1f s",
                    len(chunk),
                    exc,
                    pause,
                )
            except Exception:
                log.exception("publishing %d message(s) failed; trying them one by one", len(chunk))
                chunk = await self._publish_alone(chunk)
                if not chunk:
                    return
                continue
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.RETRY_MAX_PAUSE)

    async def _publish_alone(self, chunk: list[_Message]) -> list[_Message]:
        """Publish each message of ``chunk`` on its own: one that raises (not the broker's
        fault) is logged and dead-lettered; returns what the broker did not take (to
        retry), and a message whose dead letter it did not confirm."""
        left: list[_Message] = []
        for message in chunk:
            try:
                await self._broker.publish_many([(message, None)])
            except BrokerUnavailable:
                left.append(message)
            except Exception as exc:
                log.exception(
                    "dead-lettering a %s message (job %s) that cannot be published",
                    getattr(message, "kind", type(message).__name__),
                    getattr(message, "job_id", "-"),
                )
                reason = f"unpublishable: {type(exc).__name__}: {exc}"
                try:
                    await self._broker.dead_letter_message(message, reason=reason, queue=None)
                except BrokerUnavailable:
                    left.append(message)
        return left if self._retry else []

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout``) until everything put so far is published."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Flush (at most ``timeout``), then stop; what is still unpublished is logged."""
        await self.flush(timeout)
        unsent = len(self._pending) + len(self._sending)
        if unsent:
            log.warning("outbox closed before %d message(s) were confirmed", unsent)
        task, self._task = self._task, None
        self._let_go()  # nothing will make room now
        if task is not None:
            task.cancel()
            # Not awaited directly: a task that died of an error would raise it again
            # here, and its owner has already been told (see the class docstring).
            await asyncio.wait([task])
