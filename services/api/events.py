"""Publishing after a commit: best effort, never failing the request that committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from services.api.stream import EventHub
from shared.messages import _Message
from shared.outbox import Outbox

log = logging.getLogger(__name__)


def publish_after_commit(state: Any, messages: Sequence[_Message]) -> None:
    """Publish committed facts (``job.state``, ``job.submitted`` hints, ``job.cancel``).

    The database already holds the truth and the scheduler reconciles from it, so the
    request does not wait for the broker: the outbox publishes in the background, and a
    broker failure is logged with what was not sent (the request has succeeded).

    This replica's own WebSocket clients and metrics get the events at once from its
    hub; its stream consumer drops the broker's copies unread (other replicas read them).
    """
    hub: EventHub | None = getattr(state, "hub", None)
    if hub is not None:
        for message in messages:
            hub.publish_local(message)  # type: ignore[arg-type]
    outbox: Outbox | None = state.outbox
    if outbox is not None:
        outbox.put(messages)
