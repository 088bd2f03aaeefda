"""``ToLoop`` (services/worker/runner.py): what task threads and a child's reader hand
to the worker's event loop runs there, in order, at one wake-up of the loop per burst;
a run takes only what was queued when it began; a callback that raises does not cost
the others their turn."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from services.worker.runner import ToLoop

Items = list[tuple[Any, tuple[Any, ...]]]


def post_from_a_thread(to_loop: ToLoop, items: Items) -> None:
    """Post ``items`` from another thread, and wait for it here (the loop does not run
    meanwhile: every post of the burst is in before the loop wakes). A post that raises
    fails the test."""
    raised: list[BaseException] = []

    def post_all() -> None:
        try:
            for callback, args in items:
                to_loop.post(callback, *args)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=post_all)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert raised == []


async def burst(to_loop: ToLoop, items: Items) -> None:
    """Post ``items`` and a last one that says they have all run; wait for it."""
    done = asyncio.Event()
    post_from_a_thread(to_loop, [*items, (done.set, ())])
    await asyncio.wait_for(done.wait(), timeout=5)


async def test_a_burst_wakes_the_loop_once_and_runs_in_order() -> None:
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wakes.append(callback)
        return real(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:
        to_loop = ToLoop(loop)
        seen: list[int] = []
        await burst(to_loop, [(seen.append, (i,)) for i in range(100)])
        assert seen == list(range(100))
        assert len(wakes) == 1
        # The next burst wakes the loop again (the first run has ended).
        await burst(to_loop, [(seen.append, (i,)) for i in range(100, 110)])
        assert seen == list(range(110)) and len(wakes) == 2
    finally:
        del loop.call_soon_threadsafe


async def test_a_failing_callback_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    to_loop = ToLoop(asyncio.get_running_loop())
    seen: list[str] = []

    def boom() -> None:
        raise ValueError("bad news")

    await burst(to_loop, [(seen.append, ("a",)), (boom, ()), (seen.append, ("b",))])
    assert seen == ["a", "b"]
    assert "from a thread failed" in caplog.text and "bad news" in caplog.text
    await burst(to_loop, [(seen.append, ("c",))])  # and the next burst still wakes it
    assert seen == ["a", "b", "c"]


async def test_what_comes_during_a_run_waits_for_the_next_turn() -> None:
    """A run takes only what was queued when it began: news that keeps coming (a task
    logging in a tight loop) cannot keep the loop from its own callbacks, timers and
    sockets (the heartbeat, the outbox)."""
    loop = asyncio.get_running_loop()
    to_loop = ToLoop(loop)
    order: list[str] = []
    done = asyncio.Event()

    def first() -> None:
        order.append("first")
        loop.call_soon(order.append, "the loop's own turn")
        to_loop.post(order.append, "posted during the run")  # as a busy thread would
        to_loop.post(done.set)

    post_from_a_thread(to_loop, [(first, ())])
    await asyncio.wait_for(done.wait(), timeout=5)
    assert order == ["first", "the loop's own turn", "posted during the run"]


def test_posts_after_the_loop_closed_are_dropped_without_an_error() -> None:
    """The worker has exited: its threads' last news has nobody to go to, and posting
    it must not raise in a task's thread."""
    loop = asyncio.new_event_loop()
    to_loop = ToLoop(loop)
    loop.close()
    post_from_a_thread(to_loop, [(print, ("never",)), (print, ("never",))])


async def test_the_weight_of_queued_news_is_counted_until_the_loop_takes_it() -> None:
    """A log line on its way to the outbox is still unsent: the outbox counts what the
    queue holds (``Outbox.count_upstream``), from the post until the loop runs it,
    whatever the callback does with it."""
    loop = asyncio.get_running_loop()
    to_loop = ToLoop(loop)
    weights: list[int] = []

    def boom() -> None:
        raise ValueError("dropped news still leaves the queue")

    def post_all() -> None:
        to_loop.post(weights.append, 0, weight=100)
        to_loop.post(boom, weight=50)
        to_loop.post(lambda: weights.append(to_loop.weight))  # weighs nothing itself
        weights.append(to_loop.weight)

    thread = threading.Thread(target=post_all)
    thread.start()
    thread.join(timeout=10)
    assert weights == [150]  # all three queued, the loop has not run yet
    done = asyncio.Event()
    to_loop.post(done.set)
    await asyncio.wait_for(done.wait(), timeout=5)
    assert weights == [150, 0, 0]
    assert to_loop.weight == 0
