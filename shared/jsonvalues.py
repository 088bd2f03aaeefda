"""What a JSON value, a text and a time must be to cross one of our boundaries.

One checker for each, used where a client's request comes in (``shared.schemas``,
``shared.jobs.prepare``: bad input is refused, the error naming where) and where a
message is built or received (``shared.messages``, the worker: a task's text is
replaced, visibly, so its report still travels). The limits are defined here once; a
boundary that takes less than another says so in its name and says why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

# ---------------------------------------------------------------- integers
# PostgreSQL integer columns (attempts, sequence numbers, sizes; ids and counts).
INT4_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1

# Integers inside a message's JSON (a result, a payload): what orjson, the encoder of
# every body and of every jsonb parameter, writes; a task may return an unsigned 64-bit
# number and its report must still travel.
WIRE_INT_MIN, WIRE_INT_MAX = -(2**63), 2**64 - 1
# Integers inside a client's payload: signed 64-bit. A stored payload is read back by
# clients in every language and handed to tasks; int64 is what their JSON readers and
# parameter models (Go int64, Java long, PostgreSQL bigint for ``payload->>'x'``) hold,
# so 2^63..2^64-1 is refused at submission with a message instead of breaking a reader
# later. It lies inside the wire's range: what the API takes can always be dispatched.
CLIENT_INT_MIN, CLIENT_INT_MAX = -(2**63), BIGINT_MAX

# ---------------------------------------------------------------- nesting
# Containers nested in a result or payload (the root counts as 1). orjson stops at 255,
# jiter (pydantic's parser) at 200. SWITCHYARD_MAX_JSON_DEPTH (the API's limit) may
# not exceed it, so a payload the API took is one a dispatch can carry.
MAX_JSON_DEPTH = 64

# ---------------------------------------------------------------- text

# What no UTF-8 encoder or PostgreSQL text takes: lone surrogates (as ``os.listdir``
# returns undecodable names) and NUL.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

TextRule = Literal["refuse", "replace"]


def has_bad_text(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def safe_text(value: str) -> str:
    """``value`` with lone surrogates and NUL replaced by U+FFFD, visibly (what a task
    wrote: its report must travel)."""
    if not has_bad_text(value):
        return value  # nearly always: no regex substitution, no copy
    return _BAD_TEXT.sub("\ufffd", value)


def printable(text: str) -> str:
    """``text`` with lone surrogates and NUL written as escapes (``\\ud800``,
    ``\\x00``): for messages that quote a client's input back to it."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def truncate_text(value: str, limit: int, *, keep: Literal["head", "tail"] = "head") -> str:
    """``value`` cut to at most ``limit`` characters, with a marker saying how many were
    cut (``keep="tail"`` keeps the end: the last lines of a traceback say the most)."""
    if len(value) <= limit:
        return value
    room = max(0, limit - 48)  # 48: more than the marker takes
    cut = len(value) - room
    if keep == "tail":
        return f"[cut: {cut:,} more characters] …{value[-room:] if room else ''}"
    return f"{value[:room]}… [cut: {cut:,} more characters]"


def _check_text(text: str, path: str, what: str, rule: TextRule) -> str:
    if not has_bad_text(text):
        return text
    if rule == "replace":
        return safe_text(text)
    if "\x00" in text:
        raise ValueError(f"{path}: {what} may not contain the NUL character")
    raise ValueError(
        f"{path}: {what} may not contain lone surrogates ('{printable(text)[:80]}' is "
        "not valid Unicode); send text as UTF-8"
    )


# ---------------------------------------------------------------- JSON values


@dataclass(frozen=True)
class JsonRules:
    """What one boundary takes as a JSON value.

    ``text``: refuse bad text (a client's input) or replace it (a task's output).
    ``convert``: take what orjson writes natively (datetimes, UUIDs, dataclasses, enums,
    tuples...) as orjson writes it, as a task's result is; else such a value is refused.
    """

    int_min: int
    int_max: int
    max_depth: int
    text: TextRule
    convert: bool = False


CLIENT_JSON = JsonRules(CLIENT_INT_MIN, CLIENT_INT_MAX, MAX_JSON_DEPTH, "refuse")
WIRE_JSON = JsonRules(WIRE_INT_MIN, WIRE_INT_MAX, MAX_JSON_DEPTH, "replace")
TASK_OUTPUT_JSON = JsonRules(WIRE_INT_MIN, WIRE_INT_MAX, MAX_JSON_DEPTH, "replace", convert=True)


def check_json(value: Any, rules: JsonRules, *, where: str) -> Any:
    """``value`` as the JSON ``rules`` take: the same object when nothing needed a change,
    else a plain copy (text replaced, native types converted). What cannot be taken
    (NaN or Infinity, an integer out of range, nesting deeper than ``rules.max_depth``,
    a non-string key, a type JSON lacks, bad text under "refuse") raises ValueError
    naming the path of the first fault, e.g. ``payload.a[2]``."""
    if not _needs_a_closer_look(value, rules):
        return value  # the common case: one walk, no path strings built, no copy
    return _walk(value, rules, where, 1)


def _needs_a_closer_look(value: Any, rules: JsonRules) -> bool:
    """True when ``check_json`` has something to refuse or change (found without paths)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if has_bad_text(item):
                return True
        elif kind is int:
            if not rules.int_min <= item <= rules.int_max:
                return True
        elif kind is float:
            if not math.isfinite(item):
                return True
        elif kind is dict:
            if depth > rules.max_depth:
                return True
            for k, v in item.items():
                if type(k) is not str or has_bad_text(k):
                    return True
                stack.append((v, depth + 1))
        elif kind is list:
            if depth > rules.max_depth:
                return True
            stack.extend((v, depth + 1) for v in item)
        elif item is not None and kind is not bool:
            return True  # a subclass, a tuple or a type JSON lacks: look closer
    return False


def _walk(item: Any, rules: JsonRules, path: str, depth: int) -> Any:
    if item is None or isinstance(item, bool):
        return item
    if isinstance(item, str):
        return _check_text(str.__str__(item), path, "strings", rules.text)
    if isinstance(item, int):
        if not rules.int_min <= item <= rules.int_max:
            raise ValueError(
                f"{path}: integers must lie between {rules.int_min} and {rules.int_max}"
                "; send larger numbers as strings"
            )
        return int(item)
    if isinstance(item, float):
        if not math.isfinite(item):
            raise ValueError(f"{path}: {item} (NaN and Infinity) is not a valid JSON number")
        return float(item)
    if isinstance(item, dict | list | tuple):
        if depth > rules.max_depth:
            raise ValueError(f"{path}: nested deeper than {rules.max_depth} levels")
        if isinstance(item, dict):
            out = {}
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path}: key {k!r} is not a string")
                key = _check_text(str.__str__(k), path, "keys", rules.text)
                out[key] = _walk(v, rules, f"{path}.{k}", depth + 1)
            return out
        return [_walk(v, rules, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
    if rules.convert:
        try:
            native = orjson.loads(orjson.dumps(item))
        except TypeError as exc:
            raise ValueError(f"{path}: {type(item).__name__} is not JSON ({exc})") from None
        return _walk(native, rules, path, depth)
    raise ValueError(f"{path}: {type(item).__name__} is not JSON")


def encoded_within(value: Any, limit: int, *, where: str) -> bytes:
    """``value`` encoded as every hop encodes it (orjson), if that is at most ``limit``
    bytes; else ValueError saying its size and the limit. The one size measure of a
    result or payload: exact, whatever its values are."""
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # check_json first: it names where
        raise ValueError(f"{where}: cannot be encoded as JSON ({exc})") from None
    if len(encoded) > limit:
        raise ValueError(f"{where} is {len(encoded):,} bytes encoded; the limit is {limit:,}")
    return encoded


# ---------------------------------------------------------------- times


@dataclass(frozen=True)
class TimeRange:
    """Times a boundary takes: ``earliest`` <= t < ``latest`` (in UTC)."""

    earliest: datetime
    latest: datetime

    def check(self, value: datetime) -> datetime:
        """``value`` (aware) if it lies in the range; else ValueError saying the range."""
        try:
            inside = self.earliest <= value.astimezone(UTC) < self.latest
        except OverflowError:  # its offset pushes it past datetime's own range
            inside = False
        if not inside:
            raise ValueError(
                f"times must lie between {self.earliest:%Y-%m-%dT%H:%M:%SZ} and "
                f"{self.latest:%Y-%m-%dT%H:%M:%SZ} (UTC)"
            )
        return value


# Every time a client sends (a body field, a query parameter, a cursor, a WebSocket
# parameter) lies well inside what datetime and PostgreSQL compute with, so that
# converting its offset, adding a retry delay or comparing it never overflows; the
# lower bound still lets "the distant past" mean "now" (run_at).
CLIENT_TIMES = TimeRange(datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
# Times in messages are stamped by our own services' clocks: narrower, so that a
# receiver may add any lease or duration to one, or take an epoch timestamp of it
# (1970 on), without overflowing.
MESSAGE_TIMES = TimeRange(datetime(1970, 1, 1, tzinfo=UTC), datetime(9001, 1, 1, tzinfo=UTC))
