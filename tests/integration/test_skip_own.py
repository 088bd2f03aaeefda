"""``consume(skip_own=True)``: a process's own messages are dropped unread by its
consumer (the API hands its events to its hub directly); everyone else's arrive, and
other processes still receive this one's."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from shared.broker import Broker, Consumer, Delivery
from shared.messages import JobCancel
from shared.settings import Settings
from tests.conftest import wait_for


async def test_own_messages_skipped_others_delivered(settings: Settings) -> None:
    ns = settings.namespace
    async with (
        Broker(settings.amqp_url, ns, name="replica-a") as a,
        Broker(settings.amqp_url, ns, name="replica-b") as b,
    ):
        assert a.instance_id != b.instance_id
        seen: dict[str, list[uuid.UUID]] = {"a": [], "b": []}

        def collector(who: str) -> Callable[[Delivery], Awaitable[None]]:
            async def on(delivery: Delivery) -> None:
                seen[who].extend(m.job_id for m in delivery.messages if isinstance(m, JobCancel))

            return on

        async def consume(broker: Broker, who: str) -> Consumer:
            return await broker.consume(
                f"{ns}.skip-{who}", ["job.cancel.#"], collector(who),
                no_ack=True, skip_own=True, auto_delete=True,
            )  # fmt: skip

        ca, cb = await consume(a, "a"), await consume(b, "b")
        from_a = [uuid.uuid4() for _ in range(3)]
        from_b = [uuid.uuid4() for _ in range(2)]
        await a.publish_many([(JobCancel(job_id=j, attempt=1), None) for j in from_a])
        await b.publish_many([(JobCancel(job_id=j, attempt=1), None) for j in from_b])

        async def b_has_all() -> bool:
            return len(seen["b"]) >= len(from_a)

        async def a_has_all() -> bool:
            return len(seen["a"]) >= len(from_b)

        await wait_for(b_has_all, timeout=10, what="replica b receives replica a's messages")
        await wait_for(a_has_all, timeout=10, what="replica a receives replica b's messages")
        # a's own messages went into its queue before b's (one queue, in order): had
        # they not been skipped, they would have reached a's handler before b's.
        assert sorted(seen["a"]) == sorted(from_b)
        assert sorted(seen["b"]) == sorted(from_a)
        await ca.close()
        await cb.close()
        await a.delete_namespace()
