"""SingleFlight: callers that miss together share one read, its value or its error."""

from __future__ import annotations

import asyncio

import pytest

from shared.single_flight import SingleFlight


class Reads:
    """A read that answers when told to; counts how often it ran."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        return await asyncio.shield(self.answer)


async def callers(
    flight: SingleFlight[str], key: str, read: Reads, n: int
) -> list[asyncio.Task[str]]:
    """``n`` callers of one key; returns once the first read runs and the rest wait."""
    tasks = [asyncio.create_task(flight.read(key, read)) for _ in range(n)]
    await read.started.wait()
    await asyncio.sleep(0)  # the others reach the read under way (no I/O between)
    return tasks


async def test_concurrent_callers_share_one_read_and_later_ones_read_again() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    tasks = await callers(flight, "k", read, 10)
    read.answer.set_result("v")
    assert await asyncio.gather(*tasks) == ["v"] * 10
    assert read.calls == 1
    assert await flight.read("k", read) == "v" and read.calls == 2  # none under way now


async def test_other_keys_are_read_apart() -> None:
    flight: SingleFlight[str] = SingleFlight()
    a, b = Reads(), Reads()
    ta = await callers(flight, "a", a, 3)
    tb = await callers(flight, "b", b, 3)
    a.answer.set_result("A")
    b.answer.set_result("B")
    assert await asyncio.gather(*ta, *tb) == ["A"] * 3 + ["B"] * 3
    assert (a.calls, b.calls) == (1, 1)


async def test_the_readers_error_reaches_every_waiter() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    tasks = await callers(flight, "k", read, 5)
    read.answer.set_exception(ConnectionError("database down"))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    assert read.calls == 1


async def test_a_cancelled_reader_leaves_one_waiter_to_read_for_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    reader, *waiters = await callers(flight, "k", read, 5)
    read.started.clear()
    reader.cancel()  # its client went away: the others still want the answer
    await read.started.wait()  # one of them reads now
    read.answer.set_result("v")
    assert await asyncio.gather(*waiters) == ["v"] * 4
    assert read.calls == 2
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_a_cancelled_waiter_does_not_cancel_the_read() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    reader, waiter, other = await callers(flight, "k", read, 3)
    waiter.cancel()
    await asyncio.sleep(0)
    read.answer.set_result("v")
    assert await asyncio.gather(reader, other) == ["v", "v"]
    assert waiter.cancelled() and read.calls == 1


class Interrupted(BaseException):
    """Not an Exception: what an interrupt does to the reader's task."""


async def test_an_interrupted_reader_leaves_the_waiters_to_read_again() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    reader, *waiters = await callers(flight, "k", read, 3)
    read.started.clear()
    interrupted, read.answer = read.answer, asyncio.get_running_loop().create_future()
    interrupted.set_exception(Interrupted())
    with pytest.raises(Interrupted):
        await reader
    await read.started.wait()  # not handed the interrupt: one of them reads again
    read.answer.set_result("v")
    assert await asyncio.gather(*waiters) == ["v", "v"]
    assert read.calls == 2


async def test_a_waiter_cancelled_with_the_reader_stays_cancelled() -> None:
    flight: SingleFlight[str] = SingleFlight()
    read = Reads()
    reader, waiter, other = await callers(flight, "k", read, 3)
    reader.cancel()
    waiter.cancel()  # in the same turn of the loop: it must not read in its stead
    read.started.clear()
    await read.started.wait()  # the other one reads
    read.answer.set_result("v")
    assert await other == "v"
    assert reader.cancelled() and waiter.cancelled()
    assert read.calls == 2
