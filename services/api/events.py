"""Publishing after a commit: best effort, never failing the request that committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.messages import _Message
from shared.messaging import Outbox

log = logging.getLogger(__name__)


def publish_after_commit(outbox: Outbox | None, messages: Sequence[_Message]) -> None:
    """Publish committed facts (``job.state``, ``job.submitted`` hints, ``job.cancel``).

    The database already holds the truth and the scheduler reconciles from it, so the
    request does not wait for the broker: the outbox publishes in the background, and a
    broker failure is logged with what was not sent (the request has succeeded).
    """
    if outbox is not None:
        outbox.put(messages)
