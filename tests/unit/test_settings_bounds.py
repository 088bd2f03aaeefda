"""The API's payload limits are settings an operator may raise, but never past what the
dispatch message that carries a payload to a worker takes (shared.messages): else a job
the API accepted could never be dispatched."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.jsonvalues import MAX_JSON_DEPTH
from shared.messages import MAX_PAYLOAD_BYTES
from shared.settings import get_settings


@pytest.mark.parametrize(
    ("variable", "value", "bounds"),
    [
        ("max_payload_bytes", MAX_PAYLOAD_BYTES + 1, f"between 2 and {MAX_PAYLOAD_BYTES:,}"),
        ("max_payload_bytes", 0, f"between 2 and {MAX_PAYLOAD_BYTES:,}"),
        ("max_json_depth", MAX_JSON_DEPTH + 1, f"between 1 and {MAX_JSON_DEPTH}"),
        ("max_json_depth", 0, f"between 1 and {MAX_JSON_DEPTH}"),
    ],
)
def test_a_limit_beyond_what_a_dispatch_carries_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: int, bounds: str
) -> None:
    monkeypatch.setenv(f"SWITCHYARD_{variable.upper()}", str(value))
    with pytest.raises(ConfigError, match=f"SWITCHYARD_{variable.upper()}") as caught:
        get_settings()
    assert bounds in str(caught.value)


def test_the_largest_limits_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_MAX_PAYLOAD_BYTES", str(MAX_PAYLOAD_BYTES))
    monkeypatch.setenv("SWITCHYARD_MAX_JSON_DEPTH", str(MAX_JSON_DEPTH))
    settings = get_settings()
    assert (settings.max_payload_bytes, settings.max_json_depth) == (
        MAX_PAYLOAD_BYTES,
        MAX_JSON_DEPTH,
    )
