"""Thread pools follow the free cores and a container's CPU limit."""

from __future__ import annotations

from tasks.threads import free_from, quota_cores


def test_free_cores_subtract_what_others_keep_busy():
    # 2 cores over 100 jiffies each (200 in all): 100 busy is one whole core taken.
    assert free_from((0, 0), (100, 200), cpus=2) == 1
    assert free_from((0, 0), (0, 200), cpus=2) == 2
    assert free_from((0, 0), (200, 200), cpus=2) == 1  # never below one
    assert free_from((5, 5), (5, 5), cpus=4) == 4  # no time passed: nothing known to be busy


def test_a_container_limit_caps_the_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert quota_cores(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert quota_cores(cpu_max) is None
    assert quota_cores(tmp_path / "absent") is None
