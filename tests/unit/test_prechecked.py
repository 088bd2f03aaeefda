"""``prechecked`` builds what ``model_construct`` builds, and refuses the models and
calls where it could not."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from shared.messages import JobCancel, JobStateChanged, JobSubmitted, encode
from shared.prechecked import prechecked, prechecked_copies

NOW = datetime(2026, 12, 4, 21, 0, tzinfo=UTC)

CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (
        JobStateChanged,
        {"ts": NOW, "job_id": uuid.uuid4(), "type": "demo.echo", "old_status": "running",
         "new_status": "completed", "attempt": 2, "worker_id": "w-1", "reason": "completed",
         "duration_seconds": 0.5, "wait_seconds": None},
    ),
    (  # the defaults left to the model
        JobStateChanged,
        {"ts": NOW, "job_id": uuid.uuid4(), "type": "t", "old_status": None,
         "new_status": "ready", "attempt": 0},
    ),
    (JobSubmitted, {"ts": NOW, "job_id": uuid.uuid4(), "type": "t", "priority": "high"}),
    (JobCancel, {"ts": NOW, "job_id": uuid.uuid4(), "attempt": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "values"), CASES)
def test_it_builds_what_model_construct_builds(
    cls: type[BaseModel], values: dict[str, Any]
) -> None:
    fast = prechecked(cls, **values)
    slow = cls.model_construct(**values)
    assert type(fast) is cls
    assert list(fast.__dict__.items()) == list(slow.__dict__.items())  # order included
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_extra__ is slow.__pydantic_extra__ is None
    assert fast.__pydantic_private__ is slow.__pydantic_private__ is None
    assert fast == slow and hash(fast) == hash(slow)
    assert encode(fast) == encode(slow)  # type: ignore[arg-type]
    assert fast.model_dump() == cls.model_validate(values).model_dump()


def test_a_field_without_a_constant_default_must_be_given() -> None:
    # ts has a default factory: model_construct would call it, prechecked does not guess.
    with pytest.raises(TypeError, match="ts must be given"):
        prechecked(JobCancel, job_id=uuid.uuid4(), attempt=1)
    with pytest.raises(TypeError, match="job_id must be given"):
        prechecked(JobCancel, ts=NOW, attempt=1)


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError, match="no field atempt"):
        prechecked(JobCancel, ts=NOW, job_id=uuid.uuid4(), attempt=1, atempt=1)


class _Aliased(BaseModel):
    name: str = Field(alias="n")


class _Private(BaseModel):
    name: str
    _seen: int = PrivateAttr(default=0)


class _Extra(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class _MutableDefault(BaseModel):
    tags: list[str] = []


@pytest.mark.parametrize(
    ("cls", "values", "why"),
    [
        (_Aliased, {"name": "x"}, "has an alias"),
        (_Private, {"name": "x"}, "post-init, private or extra"),
        (_Extra, {"name": "x"}, "post-init, private or extra"),
        (_MutableDefault, {"tags": ["x"]}, "default is not a constant"),
    ],
)
def test_models_it_cannot_build_as_model_construct_would_are_refused(
    cls: type[BaseModel], values: dict[str, Any], why: str
) -> None:
    with pytest.raises(TypeError, match=why):
        prechecked(cls, **values)


@pytest.mark.parametrize(("cls", "values"), CASES)
def test_copies_are_what_model_copy_builds(cls: type[BaseModel], values: dict[str, Any]) -> None:
    model = prechecked(cls, **values)
    ids = [uuid.uuid4(), uuid.uuid4()]
    copies = prechecked_copies(model, "job_id", ids)
    for copy, job_id in zip(copies, ids, strict=True):
        slow = model.model_copy(update={"job_id": job_id})
        assert type(copy) is cls
        assert list(copy.__dict__.items()) == list(slow.__dict__.items())  # order included
        assert copy.model_fields_set == slow.model_fields_set
        assert copy == slow and encode(copy) == encode(slow)  # type: ignore[arg-type]
    assert model.job_id == values["job_id"]  # the model itself is left as it was
    copies[0].__pydantic_fields_set__.add("x")  # each copy has a set of its own
    assert "x" not in copies[1].model_fields_set | model.model_fields_set


def test_a_copy_of_an_unknown_field_is_refused() -> None:
    model = prechecked(JobCancel, ts=NOW, job_id=uuid.uuid4(), attempt=1)
    with pytest.raises(TypeError, match="no field atempt"):
        prechecked_copies(model, "atempt", [2])
