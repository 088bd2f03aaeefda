"""New ids: UUID version 7 (time-ordered, so a new job's key lands at the right edge of
the primary key's index), as the standard library's ``uuid.UUID``.

uuid_utils makes the value in Rust. ``uuid_utils.compat.uuid7`` makes the ``uuid.UUID``
as this does (an object whose two slots are set, without ``__init__``), but looks up
``SafeUUID.unknown`` (an enum member: slow to reach on Python 3.11) and passes its
keyword arguments on every call: 0.9-2.5 against 0.5-1.1 µs an id here, timed in turn
(a batch of 2,000 jobs makes 2,000). ``tests/unit/test_ids.py`` checks that it is the
same UUID in every way the yard uses one.
"""

from __future__ import annotations

from uuid import UUID, SafeUUID

from uuid_utils import uuid7 as _uuid7

_new = object.__new__
_set = object.__setattr__  # UUID forbids assignment: its own __init__ sets its slots so
_UNKNOWN = SafeUUID.unknown


def uuid7() -> UUID:
    """A new UUID version 7."""
    value = _new(UUID)
    _set(value, "int", _uuid7().int)
    _set(value, "is_safe", _UNKNOWN)
    return value
