"""What a process pool's busy child holds, as its memory limit counts it: its own
resident memory and kernel high-water mark (``/proc/<pid>/status``), and what the
processes under it hold alone (``process_tree``). Linux only."""

from __future__ import annotations

import logging

from services.worker import process_tree

log = logging.getLogger("switchyard.worker")


def resident(pid: int) -> tuple[int, int]:
    """(resident, peak resident since the last reset: VmHWM) bytes of ``pid``."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def attempt_peak(rss: int, hwm: int, *, peak_reset: bool) -> int:
    """The peak resident bytes to hold against an attempt's limit: the kernel's VmHWM
    catches a spike between two samples, but only once reset at the attempt's start;
    otherwise it is the peak of an earlier attempt, and the sample alone counts."""
    return max(rss, hwm) if peak_reset else rss


def reset_peak(pid: int) -> bool:
    """Reset the child's VmHWM to its current RSS (Linux >= 4.0); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        log.debug("cannot reset the peak memory of child %d (%r): sampled RSS only", pid, exc)
        return False
    return True


def tree_private_bytes(roots: list[int]) -> dict[int, int]:
    """For each of ``roots``, what the processes under it hold (one walk of /proc)."""
    links = process_tree.children_by_parent()
    return {
        root: sum(process_tree.private_bytes(p) for p in process_tree.descendants(root, links))
        for root in roots
    }
