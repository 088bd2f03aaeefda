"""The Dramatiq peer: one no-op actor on RabbitmqBroker, default middleware, no results.

Worker (started by bench/peers.py)::

    dramatiq bench.peer_dramatiq_app --processes 1 --threads 8

Producer: ``python -m bench.peer_dramatiq_app RUN N`` sends N messages with ``send``
in a loop and prints, as JSON, when the first send began and the CPU it spent sending.
The queue is ``PEER_QUEUE`` (Dramatiq adds ``.DQ`` and ``.XQ`` beside it), a name of the
bench's own on the default vhost, deleted by the bench afterwards.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench import peer_tally

QUEUE = os.environ.get("PEER_QUEUE", "bench-peer-dramatiq")

# Dramatiq's defaults: no publisher confirms, prefetch of 2 x threads, its default
# middleware (retries, time and age limits, callbacks, pipelines).
broker = RabbitmqBroker(url=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE)
def noop(run: str, index: int, total: int) -> None:
    peer_tally.record(run, index, total)


if __name__ == "__main__":
    # broker.close: flush and close this thread's connection.
    peer_tally.produce(noop.send, broker.close)
