"""What a peer's no-op task does: count itself, and say when its run is complete.

Neither peer keeps results (no result backend), so the worker process counts the
executions itself: each task carries ``(run, index, total)`` and adds its index to the
run's set; the task that makes the set complete writes the wall-clock time into
``<PEER_DONE_DIR>/<run>.done``. Distinct indices, so a redelivered message cannot make a
run look complete early. Imported by the peer workers and producers; nothing here touches a broker.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
_seen: dict[str, set[int]] = {}


def record(run: str, index: int, total: int) -> None:
    """Count one execution (called from the worker's task threads)."""
    with _lock:
        seen = _seen.setdefault(run, set())
        seen.add(index)
        if len(seen) != total:
            return
        finished = time.time()
        del _seen[run]
    done = Path(os.environ["PEER_DONE_DIR"]) / f"{run}.done"
    partial = done.with_suffix(".partial")
    partial.write_text(f"{finished!r}\n")
    partial.rename(done)  # the bench never reads a half-written file


def read_done(done_dir: Path, run: str) -> float | None:
    """When run ``run`` completed (epoch seconds), or None while it has not."""
    done = done_dir / f"{run}.done"
    return float(done.read_text()) if done.exists() else None


def produce(send: Callable[[str, int, int], object], close: Callable[[], object]) -> None:
    """A peer's producer run (``python -m <peer app> <run> <n>``): ``send`` each of the n
    tasks in a loop, ``close`` to flush; prints when it began, how long sending took and
    the CPU it used, as JSON for bench/peers.py."""
    run, n = sys.argv[1], int(sys.argv[2])
    cpu0 = time.process_time()
    first_send = time.time()
    for i in range(n):
        send(run, i, n)
    sent = time.time()
    close()
    print(json.dumps({"first_send": first_send, "sent_s": sent - first_send,
                      "cpu_s": time.process_time() - cpu0}))  # fmt: skip
