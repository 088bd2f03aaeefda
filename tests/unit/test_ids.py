"""``shared.ids.uuid7`` makes the standard library's UUID without its ``__init__``: the
same value as one made through it, in every way the yard uses an id."""

from __future__ import annotations

import copy
import pickle
import uuid

import asyncpg.pgproto.pgproto as pgproto
import orjson
import pytest

from shared.ids import uuid7


def test_a_new_id_is_a_uuid_as_its_init_makes_it() -> None:
    for _ in range(1000):
        new = uuid7()
        made = uuid.UUID(int=new.int)
        assert type(new) is uuid.UUID
        assert new == made and hash(new) == hash(made) and not new != made
        assert str(new) == str(made) and repr(new) == repr(made) and new.hex == made.hex
        assert new.bytes == made.bytes and new.fields == made.fields
        assert new.version == 7 and new.variant == uuid.RFC_4122
        assert new.is_safe is made.is_safe is uuid.SafeUUID.unknown
        assert pickle.loads(pickle.dumps(new)) == new == copy.deepcopy(new)
        assert orjson.dumps(new) == orjson.dumps(made) == f'"{made}"'.encode()
        assert pgproto.UUID(str(new)) == new  # what asyncpg hands back for it
        assert uuid.UUID(str(new)) == new and {new: 1}[made] == 1


def test_new_ids_are_time_ordered() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    with pytest.raises(TypeError):  # immutable, as every UUID
        ids[0].int = 1  # type: ignore[misc]
