"""Thread pools sized to the cores that are free: on a shared machine, a stage that starts as
many math threads as there are cores competes with its neighbour's and every thread waits."""

from __future__ import annotations

import os
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is absent."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def free_from(before: tuple[int, int], after: tuple[int, int], cpus: int) -> int:
    """Cores left over by the load seen between two /proc/stat samples (at least one)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    used = cpus * busy / total if total > 0 else 0.0
    return max(1, min(cpus, round(cpus - used)))


def quota_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """A container's CPU limit (cgroup v2 `cpu.max`: quota and period), rounded up; None
    when unlimited or unknown. A pod sees every core of its node but may use only this."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, -(-int(quota) // int(period)))


def free_cores(sample_s: float = 0.3) -> int:
    """Cores this process may use that nothing else is busy on right now."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    cpus = min(cpus, quota_cores() or cpus)
    before = _cpu_times()
    if before is None:
        return cpus
    time.sleep(sample_s)
    return free_from(before, _cpu_times() or before, cpus)


def size_thread_pools() -> int:
    """Set the math libraries' thread count for this process and its children to the free
    cores, unless the deployment set it; returns the count in force. Call before torch is
    imported: OpenMP reads it once."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    threads = free_cores()
    for name in THREAD_VARS:
        os.environ[name] = str(threads)
    return threads
