"""What a worker may offer when no flag or variable says: its container's limits.

psutil sees the whole machine from inside a container, so three workers on one host
would each promise every core and all the memory. The kernel's own limits for this
process live in its cgroup: the CPU quota (``cpu.max`` on cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` on v1) and the memory limit
(``memory.max`` on v2, ``memory.limit_in_bytes`` on v1). A limit may be set on the
process's own cgroup or on any cgroup above it (a Kubernetes pod, a systemd slice):
the effective one is the smallest on the way up. Where there is none (no cgroup
files, "max", v1's huge "unlimited" numbers), the machine's figures stand, as before.

Every reader takes ``root`` (``/`` in production) so the tests can build fake cgroup
trees in a temporary directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number; anything from
# 2**60 bytes (an exbibyte) up is no real limit.
_UNLIMITED_BYTES = 2**60
_MOUNT = Path("sys/fs/cgroup")
_V1_MOUNT_NAMES = {"cpu": ("cpu,cpuacct", "cpuacct,cpu", "cpu"), "memory": ("memory",)}


@dataclass(frozen=True)
class ContainerCapacity:
    """CPU units and memory (MB) to offer, and where each figure came from."""

    cpu_units: float
    memory_mb: int
    cpu_source: str
    memory_source: str

    def describe(self) -> str:
        return (
            f"{self.cpu_units:g} cpu units ({self.cpu_source}), "
            f"{self.memory_mb} MB ({self.memory_source})"
        )


def container_capacity(root: Path = Path("/")) -> ContainerCapacity:
    """The cgroup's CPU quota and memory limit, each capped at the machine's and each
    falling back to the machine's (psutil) when the cgroup sets none."""
    machine_cpus = float(psutil.cpu_count(logical=True) or 1)
    machine_mb = psutil.virtual_memory().total // 2**20
    cpu, cpu_source = machine_cpus, "psutil: all cores"
    memory, memory_source = machine_mb, "psutil: all memory"
    groups = own_cgroups(root)
    quota = cgroup_cpu_limit(root, groups)
    if quota is not None and quota[0] < machine_cpus:
        cpu, cpu_source = quota
    limit = cgroup_memory_limit_mb(root, groups)
    if limit is not None and limit[0] < machine_mb:
        memory, memory_source = limit
    return ContainerCapacity(cpu, memory, cpu_source, memory_source)


def own_cgroups(root: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path; cgroup v2's unified line is ``""``.

    Lines are ``id:controllers:path`` (v1: ``4:cpu,cpuacct:/docker/abc``; v2:
    ``0::/kubepods/pod1/abc``). Missing or unreadable: empty (no cgroup known)."""
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return {}
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            groups[""] = path
        for controller in filter(None, controllers.split(",")):
            groups[controller] = path
    return groups


def cgroup_cpu_limit(root: Path, groups: dict[str, str] | None = None) -> tuple[float, str] | None:
    """The smallest CPU quota on the way up from this process's cgroup, in cores
    (150000/100000 -> 1.5), with its source; None when no cgroup limits the CPU."""
    found = _smallest_limit(
        root, own_cgroups(root) if groups is None else groups,
        v2=lambda d: _v2_cpu_max(d / "cpu.max"), v2_source="cgroup v2 cpu.max",
        v1_controller="cpu", v1=_v1_cpu_quota, v1_source="cgroup v1 cpu.cfs_quota_us",
    )  # fmt: skip
    return None if found is None else (_round_cores(found[0]), found[1])


def cgroup_memory_limit_mb(
    root: Path, groups: dict[str, str] | None = None
) -> tuple[int, str] | None:
    """The smallest memory limit on the way up from this process's cgroup, in MB (at
    least 1), with its source; None when no cgroup limits the memory."""
    found = _smallest_limit(
        root, own_cgroups(root) if groups is None else groups,
        v2=lambda d: _bytes(d / "memory.max"), v2_source="cgroup v2 memory.max",
        v1_controller="memory", v1=lambda d: _bytes(d / "memory.limit_in_bytes"),
        v1_source="cgroup v1 memory.limit_in_bytes",
    )  # fmt: skip
    return None if found is None else (max(1, int(found[0]) // 2**20), found[1])


def _smallest_limit(
    root: Path,
    groups: dict[str, str],
    *,
    v2: Callable[[Path], float | None],
    v2_source: str,
    v1_controller: str,
    v1: Callable[[Path], float | None],
    v1_source: str,
) -> tuple[float, str] | None:
    """The smallest limit ``v2`` (the unified hierarchy) or else ``v1`` (the
    controller's own mounts) reads in this process's cgroup and those above it."""
    if "" in groups:
        found = [v for d in _up_from(root / _MOUNT, groups[""]) if (v := v2(d)) is not None]
        if found:
            return min(found), v2_source
    if v1_controller in groups:
        found = [
            v
            for mount in _v1_mounts(root, v1_controller)
            for d in _up_from(mount, groups[v1_controller])
            if (v := v1(d)) is not None
        ]
        if found:
            return min(found), v1_source
    return None


def _up_from(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under ``mount`` and each one above it, up to the mount.

    Inside a container without its own cgroup namespace, ``/proc/self/cgroup`` names
    the host's path (``/docker/abc``) while the container sees its own cgroup mounted
    at the mount point itself: then only the mount point is read."""
    if not mount.is_dir():
        return []
    relative = Path(path.lstrip("/"))
    directory = mount / relative
    if not directory.is_dir():
        return [mount]
    chain = [directory]
    while directory != mount:
        directory = directory.parent
        chain.append(directory)
    return chain


def _v1_mounts(root: Path, controller: str) -> list[Path]:
    """Where a v1 controller is mounted: ``cpu`` is usually co-mounted with
    ``cpuacct`` (``cpu,cpuacct``, with ``cpu`` a symlink to it); the first that exists."""
    base = root / _MOUNT
    for name in _V1_MOUNT_NAMES[controller]:
        if (base / name).is_dir():
            return [base / name]
    return []


def _v2_cpu_max(file: Path) -> float | None:
    """``cpu.max`` is ``"<quota> <period>"`` in microseconds, quota ``max`` for none."""
    try:
        quota, _, period = file.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return _cores(int(quota), int(period or 100_000))
    except (OSError, ValueError):
        return None


def _v1_cpu_quota(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``."""
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text().strip())
        period = int((directory / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return _cores(quota, period)


def _cores(quota: int, period: int) -> float | None:
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _round_cores(cores: float) -> float:
    """To the millicore, as Kubernetes writes CPU, and never 0 (a 1 ms quota is tiny,
    not nothing)."""
    return max(0.001, math.floor(cores * 1000 + 0.5) / 1000)


def _bytes(file: Path) -> int | None:
    """A memory limit file: bytes, or None for "max", v1's unlimited, missing or junk."""
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max"
    value = int(text)
    return value if 0 < value < _UNLIMITED_BYTES else None
