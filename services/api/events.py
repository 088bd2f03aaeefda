"""Publishing after a commit: best effort, never failing the request that committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.errors import BrokerUnavailable
from shared.messages import _Message
from shared.messaging import Broker

log = logging.getLogger(__name__)


async def publish_after_commit(broker: Broker | None, messages: Sequence[_Message]) -> None:
    """Publish committed facts (``job.state``, ``job.submitted`` hints, ``job.cancel``).

    The database already holds the truth and the scheduler reconciles from it, so a
    broker failure here is logged with what was not sent, and the request still succeeds.
    """
    if not messages or broker is None:
        return
    try:
        await broker.publish_many([(m, None) for m in messages])
    except BrokerUnavailable as exc:
        log.warning(
            "committed, but %d message(s) were not published (%s); the scheduler "
            "reconciles from the database",
            len(messages),
            exc,
        )
