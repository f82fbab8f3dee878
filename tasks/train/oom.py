"""Out of memory, and the retry that survives it: the attempt that died is noted in the
stage's folder; the next attempt splits each worker's share of a step into twice as many
micro-batches (tasks.config `grad_accumulation`), so the global batch, and with the resume
from the last checkpoint the whole trajectory, stay what they were.

An attempt died of memory when a worker raised the framework's out-of-memory error (CUDA's,
or the CPU allocator's), or when the kernel's OOM killer killed one: its cgroup counts
`oom_kill` (a plain SIGKILL does not count, and is not treated as one)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.config import LifecycleConfig
from tasks.errors import BadInput

log = logging.getLogger(__name__)
OOM_FILE = "oom.json"
# cgroup v2, then v1: "oom_kill N" counts the processes the kernel killed for memory.
CGROUP_EVENTS = (Path("/sys/fs/cgroup/memory.events"),
                 Path("/sys/fs/cgroup/memory/memory.oom_control"))


def oom_kills(files: tuple[Path, ...] = CGROUP_EVENTS) -> int | None:
    """The kernel's OOM kills in this container's memory cgroup so far (None: unknown)."""
    for path in files:
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            continue
    return None


def attempts(stage_dir: Path) -> list[dict[str, Any]]:
    path = stage_dir / OOM_FILE
    return json.loads(path.read_text()) if path.exists() else []


def note_oom(stage_dir: Path, cfg: LifecycleConfig, how: str) -> None:
    """Record an attempt that died out of memory, with the split it had."""
    record = [*attempts(stage_dir), {"at": time.time(), "how": how[:500],
                                     "grad_accumulation": cfg.grad_accumulation,
                                     "micro_batch": cfg.micro_batch}]
    (stage_dir / OOM_FILE).write_text(json.dumps(record, indent=2))
    log.error("train: out of memory with micro-batches of %d sequences (%s); the retry "
              "uses half", cfg.micro_batch, how)


def after_oom(stage_dir: Path, cfg: LifecycleConfig) -> LifecycleConfig:
    """The config of an attempt after those that died out of memory: twice the split of
    the last one (never less than configured). Bad input when it cannot be split further."""
    earlier = attempts(stage_dir)
    if not earlier:
        return cfg
    wanted = max(cfg.grad_accumulation, 2 * earlier[-1]["grad_accumulation"])
    if cfg.batch_size % (cfg.world_size * wanted):
        raise BadInput(f"batch_size: out of memory with micro-batches of "
                       f"{earlier[-1]['micro_batch']} sequence(s), which cannot be halved "
                       f"({cfg.batch_size} over {cfg.world_size} worker(s)); use more "
                       "workers, a smaller block_size or a smaller model")
    log.warning("train: %d earlier attempt(s) ran out of memory; this one splits each "
                "worker's share into %d micro-batches of %d (was %d of %d)", len(earlier),
                wanted, cfg.batch_size // (cfg.world_size * wanted),
                earlier[-1]["grad_accumulation"], earlier[-1]["micro_batch"])
    return replace(cfg, grad_accumulation=wanted)
