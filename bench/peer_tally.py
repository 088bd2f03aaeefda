"""What a peer's no-op task does: count itself, and say when its run is complete.

Neither peer keeps results (no result backend), so the worker process counts the
executions itself: each task carries ``(run, index, total)`` and adds its index to the
run's set; the task that makes the set complete writes the wall-clock time into
``<PEER_DONE_DIR>/<run>.done``. Distinct indices, so a redelivered message cannot make a
run look complete early. Imported by the peer workers; nothing here touches a broker.
"""

from __future__ import annotations

import os
import threading
import time
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
