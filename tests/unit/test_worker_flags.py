"""A worker's capacity flags and SWITCHYARD_WORKER_* variables are bounded: a typo is a
clear error at start, never a capacity the scheduler cannot store."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from services.worker.__main__ import default_worker_id, parse_args
from shared.messages import WORKER_ID_PATTERN
from shared.settings import WORKER_MAX_MEMORY_MB, Settings


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--memory-mb", "3000000000", "at most 16,777,216"),
        ("--memory-mb", "0", "at least 1"),
        ("--memory-mb", "lots", "is not a number"),
        ("--threads", "0", "at least 1"),
        ("--threads", "100000", "at most 1,024"),
        ("--cpu-units", "0", "more than 0"),
        ("--cpu-units", "-1", "more than 0"),
        ("--cpu-units", "nan", "out of range"),
        ("--cpu-units", "inf", "out of range"),
        ("--cpu-units", "1e9", "at most 4,096"),
    ],
)
def test_an_out_of_range_flag_is_refused_by_name(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args([flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and says in err


def test_flags_in_range_are_taken() -> None:
    args = parse_args(
        ["--memory-mb", str(WORKER_MAX_MEMORY_MB), "--threads", "1", "--cpu-units", "0.5"]
    )
    assert (args.memory_mb, args.threads, args.cpu_units) == (WORKER_MAX_MEMORY_MB, 1, 0.5)


@pytest.mark.parametrize(
    "env",
    [
        {"worker_memory_mb": 3_000_000_000},
        {"worker_threads": 0},
        {"worker_cpu_units": float("inf")},
        {"worker_cpu_units": 1e9},
    ],
)
def test_the_same_bounds_hold_for_the_variables(env: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**env)  # type: ignore[arg-type]


@pytest.mark.parametrize("hostname", ["wörker.example.com", "host½", "a" * 300, "日本"])
def test_the_default_worker_id_is_one_a_worker_takes(
    monkeypatch: pytest.MonkeyPatch, hostname: str
) -> None:
    """Seen failing for non-ASCII host names: str.isalnum() kept é and ½, and the
    worker's first heartbeat then failed its schema."""
    real = os.uname()
    fake = os.uname_result((real.sysname, hostname, real.release, real.version, real.machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    assert re.fullmatch(WORKER_ID_PATTERN, default_worker_id())
