"""What an API replica's counters read of a ``job.state`` body when no WebSocket client
is connected (``services.api.stream.EventHub``): a few fields of each event, without
decoding it whole (docs/performance-history.md, "Issue 22, eighth session")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import DecodeError
from shared.messages import (
    MAX_BATCH_ITEMS,
    MAX_MESSAGE_BYTES,
    Name,
    Real,
    validation_summary,
)


class StateSummary(BaseModel):
    """What a counter reads of a ``job.state`` event (its type, statuses and times),
    checked as ``JobStateChanged`` checks them; its other fields (id, attempt, worker,
    reason, time) are not read, nor checked (``state_summaries``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["job.state"]
    v: Literal[1]
    type: Name
    old_status: Name | None
    new_status: Name
    wait_seconds: Real | None = None
    duration_seconds: Real | None = None


class _StateSummaries(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["batch"]
    v: Literal[1]
    of: Literal["job.state"]
    items: list[StateSummary] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


_summaries_adapter: TypeAdapter[StateSummary | _StateSummaries] = TypeAdapter(
    Annotated[StateSummary | _StateSummaries, Field(discriminator="kind")]
)


def state_summaries(body: bytes) -> list[StateSummary]:
    """The ``job.state`` events of a body (one, or a batch of them), each as its
    ``StateSummary``: about half of what decoding them whole costs. Raises
    DecodeError for any other body, and for one with an item whose summarised fields
    ``decode`` would refuse (the caller then decodes it whole, which says why)."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"body of {len(body):,} bytes is over the {MAX_MESSAGE_BYTES:,} limit")
    try:
        parsed = _summaries_adapter.validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"not job.state events: {validation_summary(exc)}") from exc
    return list(parsed.items) if isinstance(parsed, _StateSummaries) else [parsed]
