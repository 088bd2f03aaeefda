"""``ToLoop`` (services/worker/runner.py): what task threads and a child's reader hand
to the worker's event loop runs there, in order, at one wake-up of the loop per burst;
a callback that raises does not cost the others their turn."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from services.worker.runner import ToLoop


def post_from_a_thread(to_loop: ToLoop, items: list[tuple[Any, tuple[Any, ...]]]) -> None:
    """Post ``items`` from another thread, and wait for it here (the loop does not run
    meanwhile: every post of the burst is in before the loop wakes)."""
    thread = threading.Thread(target=lambda: [to_loop.post(cb, *args) for cb, args in items])
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_burst_wakes_the_loop_once_and_runs_in_order() -> None:
    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        wakes.append(callback)
        return real(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        to_loop = ToLoop(loop)
        seen: list[int] = []
        post_from_a_thread(to_loop, [(seen.append, (i,)) for i in range(100)])
        await until(lambda: len(seen) == 100)
        assert seen == list(range(100))
        assert len(wakes) == 1
        # The next burst wakes the loop again (the first run has ended).
        post_from_a_thread(to_loop, [(seen.append, (i,)) for i in range(100, 110)])
        await until(lambda: len(seen) == 110)
        assert seen == list(range(110)) and len(wakes) == 2
    finally:
        del loop.call_soon_threadsafe


async def test_a_failing_callback_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    to_loop = ToLoop(asyncio.get_running_loop())
    seen: list[str] = []

    def boom() -> None:
        raise ValueError("bad news")

    post_from_a_thread(to_loop, [(seen.append, ("a",)), (boom, ()), (seen.append, ("b",))])
    await until(lambda: len(seen) == 2)
    assert seen == ["a", "b"]
    assert "from a thread failed" in caplog.text and "bad news" in caplog.text
    post_from_a_thread(to_loop, [(seen.append, ("c",))])  # and the next burst still wakes it
    await until(lambda: len(seen) == 3)


def test_posts_after_the_loop_closed_are_dropped() -> None:
    loop = asyncio.new_event_loop()
    to_loop = ToLoop(loop)
    loop.close()
    seen: list[int] = []
    post_from_a_thread(to_loop, [(seen.append, (1,))])  # no error in the thread
    assert seen == []
