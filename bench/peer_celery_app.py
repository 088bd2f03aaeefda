"""The Celery peer: one no-op task on RabbitMQ, acks late, no result backend.

Worker (started by bench/peers.py)::

    celery -A bench.peer_celery_app worker -P threads -c 8 --without-gossip
           --without-mingle --without-heartbeat

Producer: ``python -m bench.peer_celery_app RUN N`` sends N tasks with ``apply_async``
in a loop and prints, as JSON, when the first send began and the CPU it spent sending.
The queue (and its exchange) is ``PEER_QUEUE``, a name of the bench's own on the
default vhost, deleted by the bench afterwards.
"""

from __future__ import annotations

import os

from celery import Celery

from bench import peer_tally

QUEUE = os.environ.get("PEER_QUEUE", "bench-peer-celery")

app = Celery("bench_peer", broker=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=True,  # acked after the task ran, as Switchyard acks after commit
    task_ignore_result=True,
    result_backend=None,
    # Celery's default (4 x 8 threads = 32 unacked messages in flight per worker).
    worker_prefetch_multiplier=4,
    # Broker-only: no pidbox/event queues beside ours, nothing else to clean up.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(run: str, index: int, total: int) -> None:
    peer_tally.record(run, index, total)


if __name__ == "__main__":
    # app.close: flush and close the producer's pooled connection.
    peer_tally.produce(lambda run, i, n: noop.apply_async(args=(run, i, n)), app.close)
