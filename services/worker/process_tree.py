"""The processes a task started, wherever they went: found by their parent links in
``/proc``, measured, and ended with their attempt.

Each child of the process pool is a *subreaper* (``PR_SET_CHILD_SUBREAPER``): a process
its task started that loses its parent (a double fork, ``os.setsid()`` and the parent
gone) is adopted by the child, not by init, so it stays among the child's descendants,
whatever process group or session it moved to. Linux only; elsewhere nothing is found
and the process group alone is signalled, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterable

log = logging.getLogger("switchyard.worker")

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants; whether the kernel agreed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, from one pass over ``/proc`` (empty where there
    is none). Zombies are left out: they hold nothing, cannot be signalled, and wait
    only for their parent to collect them."""
    found: dict[int, list[int]] = {}
    try:
        entries = os.scandir("/proc")
    except OSError:
        return found
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2 :].split(b" ", 2)
            if len(fields) < 2 or fields[0] in (b"Z", b"X") or not fields[1].isdigit():
                continue
            found.setdefault(int(fields[1]), []).append(int(entry.name))
    return found


def descendants(root: int, links: dict[int, list[int]]) -> list[int]:
    """The processes under ``root``, at any depth (``root`` itself not included)."""
    out: list[int] = []
    seen = {root}
    todo = list(links.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid in seen:  # a snapshot of /proc is not atomic: never loop
            continue
        seen.add(pid)
        out.append(pid)
        todo.extend(links.get(pid, ()))
    return out


def private_bytes(pid: int) -> int:
    """The memory ``pid`` holds that no other process shares (``Private_Clean`` and
    ``Private_Dirty`` of ``/proc/<pid>/smaps_rollup``): what a forked process allocated
    or wrote, not the pages it still shares with its parent, which are counted there
    already; 0 once it has exited (or where the kernel has no rollup)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def signal_each(pids: Iterable[int], sig: int) -> None:
    """``sig`` to each of ``pids`` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_descendants(root: int, *, patience: float = 1.0) -> bool:
    """SIGKILL every process under ``root`` (this process: it collects the exits), and
    the process group of each that is in another group than ours (what it forked an
    instant before goes with it), walking again while some still live (a process may
    fork while its siblings die; a large one takes a while to free its memory), for
    ``patience`` seconds at most. Whether none is left."""
    deadline = time.monotonic() + patience
    spared = _our_groups()
    while pids := descendants(root, children_by_parent()):
        for pid in pids:
            with contextlib.suppress(OSError):
                if (group := os.getpgid(pid)) not in spared:
                    os.killpg(group, signal.SIGKILL)
        signal_each(pids, signal.SIGKILL)
        reap_adopted()
        if time.monotonic() > deadline:
            log.warning("%d process(es) under %d still alive after SIGKILL", len(pids), root)
            return False
        time.sleep(0.001)
    return True


def has_children() -> bool:
    """Whether this process has a child (its own or adopted), one system call: every
    process under it has one of them as an ancestor."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _our_groups() -> set[int]:
    """This process's group and its parent's (the worker's, through the forkserver): a
    task's process may join one of them, and must not take them down with it."""
    groups = {os.getpgrp()}
    with contextlib.suppress(OSError):
        groups.add(os.getpgid(os.getppid()))
    return groups


def end_own_descendants(*, patience: float = 1.0) -> bool:
    """Kill and collect whatever this process's task left running (nothing to walk
    when it started nothing, the usual case); whether none is left.

    A walk that finds nothing does not prove it: ``/proc`` is not read at one instant,
    and a process that forks and exits in a loop can be between two pids as the walk
    passes both. So it ends when this process has no child at all once the exited ones
    are collected: every process under a subreaper has one of its children as an
    ancestor (or is one)."""
    deadline = time.monotonic() + patience
    while has_children():
        end_descendants(os.getpid(), patience=max(0.0, deadline - time.monotonic()))
        reap_adopted()
        if time.monotonic() > deadline:
            return not has_children()
    return True


def reap_adopted() -> None:
    """Collect the exit of every child of this process that has exited (adopted
    orphans become zombies of a subreaper until it waits for them)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
