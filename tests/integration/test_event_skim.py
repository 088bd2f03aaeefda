"""The API replica's event intake (``EventHub``) with no WebSocket client connected:
another replica's state events reach the counters from their summaries, a progress
update is not read at all, a body the summary refuses is decoded whole as before; with
a client connected every event is decoded whole and handed to it."""

from __future__ import annotations

import uuid

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.api.metrics import Metrics
from services.api.stream import EventHub, StreamFilter
from shared.broker import Broker
from shared.messages import Batch, JobProgress, JobStateChanged, encode
from shared.settings import Settings
from tests.conftest import wait_for


def completed(job_type: str = "demo.echo") -> JobStateChanged:
    return JobStateChanged(
        job_id=uuid.uuid4(), type=job_type, old_status="running", new_status="completed",
        attempt=1, worker_id="w-1", reason="completed", duration_seconds=0.5,
    )  # fmt: skip


def finished(metrics: Metrics, job_type: str) -> float:
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "switchyard_jobs_finished_total" and s.labels == {
                "type": job_type,
                "outcome": "completed",
            }:
                return float(s.value)
    return 0.0


async def test_counters_without_clients_and_whole_events_for_clients(settings: Settings) -> None:
    ns = settings.namespace
    async with (
        Broker(settings.amqp_url, ns, name="api") as api,
        Broker(settings.amqp_url, ns, name="scheduler") as other,
    ):
        hub = EventHub(api, buffer_size=100)
        metrics = Metrics()
        heard: list[object] = []
        hub.listeners += [metrics.observe, heard.append]
        await hub.start()

        # No client. A batch one item of which the summary refuses (its type is too
        # long): decoded whole, its good items counted, as before; then a progress
        # update (not read) and one more event (from its summary).
        items = [orjson.loads(encode(completed("skim.a"))) for _ in range(3)]
        items[1]["type"] = "x" * 1001
        batch = {"v": 1, "kind": "batch", "of": "job.state", "items": items}
        await other.publish_body(orjson.dumps(batch), "job.state.batch")
        job = uuid.uuid4()
        await other.publish_many([(JobProgress(job_id=job, attempt=1, done=1, total=2), None)])
        await other.publish_many([(Batch(of="job.state", items=[completed("skim.a")] * 2), None)])

        async def counted(n: float, job_type: str = "skim.a") -> bool:
            return finished(metrics, job_type) == n

        await wait_for(lambda: counted(4), what="2 of the first batch and 2 of the second")
        assert not any(isinstance(m, JobProgress) for m in heard)
        assert any(isinstance(m, JobStateChanged) for m in heard)  # the whole decode's
        assert any(type(m).__name__ == "StateSummary" for m in heard)  # the summaries'

        # A client: whole events, handed to it and to the counters.
        client = hub.subscribe(StreamFilter())
        await other.publish_many([(JobProgress(job_id=job, attempt=1, done=2, total=2), None)])
        await other.publish_many([(completed("skim.b"), None)])
        await wait_for(lambda: counted(1, "skim.b"), what="the event counted with a client")

        async def both_sent() -> bool:
            return {e["event"] for e, _ in client.buffer} == {"progress", "state"}

        await wait_for(both_sent, what="the client receives the progress and the state event")
        hub.unsubscribe(client)


async def test_skim_only_for_queues_whose_messages_are_not_settled(settings: Settings) -> None:
    async with Broker(settings.amqp_url, settings.namespace, name="api") as broker:

        async def handler(delivery: object) -> None:
            return None

        with pytest.raises(ValueError, match="no_ack"):
            await broker.consume(
                f"{settings.namespace}.skim", ["job.state.#"], handler,  # type: ignore[arg-type]
                skim=lambda body, key: True,
            )  # fmt: skip
