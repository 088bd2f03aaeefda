"""A worker offers its container's limits, read from fake cgroup trees (v1, v2, hybrid)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import psutil
import pytest

from services.worker.__main__ import default_capacity, parse_args
from services.worker.capacity import (
    cgroup_cpu_limit,
    cgroup_memory_limit_mb,
    container_capacity,
    own_cgroups,
)
from shared.settings import Settings

MACHINE_MB = psutil.virtual_memory().total // 2**20
MACHINE_CPUS = float(psutil.cpu_count(logical=True) or 1)
V1_UNLIMITED = "9223372036854771712"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def v2_tree(root: Path, *, cpu_max: str | None, memory_max: str | None, path: str = "/") -> Path:
    write(root, "proc/self/cgroup", f"0::{path}")
    group = f"sys/fs/cgroup{path.rstrip('/')}"
    (root / group).mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        write(root, f"{group}/cpu.max", cpu_max)
    if memory_max is not None:
        write(root, f"{group}/memory.max", memory_max)
    return root


def v1_tree(
    root: Path, *, quota: str, period: str = "100000", memory: str, path: str = "/"
) -> Path:
    write(root, "proc/self/cgroup", f"12:memory:{path}\n4:cpu,cpuacct:{path}\n1:name=systemd:/")
    cpu_group = f"sys/fs/cgroup/cpu,cpuacct{path.rstrip('/')}"
    write(root, f"{cpu_group}/cpu.cfs_quota_us", quota)
    write(root, f"{cpu_group}/cpu.cfs_period_us", period)
    write(root, f"sys/fs/cgroup/memory{path.rstrip('/')}/memory.limit_in_bytes", memory)
    return root


def test_v2_fractional_quota_and_memory_limit(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, cpu_max="150000 100000", memory_max=str(512 * 2**20))
    assert cgroup_cpu_limit(root) == (1.5, "cgroup v2 cpu.max")
    assert cgroup_memory_limit_mb(root) == (512, "cgroup v2 memory.max")
    found = container_capacity(root)
    assert found.memory_mb == 512 < MACHINE_MB
    assert found.memory_source == "cgroup v2 memory.max"
    # Capped at the machine: a quota above it offers the machine.
    assert found.cpu_units == min(1.5, MACHINE_CPUS)


def test_v2_unlimited_falls_back_to_the_machine(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, cpu_max="max 100000", memory_max="max")
    assert cgroup_cpu_limit(root) is None
    assert cgroup_memory_limit_mb(root) is None
    found = container_capacity(root)
    assert (found.cpu_units, found.memory_mb) == (MACHINE_CPUS, MACHINE_MB)
    assert found.cpu_source.startswith("psutil") and found.memory_source.startswith("psutil")


def test_v2_limit_on_a_parent_cgroup_counts(tmp_path: Path) -> None:
    """A pod-level limit above the container's own cgroup is the effective one."""
    root = v2_tree(tmp_path, cpu_max="max 100000", memory_max="max", path="/kubepods/pod1/c1")
    write(root, "sys/fs/cgroup/kubepods/pod1/cpu.max", "50000 100000")
    write(root, "sys/fs/cgroup/kubepods/pod1/memory.max", str(256 * 2**20))
    assert cgroup_cpu_limit(root) == (0.5, "cgroup v2 cpu.max")
    assert cgroup_memory_limit_mb(root) == (256, "cgroup v2 memory.max")


def test_v1_quota_and_limit(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, quota="250000", period="100000", memory=str(300 * 2**20))
    assert cgroup_cpu_limit(root) == (2.5, "cgroup v1 cpu.cfs_quota_us")
    assert cgroup_memory_limit_mb(root) == (300, "cgroup v1 memory.limit_in_bytes")


def test_v1_unlimited_values_are_ignored(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, quota="-1", memory=V1_UNLIMITED)
    assert cgroup_cpu_limit(root) is None
    assert cgroup_memory_limit_mb(root) is None


def test_v1_host_path_missing_inside_the_container_reads_the_mount_point(tmp_path: Path) -> None:
    """Without a cgroup namespace the file names the host's path (/docker/abc), and the
    container sees its own cgroup at the mount point."""
    root = v1_tree(tmp_path, quota="50000", memory=str(128 * 2**20))
    write(root, "proc/self/cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc")
    assert cgroup_cpu_limit(root) == (0.5, "cgroup v1 cpu.cfs_quota_us")
    assert cgroup_memory_limit_mb(root) == (128, "cgroup v1 memory.limit_in_bytes")


def test_hybrid_layout_reads_v1_when_the_unified_tree_has_no_limits(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, quota="100000", memory=str(64 * 2**20))
    write(root, "proc/self/cgroup", "12:memory:/\n4:cpu,cpuacct:/\n0::/")
    assert cgroup_cpu_limit(root) == (1.0, "cgroup v1 cpu.cfs_quota_us")
    assert cgroup_memory_limit_mb(root) == (64, "cgroup v1 memory.limit_in_bytes")


@pytest.mark.parametrize("content", ["", "garbage", "a:b"])
def test_missing_or_junk_files_mean_no_limit(tmp_path: Path, content: str) -> None:
    assert own_cgroups(tmp_path) == {}  # no /proc/self/cgroup at all
    write(tmp_path, "proc/self/cgroup", content)
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_memory_limit_mb(tmp_path) is None
    v2_tree(tmp_path, cpu_max="junk", memory_max="-5")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_memory_limit_mb(tmp_path) is None


def test_tiny_limits_are_never_zero(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, cpu_max="100 100000", memory_max="4096")
    assert cgroup_cpu_limit(root) == (0.001, "cgroup v2 cpu.max")
    assert cgroup_memory_limit_mb(root) == (1, "cgroup v2 memory.max")


def test_flags_and_variables_win_over_the_cgroup(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="switchyard.worker")
    args: argparse.Namespace = parse_args(["--cpu-units", "0.25"])
    offered = default_capacity(args, Settings(worker_memory_mb=77))
    assert (offered.cpu_units, offered.memory_mb) == (0.25, 77)
    assert (offered.cpu_source, offered.memory_source) == (
        "--cpu-units",
        "SWITCHYARD_WORKER_MEMORY_MB",
    )
    assert "offering 0.25 cpu units (--cpu-units), 77 MB (SWITCHYARD_WORKER_MEMORY_MB)" in (
        caplog.text
    )
