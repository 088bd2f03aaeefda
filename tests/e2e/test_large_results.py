"""A result under MAX_RESULT_BYTES completes, whatever it is made of: its size is
measured exactly (the encoded bytes) by the worker and by every receiver of its report
alike, never estimated per value."""

from __future__ import annotations

from shared.messages import MAX_RESULT_BYTES
from tests.e2e.conftest import Stack

TASKS = ("--tasks", "tests.e2e.sample_tasks")


def test_a_600_kb_result_of_integers_completes_end_to_end(stack: Stack) -> None:
    stack.worker("w1", *TASKS)
    count = 300_000  # 600,001 bytes encoded, well under the limit
    assert 2 * count + 1 < MAX_RESULT_BYTES
    job = stack.submit({"type": "sample.many_zeros", "payload": {"count": count}})
    done = stack.wait_status(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", done["error"]
    assert done["result"] == [0] * count
